// dpdk-testpmd peer: vhost-user back-end (net_vhost) or virtio-user front-end, non-interactive, with parsed statistics.
import { rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { PeerProcess, waitForListeningSocket, type ExitInfo, type Peer } from './process';

export const TESTPMD_BINARY = 'dpdk-testpmd';

export type TestpmdVdev =
  /** net_vhost: vhost-user back-end; listens on iface unless client (then connects, retrying). */
  | { kind: 'vhost'; iface: string; client?: boolean; queues?: number; extra?: string }
  /** net_virtio_user: virtio-user front-end without a VM; connects to path unless server. */
  | { kind: 'virtio-user'; path: string; server?: boolean; packedVq?: boolean; queues?: number; extra?: string };

export interface TestpmdOptions {
  name?: string;
  vdev: TestpmdVdev;
  /** EAL main lcore; forwarding runs on the other of lcores 0-1. Default: 1 for vhost, 0 for virtio-user. */
  mainLcore?: 0 | 1;
  /** Send a first burst of 32 packets on start (the only way an io-forwarding pair gets traffic going). */
  txFirst?: boolean;
  forwardMode?: string;
  /** Seconds between the periodic port statistics; default 1. */
  statsPeriod?: number;
  /** EAL --file-prefix; default unique per instance. */
  filePrefix?: string;
  memMiB?: number;
  mbufs?: number;
  extraEal?: string[];
  extraArgs?: string[];
  binary?: string;
  /** Run testpmd under another program, e.g. ['strace', '-f', '-o', '/dev/null'] (what people debug with today). */
  wrap?: string[];
}

/** One periodic "NIC statistics" block: cumulative counters and rates since the previous block. */
export interface PortSample {
  port: number;
  rxPackets: number; txPackets: number;
  rxPps: number; txPps: number; rxBps: number; txBps: number;
}

/** The final "Forward statistics for port N" block printed on stop. */
export interface ForwardStats { port: number; rxPackets: number; rxDropped: number; txPackets: number; txDropped: number }

export interface TestpmdStats {
  samples: PortSample[];
  /** Last periodic sample of port 0 (zeros before the first). */
  current: PortSample;
  /** Final forward statistics per port (only after stop()). */
  final: ForwardStats[];
}

export interface TestpmdResult extends TestpmdStats { exit: ExitInfo }

const num = (re: RegExp, s: string): number => { const m = re.exec(s); return m ? Number(m[1]) : 0; };

/** Parse testpmd's periodic and final statistics out of its output. */
export function parseTestpmdStats(log: string): TestpmdStats {
  const text = log.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
  const samples: PortSample[] = [];
  const blockRe = /NIC statistics for port (\d+)\s+#+\n([\s\S]*?)\n\s*#{20,}/g;
  for (let m = blockRe.exec(text); m; m = blockRe.exec(text)) {
    const b = m[2];
    samples.push({
      port: Number(m[1]),
      rxPackets: num(/RX-packets:\s*(\d+)/, b), txPackets: num(/TX-packets:\s*(\d+)/, b),
      rxPps: num(/Rx-pps:\s*(\d+)/, b), txPps: num(/Tx-pps:\s*(\d+)/, b),
      rxBps: num(/Rx-bps:\s*(\d+)/, b), txBps: num(/Tx-bps:\s*(\d+)/, b),
    });
  }
  const final: ForwardStats[] = [];
  const fwdRe = /Forward statistics for port (\d+)\s*-+\s*\n\s*RX-packets:\s*(\d+)\s+RX-dropped:\s*(\d+)\s+RX-total:\s*\d+\s*\n\s*TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)/g;
  for (let m = fwdRe.exec(text); m; m = fwdRe.exec(text)) {
    final.push({ port: Number(m[1]), rxPackets: Number(m[2]), rxDropped: Number(m[3]), txPackets: Number(m[4]), txDropped: Number(m[5]) });
  }
  const port0 = samples.filter((s) => s.port === 0);
  const current = port0[port0.length - 1] ?? { port: 0, rxPackets: 0, txPackets: 0, rxPps: 0, txPps: 0, rxBps: 0, txBps: 0 };
  return { samples, current, final };
}

/** DPDK's runtime directory for a file prefix (root: /var/run/dpdk/<prefix>). */
export function dpdkRuntimeDir(prefix: string): string {
  const base = process.getuid?.() === 0 ? '/var/run' : (process.env.XDG_RUNTIME_DIR || '/tmp');
  return join(base, 'dpdk', prefix);
}

let prefixCounter = 0;

