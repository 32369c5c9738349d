// The session timeline: every message, ring and notifier event as a numbered entry with its phase (negotiation, memory, vring setup, running, stop), paged for webviews.
import type { Phase, TimelineArgs, TimelineEntry, TimelinePage } from '../common/dap';
import type { SessionMessage } from '../core/session/session';

/**
 * The phase a message belongs to, given the phase so far. Requests move it: negotiation, device and the back-end channel
 * -> negotiation, memory -> memory, vring setup and notification fds -> vring setup; the
 * device starts running on DRIVER_OK, a vring enable or ring activity, and stays running (later set-up
 * messages, memory hot-plug) until a vring is stopped or disabled, the device reset or the owner released.
 * Replies stay in the phase of their request.
 */
export function nextPhase(current: Phase | undefined, m: Pick<SessionMessage, 'name' | 'reply' | 'category' | 'payload' | 'channel'>): Phase {
  const cur = current ?? 'negotiation';
  if (m.reply) return cur;
  const p = m.payload as Record<string, unknown> | undefined;
  switch (m.name) {
    case 'GET_VRING_BASE': case 'RESET_DEVICE': case 'RESET_OWNER': return 'stop';
    case 'GET_MAX_MEM_SLOTS': return cur === 'running' ? cur : 'negotiation'; // a query made while negotiating
    case 'SET_VRING_ENABLE': return p?.num === 0 ? (cur === 'running' ? 'stop' : cur) : 'running';
    case 'SET_STATUS': {
      const s = Number(p?.status ?? 0);
      if (s & 0x04) return 'running';
      return cur === 'running' || s === 0 ? 'stop' : 'negotiation';
    }
  }
  if (cur === 'running') return 'running';
  switch (m.category) {
    case 'negotiation': case 'device': case 'backend-channel': return 'negotiation';
    case 'memory': return 'memory';
    case 'vring-setup': case 'notification': return 'vring setup';
    default: return cur;
  }
}

export class Timeline {
  private entries: TimelineEntry[] = [];
  private nextId = 1;
  private readonly phases = new Map<number, Phase>();

  constructor(private readonly cap = 20000) {}

  phaseOf(session: number): Phase | undefined { return this.phases.get(session); }

  /** Moves the session's phase for this message; returns it and whether it changed. */
  advance(session: number, m: Parameters<typeof nextPhase>[1]): { phase: Phase; changed: boolean } {
    const before = this.phases.get(session);
    const phase = nextPhase(before, m);
    this.phases.set(session, phase);
    return { phase, changed: phase !== before };
  }

  /** Ring or notifier activity: a session still setting up is running now. */
  activity(session: number): { phase: Phase; changed: boolean } {
    const before = this.phases.get(session);
    if (before === 'running' || before === 'stop') return { phase: before, changed: false };
    this.phases.set(session, 'running');
    return { phase: 'running', changed: true };
  }

  add(e: Omit<TimelineEntry, 'id'>): TimelineEntry {
    const entry = { id: this.nextId++, ...e } as TimelineEntry;
    this.entries.push(entry);
    if (this.entries.length > this.cap * 1.25) this.entries.splice(0, this.entries.length - this.cap);
    return entry;
  }

  get size(): number { return this.entries.length; }
  all(): readonly TimelineEntry[] { return this.entries; }

  page(a: TimelineArgs = {}): TimelinePage {
    const limit = Math.max(1, Math.min(a.limit ?? 500, 5000));
    const kinds = a.kinds?.length ? new Set(a.kinds) : undefined;
    const firstId = this.entries[0]?.id ?? this.nextId;
    let i = a.from === undefined ? 0 : Math.max(0, a.from - firstId);
    const out: TimelineEntry[] = [];
    for (; i < this.entries.length && out.length < limit; i++) {
      const e = this.entries[i];
      if (!kinds || kinds.has(e.kind)) out.push(e);
    }
    return { entries: out, total: this.entries.length, next: i < this.entries.length ? this.entries[i].id : null };
  }
}
