// The breakpoint gate of a worker program: which messages to hold, the one message held, and its release.
import type { Channel } from '../protocol/table';
import type { Native } from '../sys/native';
import { gateKey, type WorkerEvent } from './workerProtocol';

export class Gate<H extends object> {
  private all = false;
  private keys = new Set<string>();
  private nextId = 1;
  /** The message held at the gate (nothing else is processed while it is). */
  held?: H & { id: number };

  set(all: boolean, keys: readonly string[]): void {
    this.all = all;
    this.keys = new Set(keys);
  }

  matches(channel: Channel, code: number): boolean {
    return this.all || (this.keys.size > 0 && this.keys.has(gateKey(channel, code)));
  }

  /** Hold a message; returns its hold id. */
  hold(h: H): number {
    const id = this.nextId++;
    this.held = { ...h, id };
    return id;
  }

  /** The held message if `id` names it (it is no longer held), else undefined. */
  take(id: number): H | undefined {
    if (!this.held || this.held.id !== id) return undefined;
    const h = this.held;
    this.held = undefined;
    return h;
  }

  /** Whatever is held (at session end: its fds must be closed by the caller). */
  drop(): H | undefined {
    const h = this.held;
    this.held = undefined;
    return h;
  }
}

/** The answer to a `stats` command: the worker's fd ledger. */
export function ledgerStats(native: Native, requestId: number): WorkerEvent {
  return { kind: 'stats', requestId, ledger: native.ledger.count, ledgerByKind: native.ledger.byKind(), violations: native.ledger.violations };
}
