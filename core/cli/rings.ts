// CLI ring output: `--rings [--poll-hz N]` prints ring activity (`kind:"ring"`); SIGUSR1 prints a snapshot of every vring.
import { engineHooks, num, UsageError, type Printer } from './main';
import { RingObserver, chainView, type RingEvent, type ChainView } from '../session/rings';
import { toJson, type Json } from '../session/json';
import type { RingSnapshot } from '../virtio/snapshot';

export function chainText(c: ChainView): string {
  const dev = (c.device as { summary?: string } | undefined)?.summary;
  const bufs = c.descriptors.length ? ` ${c.descriptors.length} desc, ${c.readable} out/${c.writable} in` : '';
  return `#${c.head} ${c.state}${dev ? ` ${dev}` : ''}${bufs ? ` (${bufs.trim()})` : ''}${c.usedLen !== undefined ? ` used ${c.usedLen}` : ''}${c.error ? ` !! ${c.error}` : ''}`;
}

export function ringLine(e: RingEvent): string {
  const idx = `${e.availIdx !== undefined ? ` avail ${e.availIdx}` : ''}${e.usedIdx !== undefined ? ` used ${e.usedIdx}` : ''}`;
  const parts = [...e.chains.map(chainText), ...e.errors.map((x) => `!! ${x}`), ...(e.resync && e.resync !== 'start' ? [`resync: ${e.resync}`] : []),
    ...(e.skipped ? [`(+${e.skipped.avail} offered, +${e.skipped.used} used not shown: sampling)`] : [])];
  if (!parts.length) return '';
  return `    ~ vring ${e.vring}${e.source === 'poll' ? '' : ` at ${e.source}`}${idx}: ${parts.join('; ')}`;
}

export function ringJson(e: RingEvent): Record<string, Json> {
  return toJson(e) as Record<string, Json>;
}

export function snapshotJson(session: number, vring: number, s: RingSnapshot): Record<string, Json> {
  const chains = s.chains.map((c) => chainView(c));
  const { chains: _c, ...rest } = s as unknown as Record<string, unknown>;
  return { kind: 'snapshot', session, vring, ...(toJson(rest) as Record<string, Json>), chains: toJson(chains) };
}

function snapshotLines(vring: number, s: RingSnapshot): string[] {
  const where = s.kind === 'split' ? `avail.idx=${s.avail.idx} used.idx=${s.used.idx} in flight ${s.inflightCount}` : `${s.chains.length} chain(s) visible`;
  return [`    = vring ${vring} snapshot (${s.kind}, ${where})`, ...s.chains.map((c) => `      ${chainText(chainView(c))}`), ...s.errors.map((e) => `      !! ${e.message}`)];
}

engineHooks.push((engine, p, printer: Printer) => {
  const rings = p.flags.has('rings');
  const pollHz = num(p, 'poll-hz') ?? 100;
  if (p.flags.has('poll-hz') && !rings) throw new UsageError('--poll-hz needs --rings');
  if (rings && (pollHz <= 0 || pollHz > 10000)) throw new UsageError('--poll-hz must be between 1 and 10000');
  const sample = num(p, 'ring-sample') ?? 16;
  const cpu = num(p, 'ring-cpu') ?? 2;
  if (p.flags.has('ring-cpu') && !(cpu > 0 && cpu <= 100)) throw new UsageError('--ring-cpu must be a percentage of one core, above 0 and at most 100');
  const obs = new RingObserver(engine, { pollHz: rings ? pollHz : 0, sample, cpuBudget: cpu / 100 });
  obs.on('fault', (err) => printer.event({ kind: 'error', where: 'ring observer', message: err.message }, engine.tracker));
  if (rings) {
    obs.on('ring', (e) => {
      if (printer.json) { printer.obj(ringJson(e)); return; }
      const l = ringLine(e);
      if (l) printer.line(l);
    });
  }
  // On-demand snapshot of every vring of the current session: kill -USR1 <pid>.
  process.on('SIGUSR1', () => {
    const s = engine.tracker.current;
    if (!s) return;
    for (const v of s.state.vrings.values()) {
      try {
        const snap = obs.snapshot(s.state.id, v.index);
        if (printer.json) printer.obj(snapshotJson(s.state.id, v.index, snap));
        else for (const l of snapshotLines(v.index, snap)) printer.line(l);
      } catch (err) {
        if (printer.json) printer.obj({ kind: 'snapshot', session: s.state.id, vring: v.index, error: (err as Error).message });
        else printer.line(`    = vring ${v.index}: ${(err as Error).message}`);
      }
    }
  });
  engine.finished().then(() => obs.stop(), () => obs.stop());
});
