// Real-peer harness entry point: re-exports the peers, checks their binaries, and cleans up after tests (PeerSet).
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onPath, tail, type Peer } from './process';
import { QemuGuest, type QemuGuestOptions } from './qemu';
import { StorageDaemon, type StorageDaemonOptions } from './qsd';
import { Testpmd, type TestpmdOptions } from './testpmd';
import { requireVirtiofsd, Virtiofsd, type VirtiofsdOptions } from './virtiofsd';

export * from './process';
export * from './daemon';
export * from './guest';
export * from './qemu';
export * from './qsd';
export * from './testpmd';
export * from './virtiofsd';

/** Debian package that provides each external program the harness runs. */
export const BINARY_PACKAGES: Record<string, string> = {
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-storage-daemon': 'qemu-system-common, pulled in by qemu-system-x86',
  'qemu-img': 'qemu-utils',
  'dpdk-testpmd': 'dpdk-dev',
  busybox: 'busybox-static',
  modinfo: 'kmod',
  stdbuf: 'coreutils',
  strace: 'strace',
  ip: 'iproute2',
};

/** Throw a clear error unless `name` is on PATH. */
export function requireBinary(name: string): void {
  if (onPath(name)) return;
  throw new Error(`${name} not found: run scripts/setup.sh (Debian package ${BINARY_PACKAGES[name] ?? 'unknown'})`);
}

/** DPDK drivers testpmd loads as plugins, with their Debian packages. */
export const DPDK_PMDS: Record<string, string> = {
  net_vhost: 'librte-net-vhost23',
  net_virtio: 'librte-net-virtio23',
  mempool_ring: 'librte-mempool-ring23',
};

/** Throw a clear error unless the DPDK plugin librte_<pmd>.so is installed. */
export function requireDpdkPmd(pmd: string): void {
  const lib = '/usr/lib/x86_64-linux-gnu/dpdk';
  let found = false;
  try {
    for (const d of readdirSync(lib)) {
      if (d.startsWith('pmds-') && readdirSync(join(lib, d)).some((f) => f.startsWith(`librte_${pmd}.so`))) found = true;
    }
  } catch { /* no DPDK plugin directory */ }
  if (!found) throw new Error(`DPDK driver librte_${pmd}.so not found: run scripts/setup.sh (Debian package ${DPDK_PMDS[pmd] ?? 'unknown'})`);
}

/** Everything testpmd needs: the binary, stdbuf and the vhost, virtio and mempool plugins. */
export function requireTestpmd(): void {
  requireBinary('dpdk-testpmd');
  requireBinary('stdbuf');
  for (const pmd of Object.keys(DPDK_PMDS)) requireDpdkPmd(pmd);
}

/** A fresh directory under os.tmpdir() (short, so socket paths stay below 108 bytes). */
export function makeTempDir(label = 'peers'): string {
  return mkdtempSync(join(tmpdir(), `vl-${label}-`));
}

/**
 * The peers and temp dirs one test owns. `cleanup()` SIGKILLs every process group still running,
 * removes leftover runtime files and the temp dirs; call it from `t.after()` so it runs on failure too.
 */
export class PeerSet {
  private readonly peers: Peer[] = [];
  private readonly dirs: string[] = [];

  add<T extends Peer>(peer: T): T { this.peers.push(peer); return peer; }

  tmpDir(label = 'peers'): string {
    const d = makeTempDir(label);
    this.dirs.push(d);
    return d;
  }

  qemu(opts: QemuGuestOptions = {}): QemuGuest {
    requireBinary('qemu-system-x86_64');
    return this.add(new QemuGuest(opts));
  }

  qsd(opts: StorageDaemonOptions): StorageDaemon {
    requireBinary('qemu-storage-daemon');
    return this.add(new StorageDaemon(opts));
  }

  testpmd(opts: TestpmdOptions): Testpmd {
    requireTestpmd();
    return this.add(new Testpmd(opts));
  }

  virtiofsd(opts: VirtiofsdOptions): Virtiofsd {
    requireVirtiofsd();
    return this.add(new Virtiofsd(opts));
  }

  get all(): readonly Peer[] { return this.peers; }

  /** Each peer's recent output, for failure messages. */
  logs(chars = 3000): string {
    return this.peers.map((p) => `--- ${p.name}:\n${tail(p.log, chars)}`).join('\n');
  }

  /** Kill everything, remove files and dirs. Never throws. */
  async cleanup(): Promise<void> {
    const peers = this.peers.splice(0).reverse();
    await Promise.all(peers.map((p) => p.kill().catch(() => undefined)));
    for (const p of peers) { try { p.cleanupFiles?.(); } catch { /* best effort */ } }
    for (const d of this.dirs.splice(0)) { try { rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ } }
  }
}
