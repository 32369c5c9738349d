// Relay benchmarks, proxy vs direct side by side in one run: request/reply RTT and msgs/s against qemu-storage-daemon,
// QEMU<->qemu-storage-daemon handshake time, and DPDK virtio-user<->testpmd packets/s.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { createRawImage, ensureGuestImage, PeerSet, requireBinary, requireTestpmd } from '../core/peers';
import { fmt, median, range, sleep, startCli, stopCli, waitSocket } from './common';
const C_CLIENT_SRC = path.join(__dirname, '..', '..', 'bench', 'c', 'rttclient.c');

/** The C benchmark client, compiled once (gcc is on every machine of this project's kind). */
function cClient(): string {
  const out = path.join(__dirname, 'rttclient');
  if (!fs.existsSync(out) || fs.statSync(out).mtimeMs < fs.statSync(C_CLIENT_SRC).mtimeMs) {
    const r = spawnSync('gcc', ['-O2', '-o', out, C_CLIENT_SRC], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cannot build the C benchmark client: ${r.stderr || r.error}`);
  }
  return out;
}

const pct = (xs: number[], p: number): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(s.length * p))]; };

/** The product as users run it: the CLI proxy, JSON output decoded and written (to /dev/null). */
function startProxy(front: string, back: string, extra: string[] = []): Promise<ChildProcess> {
  return startCli(['proxy', '--frontend', front, '--backend', back, ...extra], front.replace(/^listen:/, ''));
}

interface Rtt { p50: number; p99: number; pipelinedPerSec: number }
function rttOnce(sock: string, rounds: number, pipelined: number): Rtt {
  const r = spawnSync(cClient(), [sock, String(rounds), String(pipelined)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`rtt client failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

export async function benchRtt(reps: number): Promise<Record<string, unknown>> {
  requireBinary('qemu-storage-daemon');
  const peers = new PeerSet();
  try {
    const dir = peers.tmpDir('bench-rtt');
    const qsd = peers.qsd({ image: createRawImage(path.join(dir, 'd.img'), 8), socket: path.join(dir, 'qsd.sock') });
    await qsd.start();
    const proxySock = path.join(dir, 'proxy.sock');
    const proxy = await startProxy(proxySock, qsd.socket);
    const direct: Rtt[] = [], via: Rtt[] = [];
    for (let i = 0; i < reps; i++) {
      direct.push(rttOnce(qsd.socket, 2000, 5000));
      via.push(rttOnce(proxySock, 2000, 5000));
    }
    await stopCli(proxy);
    const d50 = direct.map((x) => x.p50), v50 = via.map((x) => x.p50);
    const added = via.map((v, i) => v.p50 - direct[i].p50);
    return {
      reps,
      directP50us: median(d50), proxyP50us: median(v50), addedP50us: median(added), addedP50range: range(added),
      directP99us: median(direct.map((x) => x.p99)), proxyP99us: median(via.map((x) => x.p99)),
      directMsgsPerSec: median(direct.map((x) => x.pipelinedPerSec)), proxyMsgsPerSec: median(via.map((x) => x.pipelinedPerSec)),
      msgsRatio: median(via.map((v, i) => v.pipelinedPerSec / direct[i].pipelinedPerSec)),
    };
  } finally {
    await peers.cleanup();
  }
}

/** QEMU -S realizes vhost-user-blk (the handshake up to GET_CONFIG) before its QMP greeting: time spawn to greeting. */
async function qemuHandshakeMs(sock: string, dir: string): Promise<number> {
  const qmp = path.join(dir, `qmp-${Date.now()}.sock`);
  const img = ensureGuestImage();
  const t0 = process.hrtime.bigint();
  const q = spawn('qemu-system-x86_64', ['-S', '-accel', 'tcg', '-M', 'q35,memory-backend=mem', '-m', '256M',
    '-object', 'memory-backend-memfd,id=mem,size=256M,share=on', '-nodefaults', '-display', 'none', '-kernel', img.kernel,
    '-chardev', `socket,id=c0,path=${sock}`, '-device', 'vhost-user-blk-pci,chardev=c0,num-queues=1',
    '-qmp', `unix:${qmp},server=on,wait=off`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  q.stderr!.on('data', (d) => { err += d; });
  try {
    await waitSocket(qmp);
    const ms = await new Promise<number>((resolve, reject) => {
      const c = net.connect(qmp);
      c.once('data', () => {
        const t = Number(process.hrtime.bigint() - t0) / 1e6;
        c.write('{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n');
        resolve(t);
      });
      c.on('error', reject);
    });
    await new Promise((r) => q.once('exit', r));
    return ms;
  } catch (e) {
    q.kill('SIGKILL');
    throw new Error(`${(e as Error).message}\n${err}`);
  }
}

export async function benchHandshake(reps: number): Promise<Record<string, unknown>> {
  requireBinary('qemu-system-x86_64');
  requireBinary('qemu-storage-daemon');
  const peers = new PeerSet();
  try {
    const dir = peers.tmpDir('bench-hs');
    const qsd = peers.qsd({ image: createRawImage(path.join(dir, 'd.img'), 8), socket: path.join(dir, 'qsd.sock') });
    await qsd.start();
    const proxySock = path.join(dir, 'proxy.sock');
    const proxy = await startProxy(proxySock, qsd.socket);
    await qemuHandshakeMs(qsd.socket, dir); // warm the page cache
    const direct: number[] = [], via: number[] = [];
    for (let i = 0; i < reps; i++) {
      direct.push(await qemuHandshakeMs(qsd.socket, dir));
      via.push(await qemuHandshakeMs(proxySock, dir));
    }
    await stopCli(proxy);
    return { reps, directMs: median(direct), proxyMs: median(via), ratio: median(via.map((v, i) => v / direct[i])), directRange: range(direct), proxyRange: range(via) };
  } finally {
    await peers.cleanup();
  }
}

/** CPU seconds (user + system, all threads) a process has used so far. */
function cpuSeconds(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}
/** CPU share (1 = one core) of the proxy in each dpdkPps run, in order. */
const proxyCpu: number[] = [];

/** Median Rx-pps seen by the vhost side over `seconds` of virtio-user <-> testpmd io forwarding. */
async function dpdkPps(peers: PeerSet, dir: string, viaProxy: boolean, seconds: number, extra: string[] = [], wrap?: string[]): Promise<number> {
  const vhostSock = path.join(dir, `vhost-${Date.now()}.sock`);
  const vhost = peers.testpmd({ name: 'bench-vhost', vdev: { kind: 'vhost', iface: vhostSock }, mainLcore: 1, wrap });
  await vhost.start();
  let proxy: ChildProcess | undefined;
  let front = vhostSock;
  if (viaProxy) {
    front = path.join(dir, `proxy-${Date.now()}.sock`);
    proxy = await startProxy(front, vhostSock, extra);
  }
  const vuser = peers.testpmd({ name: 'bench-virtio-user', mainLcore: 0, txFirst: true, vdev: { kind: 'virtio-user', path: front } });
  await vuser.start();
  await vhost.waitForText(/virtio is now ready for processing/);
  await vhost.waitForRx(1);
  const cpu0 = proxy ? cpuSeconds(proxy.pid!) : 0, t0 = Date.now();
  const samples = await vhost.waitForSamples(seconds + 1, (seconds + 30) * 1000);
  if (proxy) proxyCpu.push((cpuSeconds(proxy.pid!) - cpu0) / ((Date.now() - t0) / 1000));
  await vuser.stop();
  await vhost.stop();
  if (proxy) await stopCli(proxy);
  return median(samples.slice(1).map((s) => s.rxPps));
}

export async function benchDpdk(reps: number, seconds = 5, label = 'proxy', extra: string[] = []): Promise<Record<string, unknown>> {
  requireTestpmd();
  const peers = new PeerSet();
  try {
    const dir = peers.tmpDir('bench-dpdk');
    const direct: number[] = [], via: number[] = [];
    for (let i = 0; i < reps; i++) {
      direct.push(await dpdkPps(peers, dir, false, seconds));
      via.push(await dpdkPps(peers, dir, true, seconds, extra));
    }
    return { reps, seconds, directPps: median(direct), [`${label}Pps`]: median(via), ratio: median(via.map((v, i) => v / direct[i])), directRange: range(direct), [`${label}Range`]: range(via) };
  } finally {
    await peers.cleanup();
  }
}

/**
 * Data plane with observation, side by side: direct; through the plain proxy; through the proxy watching rings (--rings);
 * through the proxy interposing notifiers (--notifiers); the back-end under strace -f (what people do today).
 */
export async function benchObserved(reps: number, seconds = 5): Promise<Record<string, unknown>> {
  requireTestpmd();
  requireBinary('strace');
  const peers = new PeerSet();
  try {
    const dir = peers.tmpDir('bench-obs');
    const setups: Record<string, () => Promise<number>> = {
      direct: () => dpdkPps(peers, dir, false, seconds),
      proxy: () => dpdkPps(peers, dir, true, seconds),
      watch: () => dpdkPps(peers, dir, true, seconds, ['--rings', '--device', 'net']),
      interpose: () => dpdkPps(peers, dir, true, seconds, ['--notifiers']),
      strace: () => dpdkPps(peers, dir, false, seconds, [], ['strace', '-f', '-o', '/dev/null']),
    };
    const names = Object.keys(setups);
    const runs: Record<string, number[]> = Object.fromEntries(names.map((k) => [k, []]));
    const cpu: Record<string, number[]> = {};
    for (let i = 0; i < reps; i++) {
      // Rotate the order each repetition so a drift of the machine does not favour one setup.
      for (let j = 0; j < names.length; j++) {
        const k = names[(i + j) % names.length];
        const before = proxyCpu.length;
        runs[k].push(await setups[k]());
        if (proxyCpu.length > before) (cpu[k] ??= []).push(proxyCpu[proxyCpu.length - 1]);
      }
    }
    const out: Record<string, unknown> = { reps, seconds };
    for (const [k, v] of Object.entries(runs)) {
      out[`${k}Pps`] = median(v);
      out[`${k}Range`] = range(v);
      if (k !== 'direct') out[`${k}Ratio`] = median(v.map((x, j) => x / runs.direct[j]));
      if (cpu[k]) out[`${k}ProxyCpu`] = median(cpu[k]);
    }
    return out;
  } finally {
    await peers.cleanup();
  }
}

if (require.main === module) {
  (async () => {
    const which = process.argv[2] ?? 'all';
    const reps = Number(process.argv[3] ?? 5);
    const results: Record<string, unknown> = { date: new Date().toISOString(), load: fs.readFileSync('/proc/loadavg', 'utf8').trim() };
    if (which === 'all' || which === 'rtt') results.rtt = await benchRtt(reps);
    if (which === 'all' || which === 'handshake') results.handshake = await benchHandshake(reps);
    if (which === 'all' || which === 'dpdk') results.dpdk = await benchDpdk(Math.max(3, Math.min(reps, 5)));
    if (which === 'all' || which === 'observed') results.observed = await benchObserved(Math.max(3, Math.min(reps, 7)));
    console.log(JSON.stringify(results, null, 2));
    fs.mkdirSync(path.join(__dirname, '..', '..', 'bench', 'results'), { recursive: true });
    fs.writeFileSync(path.join(__dirname, '..', '..', 'bench', 'results', `relay-${which}.json`), JSON.stringify(results, null, 2));
  })().catch((e) => { console.error(e); process.exit(1); });
}
