// Built-in back-end benchmarks, side by side in one run with interleaved repetitions:
// blk: one TCG guest, two disks (built-in back-end vs qemu-storage-daemon), the same O_DIRECT dd workload on each;
// net: DPDK virtio-user packets/s against the built-in loopback back-end vs against testpmd io forwarding (net_vhost).
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRawImage, PeerSet, requireBinary, requireTestpmd, type QemuGuest } from '../core/peers';

import { fmt, median, range, startCli, stopCli } from './common';

/** The product as users run it: the CLI back-end with JSON output (decoded, written to /dev/null). */
function startBackend(args: string[], socket: string): Promise<ChildProcess> {
  return startCli(['backend', ...args, '--socket', socket], socket);
}

/** Run a dd in the guest and time it there (the kernel's ns clock from /proc/timer_list around it), in MB/s. */
async function ddMBps(g: QemuGuest, cmd: string, mib: number): Promise<number> {
  const now = "$(grep -m1 -o 'now at [0-9]*' /proc/timer_list | cut -d' ' -f3)";
  const out = await g.check(`s=${now}; ${cmd} 2>/dev/null; e=${now}; echo $(( (e - s) / 1000 ))`, { timeoutMs: 300_000 });
  const us = Number(out.trim().split('\n').pop());
  if (!(us > 0)) throw new Error(`no timing from the guest: ${out}`);
  return (mib * 1048576) / us; // bytes per µs = MB/s
}

export interface BlkBench { reps: number; mib: number; rows: Record<string, number | string>[] }

export async function benchBlk(reps = 5, mib = 64): Promise<BlkBench> {
  requireBinary('qemu-system-x86_64');
  requireBinary('qemu-storage-daemon');
  const peers = new PeerSet();
  let be: ChildProcess | undefined;
  try {
    const dir = peers.tmpDir('bench-blk');
    const imgA = createRawImage(path.join(dir, 'builtin.img'), mib * 2);
    const imgB = createRawImage(path.join(dir, 'qsd.img'), mib * 2);
    const sockA = path.join(dir, 'builtin.sock');
    // VL_BENCH_BACKEND_ARGS adds flags to the built-in back-end (e.g. "--vm-copy auto" to compare copy paths).
    be = await startBackend(['blk', '--image', imgA, ...(process.env.VL_BENCH_BACKEND_ARGS ?? '').split(' ').filter(Boolean)], sockA);
    const qsd = peers.qsd({ image: imgB, socket: path.join(dir, 'qsd.sock') });
    await qsd.start();
    // One guest, two disks: vda = built-in back-end, vdb = qemu-storage-daemon (same guest, same kernel, same workload).
    const g = peers.qemu({ name: 'bench-blk-guest', blk: [{ socket: sockA }, { socket: qsd.socket }] });
    await g.start();
    await g.waitReady(120_000);
    await g.check('i=0; while ! [ -b /dev/vdb ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ -b /dev/vda ] && [ -b /dev/vdb ]', { timeoutMs: 60_000 });
    const disks = { builtin: '/dev/vda', qsd: '/dev/vdb' } as const;
    const w = (d: string) => `dd if=/dev/zero of=${d} bs=1M count=${mib} oflag=direct`;
    const r = (d: string) => `dd if=${d} of=/dev/null bs=1M count=${mib} iflag=direct`;
    for (const d of Object.values(disks)) { await ddMBps(g, w(d), mib); await ddMBps(g, r(d), mib); } // warm-up
    const res: Record<string, number[]> = { builtinWrite: [], qsdWrite: [], builtinRead: [], qsdRead: [] };
    for (let i = 0; i < reps; i++) {
      // Alternate which disk goes first, so slow phases of the noisy machine hit both alike.
      const order = i % 2 ? (['qsd', 'builtin'] as const) : (['builtin', 'qsd'] as const);
      for (const k of order) res[`${k}Write`].push(await ddMBps(g, w(disks[k]), mib));
      for (const k of order) res[`${k}Read`].push(await ddMBps(g, r(disks[k]), mib));
    }
    await g.poweroff();
    const rows = (['Write', 'Read'] as const).map((op) => {
      const a = res[`builtin${op}`], b = res[`qsd${op}`];
      const ratios = a.map((x, i) => x / b[i]);
      return { workload: `${op.toLowerCase()} ${mib} MiB, bs=1M, O_DIRECT`, builtinMBps: fmt(median(a)), builtinRange: range(a), qsdMBps: fmt(median(b)), qsdRange: range(b), ratio: fmt(median(ratios)), ratioRange: range(ratios) };
    });
    return { reps, mib, rows };
  } finally {
    if (be) await stopCli(be);
    await peers.cleanup();
  }
}

