// Test helpers for real-peer tests: a PeerSet cleaned up after each test, peer logs on failure, measurements as diagnostics.
import { randomBytes } from 'node:crypto';
import type { TestContext } from 'node:test';
import { PeerSet, type QemuGuest } from '../../core/peers';

/** A PeerSet whose processes and temp dirs are removed when the test ends, pass or fail. */
export function usePeers(t: TestContext): PeerSet {
  const peers = new PeerSet();
  t.after(() => peers.cleanup());
  return peers;
}

/** Run `fn`; if it throws, append every peer's recent output to the error so the failure explains itself. */
export async function withPeerLogs<T>(peers: PeerSet, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    err.message += `\n\npeer output:\n${peers.logs()}`;
    throw err;
  }
}

/** Record a measurement in the test report (shown by the spec reporter). */
export function note(t: TestContext, label: string, value: unknown): void {
  t.diagnostic(`${label}: ${typeof value === 'string' ? value : JSON.stringify(value)}`);
}

/** A stopwatch: `lap()` returns ms since creation (for reporting, never for assertions). */
export function stopwatch(): { lap(): number } {
  const t0 = Date.now();
  return { lap: () => Date.now() - t0 };
}

/** `n` random characters from [A-Za-z0-9] (safe to pass through a shell single-quoted string). */
export function randomAlnum(n: number): string {
  const abc = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = randomBytes(n);
  let s = '';
  for (let i = 0; i < n; i++) s += abc[bytes[i] % abc.length];
  return s;
}

export function median(xs: number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median, min and max of a series, rounded, for reports. */
export function spread(xs: number[]): { median: number; min: number; max: number; n: number } {
  if (xs.length === 0) return { median: 0, min: 0, max: 0, n: 0 };
  return { median: Math.round(median(xs)), min: Math.min(...xs), max: Math.max(...xs), n: xs.length };
}

/**
 * A QEMU guest whose virtio-net device uses `socket`, sending frames to testpmd (which echoes them): eth0 up at
 * 10.0.0.2, ARP requests for 10.0.0.1 (nobody answers), then `icmp` ICMP echo requests to 10.0.0.3 through a static
 * ARP entry. Returns the running guest.
 */
export async function pingingNetGuest(peers: PeerSet, o: { name: string; socket: string; iommu?: boolean; icmp?: number }): Promise<QemuGuest> {
  const guest = peers.qemu({ name: o.name, net: [{ socket: o.socket }], iommu: o.iommu });
  await guest.start();
  await guest.waitReady();
  await guest.check('i=0; while ! [ -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; ip link set eth0 up && ip addr add 10.0.0.2/24 dev eth0', { timeoutMs: 60_000 });
  await guest.check('i=0; while [ "$(cat /sys/class/net/eth0/carrier)" != 1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done', { timeoutMs: 60_000 });
  // No ARP entry for 10.0.0.1: the guest asks (ARP), nobody answers (testpmd echoes the request back).
  await guest.run('ping -c 2 -W 1 10.0.0.1', { timeoutMs: 30_000 });
  // A static entry: the guest sends ICMP echo requests, testpmd echoes them back unchanged.
  await guest.check('arp -s 10.0.0.3 52:54:00:00:00:03');
  await guest.run(`ping -c ${o.icmp ?? 3} -i 0.3 -W 1 10.0.0.3`, { timeoutMs: 30_000 });
  return guest;
}