export function testpmdArgs(o: TestpmdOptions, filePrefix: string): string[] {
  const v = o.vdev;
  const path = v.kind === 'vhost' ? v.iface : v.path;
  if (path.includes(',')) throw new Error(`socket path must not contain a comma: ${path}`);
  let vdev: string;
  if (v.kind === 'vhost') {
    vdev = `net_vhost0,iface=${v.iface},queues=${v.queues ?? 1}` + (v.client ? ',client=1' : '');
  } else {
    vdev = `net_virtio_user0,path=${v.path},queues=${v.queues ?? 1}` + (v.packedVq ? ',packed_vq=1' : '') + (v.server ? ',server=1' : '');
  }
  if (v.extra) vdev += `,${v.extra}`;
  const main = o.mainLcore ?? (v.kind === 'vhost' ? 1 : 0);
  return [
    TESTPMD_BINARY,
    '-l', '0-1', '--main-lcore', String(main),
    '--no-huge', '-m', String(o.memMiB ?? 512), '--no-pci', '--file-prefix', filePrefix,
    '--vdev', vdev,
    ...(o.extraEal ?? []),
    '--',
    '--nb-cores=1', `--total-num-mbufs=${o.mbufs ?? 8192}`, `--forward-mode=${o.forwardMode ?? 'io'}`,
    ...(o.txFirst ? ['--tx-first'] : []),
    `--stats-period=${o.statsPeriod ?? 1}`,
    ...(o.extraArgs ?? []),
  ];
}

/** A dpdk-testpmd process (under `stdbuf -o0` so its output arrives as printed). */
export class Testpmd implements Peer {
  readonly name: string;
  readonly options: TestpmdOptions;
  readonly filePrefix: string;
  readonly proc: PeerProcess;
  private result?: TestpmdResult;

  constructor(opts: TestpmdOptions) {
    this.options = opts;
    this.name = opts.name ?? `testpmd-${opts.vdev.kind}`;
    this.filePrefix = opts.filePrefix ?? `vl-${process.pid}-${++prefixCounter}-${randomBytes(3).toString('hex')}`;
    const args = testpmdArgs(opts, this.filePrefix);
    if (opts.binary) args[0] = opts.binary;
    this.proc = new PeerProcess({ name: this.name, command: 'stdbuf', args: ['-o0', '-e0', ...(opts.wrap ?? []), ...args] });
  }

  get pid(): number | undefined { return this.proc.pid; }
  get running(): boolean { return this.proc.running; }
  get log(): string { return this.proc.log; }
  /** The vhost-user socket this instance uses. */
  get socket(): string { return this.options.vdev.kind === 'vhost' ? this.options.vdev.iface : this.options.vdev.path; }
  /** True when this instance listens on its socket (vhost server, or virtio-user server=1). */
  get listens(): boolean {
    const v = this.options.vdev;
    return v.kind === 'vhost' ? !v.client : !!v.server;
  }

  /** Spawn testpmd; when it is the listener, also wait until the socket accepts connections. */
  async start(timeoutMs = 30_000): Promise<void> {
    await this.proc.start();
    if (this.listens) await waitForListeningSocket(this.socket, timeoutMs, this.proc);
  }

  /** Wait for text in testpmd's output, e.g. /virtio is now ready/ or /Port 0: link state change event/. */
  waitForText(re: RegExp, timeoutMs = 30_000, from = 0): Promise<RegExpExecArray> {
    return this.proc.waitForText(re, { timeoutMs, from });
  }

  /** Statistics parsed from the output so far. */
  stats(): TestpmdStats { return this.result ?? parseTestpmdStats(this.proc.log); }

  /** Wait until a periodic sample shows at least `packets` received on port 0. */
  async waitForRx(packets = 1, timeoutMs = 30_000): Promise<PortSample> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = this.stats().current;
      if (s.rxPackets >= packets) return s;
      const left = deadline - Date.now();
      try {
        if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms`);
        await this.proc.waitForText(/Tx-pps[^\n]*\n\s*#+\n/, { timeoutMs: left, from: this.proc.length() });
      } catch (e) {
        throw new Error(`${this.name}: RX-packets stayed below ${packets} (last ${s.rxPackets}): ${(e as Error).message}`);
      }
    }
  }

  /** Wait until `count` more periodic samples have been printed (a way to let traffic run for N stats periods). */
  async waitForSamples(count: number, timeoutMs = 30_000): Promise<PortSample[]> {
    const target = this.stats().samples.length + count;
    const deadline = Date.now() + timeoutMs;
    while (this.stats().samples.length < target) {
      const left = deadline - Date.now();
      try {
        if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms`);
        await this.proc.waitForText(/Tx-pps[^\n]*\n\s*#+\n/, { timeoutMs: left, from: this.proc.length() });
      } catch (e) {
        throw new Error(`${this.name}: fewer than ${count} statistics samples: ${(e as Error).message}`);
      }
    }
    return this.stats().samples.slice(target - count);
  }

  /** SIGINT (testpmd prints its final forward statistics and exits); SIGKILL after graceMs. Removes the runtime dir. */
  async stop(graceMs = 15_000): Promise<TestpmdResult> {
    if (this.result) return this.result;
    const exit = await this.proc.stop('SIGINT', graceMs);
    this.result = { ...parseTestpmdStats(this.proc.log), exit };
    this.cleanupFiles();
    return this.result;
  }

  async kill(): Promise<ExitInfo> {
    const e = await this.proc.kill();
    this.cleanupFiles();
    return e;
  }

  exited(): Promise<ExitInfo> { return this.proc.exited(); }

  /** Remove DPDK's runtime directory for this file prefix. */
  cleanupFiles(): void {
    if (this.proc.running) return;
    try { rmSync(dpdkRuntimeDir(this.filePrefix), { recursive: true, force: true }); } catch { /* best effort */ }
  }
}