/** virtio-user (tx_first, io forwarding) against `socket`: median rx pps over `seconds` periodic samples. */
async function virtioUserPps(peers: PeerSet, socket: string, seconds: number): Promise<number> {
  const vu = peers.testpmd({ name: 'bench-virtio-user', mainLcore: 0, txFirst: true, vdev: { kind: 'virtio-user', path: socket } });
  await vu.start();
  await vu.waitForRx(1, 60_000);
  const samples = await vu.waitForSamples(seconds + 1, (seconds + 60) * 1000);
  await vu.stop();
  return median(samples.slice(1).map((s) => s.rxPps));
}

export interface NetBench { reps: number; seconds: number; rows: Record<string, number | string>[] }

export async function benchNet(reps = 5, seconds = 5): Promise<NetBench> {
  requireTestpmd();
  const peers = new PeerSet();
  try {
    const dir = peers.tmpDir('bench-net');
    const builtin: number[] = [], testpmd: number[] = [];
    for (let i = 0; i < reps; i++) {
      const sa = path.join(dir, `builtin-${i}.sock`);
      const be = await startBackend(['net', '--loopback'], sa);
      try { builtin.push(await virtioUserPps(peers, sa, seconds)); } finally { await stopCli(be); }
      const sb = path.join(dir, `vhost-${i}.sock`);
      const vh = peers.testpmd({ name: 'bench-vhost', mainLcore: 1, vdev: { kind: 'vhost', iface: sb } });
      await vh.start();
      try { testpmd.push(await virtioUserPps(peers, sb, seconds)); } finally { await vh.stop(); }
    }
    const ratios = builtin.map((x, i) => x / testpmd[i]);
    return {
      reps, seconds,
      rows: [{ workload: 'virtio-user io fwd, 32 x 64 B in flight', builtinPps: fmt(median(builtin)), builtinRange: range(builtin), testpmdPps: fmt(median(testpmd)), testpmdRange: range(testpmd), ratio: fmt(median(ratios)), ratioRange: range(ratios) }],
    };
  } finally {
    await peers.cleanup();
  }
}

function table(rows: Record<string, number | string>[]): string {
  const cols = Object.keys(rows[0]);
  const w = cols.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c]).length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(w[i])).join(' | ')} |`;
  return [line(cols), `|${w.map((n) => '-'.repeat(n + 2)).join('|')}|`, ...rows.map((r) => line(cols.map((c) => String(r[c]))))].join('\n');
}

if (require.main === module) {
  (async () => {
    const which = process.argv[2] ?? 'all';
    const reps = Number(process.argv[3] ?? 5);
    const load = fs.readFileSync('/proc/loadavg', 'utf8').trim();
    const results: Record<string, unknown> = { date: new Date().toISOString(), load };
    if (which === 'all' || which === 'blk') {
      const b = await benchBlk(reps, Number(process.env.VL_BENCH_MIB ?? 64));
      results.blk = b;
      console.log(`\nblk: one TCG guest, vda = vhost-lens backend blk, vdb = qemu-storage-daemon; ${b.reps} interleaved reps, medians (MB/s, guest-timed)\n${table(b.rows)}`);
    }
    if (which === 'all' || which === 'net') {
      const n = await benchNet(Math.max(3, reps), Number(process.env.VL_BENCH_SECONDS ?? 5));
      results.net = n;
      console.log(`\nnet: DPDK virtio-user packets/s, vhost-lens backend net --loopback vs testpmd net_vhost io forwarding; ${n.reps} interleaved reps\n${table(n.rows)}`);
    }
    console.log(`\nload average at start: ${load}`);
    const out = process.env.VL_BENCH_OUT;
    if (out) fs.writeFileSync(out, JSON.stringify(results, null, 2));
  })().catch((e) => { console.error(e); process.exit(1); });
}
