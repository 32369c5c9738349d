// QEMU front-end peer: a TCG guest with shared memfd RAM, vhost-user-blk/net/fs devices and a scriptable serial console.
import { ensureGuestImage, GUEST_BEGIN, GUEST_END, GUEST_MODFAIL, GUEST_READY, type GuestImage } from './guest';
import { PeerProcess, describeExit, tail, waitForListeningSocket, withTimeout, type ExitInfo, type Peer } from './process';

/** How a vhost-user chardev reaches its socket. */
export interface VhostUserSocket {
  /** UNIX socket path. */
  socket: string;
  /** QEMU listens (`server=on,wait=off`) and the back-end connects; default false (QEMU connects). */
  server?: boolean;
  /** Client mode only: reconnect after N seconds when the back-end goes away. */
  reconnect?: number;
}

export interface VhostUserBlkDevice extends VhostUserSocket { numQueues?: number }
export interface VhostUserNetDevice extends VhostUserSocket { mac?: string }
/** The guest mounts it with `mount -t virtiofs TAG DIR`. */
export interface VhostUserFsDevice extends VhostUserSocket { tag: string }

export interface QemuGuestOptions {
  name?: string;
  blk?: VhostUserBlkDevice[];
  net?: VhostUserNetDevice[];
  fs?: VhostUserFsDevice[];
  /**
   * A virtual IOMMU (intel-iommu with device IOTLB) in front of the net devices: they negotiate
   * VIRTIO_F_ACCESS_PLATFORM, their addresses are IOVAs and the back-end translates them through IOTLB messages.
   */
  iommu?: boolean;
  /** Guest RAM in MiB (memfd, share=on); default 256. */
  memMiB?: number;
  /** Appended to `console=ttyS0 panic=-1 quiet`. */
  append?: string;
  /** Kernel + initramfs; default ensureGuestImage(). */
  image?: GuestImage;
  /** Extra QEMU arguments, appended last. */
  extraArgs?: string[];
  binary?: string;
}

export interface RunResult { output: string; rc: number }
export interface RunOptions { timeoutMs?: number }

export const QEMU_BINARY = 'qemu-system-x86_64';

/** The full QEMU command line for `opts` (exported for tests and for printing reproducers). */
export function qemuArgs(opts: QemuGuestOptions, image: GuestImage): string[] {
  const mem = opts.memMiB ?? 256;
  const args = [
    '-accel', 'tcg', '-M', 'q35,memory-backend=mem', '-m', `${mem}M`, '-smp', '1',
    '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`,
    '-nodefaults', '-no-reboot', '-display', 'none', '-serial', 'stdio',
    '-kernel', image.kernel, '-initrd', image.initrd,
    '-append', ['console=ttyS0 panic=-1 quiet', opts.iommu ? 'intel_iommu=on iommu=nopt' : '', opts.append].filter(Boolean).join(' '),
  ];
  // The IOMMU comes before the devices behind it.
  if (opts.iommu) args.push('-device', 'intel-iommu,device-iotlb=on');
  (opts.blk ?? []).forEach((d, i) => {
    args.push('-chardev', chardev(`vlblk${i}`, d));
    args.push('-device', `vhost-user-blk-pci,chardev=vlblk${i},num-queues=${d.numQueues ?? 1}`);
  });
  (opts.net ?? []).forEach((d, i) => {
    const mac = d.mac ?? `52:54:00:12:34:${(0x56 + i).toString(16).padStart(2, '0')}`;
    args.push('-chardev', chardev(`vlnetc${i}`, d));
    args.push('-netdev', `vhost-user,id=vlnet${i},chardev=vlnetc${i}`);
    // vectors=0: QEMU 7.2 under TCG segfaults in vhost_net_start with MSI-X; romfile= skips the boot ROM.
    args.push('-device', `virtio-net-pci,netdev=vlnet${i},mac=${mac},vectors=0,romfile=${opts.iommu ? ',iommu_platform=on,ats=on,disable-legacy=on' : ''}`);
  });
  (opts.fs ?? []).forEach((d, i) => {
    if (!/^[A-Za-z0-9_.-]{1,36}$/.test(d.tag)) throw new Error(`virtiofs tag must be 1-36 letters, digits, _ . or -: ${d.tag}`);
    args.push('-chardev', chardev(`vlfs${i}`, d));
    args.push('-device', `vhost-user-fs-pci,chardev=vlfs${i},tag=${d.tag}`);
  });
  args.push(...(opts.extraArgs ?? []));
  return args;
}

function chardev(id: string, s: VhostUserSocket): string {
  if (s.socket.includes(',')) throw new Error(`socket path must not contain a comma: ${s.socket}`);
  let c = `socket,id=${id},path=${s.socket}`;
  if (s.server) c += ',server=on,wait=off';
  if (s.reconnect !== undefined) {
    if (s.server) throw new Error('reconnect applies to client-mode chardevs only');
    c += `,reconnect=${s.reconnect}`;
  }
  return c;
}

/**
 * A QEMU guest whose console is a line-oriented shell: `run()` sends one command line and returns
 * its output and exit status. Commands are serialized.
 */
export class QemuGuest implements Peer {
  readonly name: string;
  readonly options: QemuGuestOptions;
  readonly image: GuestImage;
  readonly proc: PeerProcess;
  private seq = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private readyAt?: number;

  constructor(opts: QemuGuestOptions = {}) {
    this.options = opts;
    this.name = opts.name ?? 'qemu';
    this.image = opts.image ?? ensureGuestImage();
    this.proc = new PeerProcess({ name: this.name, command: opts.binary ?? QEMU_BINARY, args: qemuArgs(opts, this.image), stdin: 'pipe' });
  }

  get pid(): number | undefined { return this.proc.pid; }
  get running(): boolean { return this.proc.running; }
  /** Serial console output (the guest's view). */
  get console(): string { return this.proc.stdout.replace(/\r/g, ''); }
  /** Console and QEMU's own stderr, interleaved. */
  get log(): string { return this.proc.log; }
  /** ms from spawn to the guest shell's ready marker (undefined until ready). */
  get bootMs(): number | undefined { return this.readyAt === undefined ? undefined : this.readyAt - this.proc.startedAt; }
  /** Modules the guest failed to load. */
  get moduleFailures(): string[] { return [...this.console.matchAll(new RegExp(`${GUEST_MODFAIL} (\\S+)`, 'g'))].map((m) => m[1]); }

  async start(): Promise<void> { await this.proc.start(); }

  /**
   * Wait until QEMU listens on every `server: true` socket. Note that QEMU 7.2 blocks its start-up on a
   * listening vhost-user chardev until a back-end connects, so the guest boots only after that.
   */
  async waitForServerSockets(timeoutMs = 20_000): Promise<void> {
    for (const d of [...(this.options.blk ?? []), ...(this.options.net ?? []), ...(this.options.fs ?? [])]) {
      if (d.server) await waitForListeningSocket(d.socket, timeoutMs, this.proc);
    }
  }

  /** Wait for the guest shell's ready marker (modules loaded, lo up). */
  async waitReady(timeoutMs = 90_000): Promise<void> {
    await this.proc.waitForText(new RegExp(`${GUEST_READY}\\r?\\n`), { stream: 'out', timeoutMs });
    this.readyAt ??= Date.now();
  }

  /** Wait for `re` on the console (from `from`, an offset into the raw console text). */
  waitFor(re: RegExp, timeoutMs = 60_000, from = 0): Promise<RegExpExecArray> {
    return this.proc.waitForText(re, { stream: 'out', timeoutMs, from });
  }

  /** Run one shell command line in the guest (stdout and stderr merged). */
  run(cmd: string, opts: RunOptions = {}): Promise<RunResult> {
    if (!/^[\x20-\x7e\t]*$/.test(cmd) || cmd.length > 3000) {
      return Promise.reject(new Error(`guest command must be one printable ASCII line under 3000 chars: ${JSON.stringify(cmd)}`));
    }
    return this.serialize(async () => {
      const id = ++this.seq;
      const from = this.proc.length('out');
      this.proc.write(`${id} ${cmd}\n`);
      const re = new RegExp(`${GUEST_BEGIN} ${id}\\r?\\n([\\s\\S]*?)${GUEST_END} ${id} (\\d+)\\r?\\n`);
      let m: RegExpExecArray;
      try {
        m = await this.proc.waitForText(re, { stream: 'out', from, timeoutMs: opts.timeoutMs ?? 30_000 });
      } catch (e) {
        throw new Error(`guest command ${JSON.stringify(cmd)} failed: ${(e as Error).message}`);
      }
      const output = m[1].replace(/\r/g, '').replace(/\n$/, '');
      return { output, rc: Number(m[2]) };
    });
  }

  /** Run a command and throw (with the console tail) unless it exits 0; returns its output. */
  async check(cmd: string, opts: RunOptions = {}): Promise<string> {
    const r = await this.run(cmd, opts);
    if (r.rc !== 0) throw new Error(`guest command ${JSON.stringify(cmd)} exited ${r.rc}:\n${tail(r.output)}`);
    return r.output;
  }

  /** `poweroff -f` through the shell; resolves when QEMU has exited (SIGKILL after timeoutMs). */
  async poweroff(timeoutMs = 30_000): Promise<ExitInfo> {
    if (!this.proc.running) return this.proc.exited();
    await this.serialize(async () => { this.proc.write(`${++this.seq} poweroff -f\n`); });
    try {
      return await withTimeout(this.proc.exited(), timeoutMs, () => `${this.name} did not power off`);
    } catch (e) {
      await this.proc.kill();
      throw e;
    }
  }

  /** SIGKILL QEMU. */
  kill(): Promise<ExitInfo> { return this.proc.kill(); }

  exited(): Promise<ExitInfo> { return this.proc.exited(); }

  describe(): string {
    const e = this.proc.exit;
    return `${this.name} (${e ? describeExit(e) : 'running'}): ${this.proc.commandLine()}`;
  }

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }
}
