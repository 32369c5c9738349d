// CLI command `vhost-lens backend blk|net`: serve a front-end with a built-in device, printed like the proxy (shared runner).
import * as fs from 'node:fs';
import { extraCommands, runEngine, str, num, UsageError, VALUED, type Parsed, type CliIo } from './main';
import { Backend, type BackendOptions } from '../backend/backend';
import { parseIpv4, parseMac } from '../backend/packets';
import type { VmCopy } from '../backend/vhost';

for (const f of ['queues', 'serial', 'vm-copy', 'poll-us']) VALUED.add(f);

export const BACKEND_HELP = `usage:
  vhost-lens backend blk --socket PATH --image FILE [--readonly] [--queues N] [--serial ID] [options]
      A vhost-user-blk device on a raw image (VERSION_1, SEG_MAX, BLK_SIZE, FLUSH, DISCARD, WRITE_ZEROES, MQ; RO with --readonly).
  vhost-lens backend net --socket PATH (--tap IFNAME | --loopback [--ip A.B.C.D] [--mac MAC]) [--queues N] [options]
      A vhost-user-net device: frames to and from a TAP device, or back to the guest with an ARP/ICMP echo
      responder at --ip (default 10.0.0.1, MAC 52:54:00:00:00:01). --queues: queue pairs (loopback only).
options:
  --connect             connect to PATH (the front-end listens, e.g. QEMU server=on) instead of listening on it
  --json                one JSON object per line (kind: message, state, session, connection, notify, error, ring, summary)
  --capture FILE        record the session for vhost-lens replay
  --notifiers           report kick and call counts (kind:"notify")
  --rings [--poll-hz N] watch every live vring (kind:"ring")
  --socket-mode MODE    mode of the listening socket (octal, default 600)
  --socket-group GROUP  group of the listening socket
  --max-sessions N      exit after N front-end sessions have ended
  --vm-copy MODE        off (default): guest memory only through the region fds the session received (pread/pwrite);
                        auto: opt in to one-call copies through the front-end's own mapping (process_vm_readv/writev)
                        where /proc/PID/maps proves it maps the region's file; needs ptrace rights over the
                        front-end; require: like auto, and report when it cannot be used
  --poll-us N           after a ring runs dry, keep polling it N µs with kicks disabled (default 0: kick-driven)
`;

export function backendOptions(p: Parsed): BackendOptions {
  const kind = p.args[0];
  if (kind !== 'blk' && kind !== 'net') throw new UsageError(`backend needs a device: blk or net\n${BACKEND_HELP}`);
  const socket = str(p, 'socket');
  if (!socket) throw new UsageError('backend needs --socket PATH');
  const modeText = str(p, 'socket-mode');
  if (modeText !== undefined && !/^[0-7]{3,4}$/.test(modeText)) throw new UsageError(`--socket-mode must be octal like 600 or 660, got "${modeText}"`);
  const queues = num(p, 'queues');
  if (queues !== undefined && (!Number.isInteger(queues) || queues < 1)) throw new UsageError('--queues must be a positive integer');
  const common = {
    endpoint: { mode: p.flags.has('connect') ? 'connect' as const : 'listen' as const, path: socket },
    socketMode: modeText === undefined ? undefined : parseInt(modeText, 8),
    socketGroup: str(p, 'socket-group'),
    maxSessions: num(p, 'max-sessions'),
    notifiers: p.flags.has('notifiers'),
    ringCapture: p.flags.has('rings'),
    notifyIntervalMs: num(p, 'notify-interval'),
    vmCopy: vmCopy(p),
    capture: str(p, 'capture'),
  };
  const pollUs = num(p, 'poll-us');
  if (kind === 'blk') {
    const image = str(p, 'image');
    if (!image) throw new UsageError('backend blk needs --image FILE');
    let st: fs.Stats;
    try { st = fs.statSync(image); } catch { throw new UsageError(`image ${image} does not exist`); }
    if (!st.isFile()) throw new UsageError(`image ${image} is not a regular file`);
    if (st.size < 512) throw new UsageError(`image ${image} is smaller than one 512-byte sector`);
    for (const f of ['tap', 'loopback', 'ip', 'mac']) if (p.flags.has(f)) throw new UsageError(`--${f} is a net option`);
    return { ...common, device: 'blk', blk: { image, readonly: p.flags.has('readonly'), numQueues: queues, serial: str(p, 'serial'), pollUs } };
  }
  const tap = str(p, 'tap');
  const loopback = p.flags.has('loopback');
  if (!!tap === loopback) throw new UsageError('backend net needs exactly one of --tap IFNAME or --loopback');
  for (const f of ['image', 'readonly']) if (p.flags.has(f)) throw new UsageError(`--${f} is a blk option`);
  const ip = str(p, 'ip'), mac = str(p, 'mac');
  if (tap && (ip || mac)) throw new UsageError('--ip and --mac set the loopback responder (not used with --tap)');
  try { if (ip) parseIpv4(ip); if (mac) parseMac(mac); } catch (e) { throw new UsageError((e as Error).message); }
  if (tap && queues !== undefined && queues !== 1) throw new UsageError('--tap serves one queue pair');
  return { ...common, device: 'net', net: { mode: tap ? 'tap' : 'loopback', tap, ip, mac, queuePairs: queues, pollUs } };
}

function vmCopy(p: Parsed): VmCopy | undefined {
  const v = str(p, 'vm-copy');
  if (v === undefined) return undefined;
  if (v !== 'auto' && v !== 'off' && v !== 'require') throw new UsageError(`--vm-copy must be auto, off or require, got "${v}"`);
  return v;
}

export async function runBackend(p: Parsed, io: CliIo): Promise<number> {
  if (p.args[0] === 'help' || p.flags.has('help') || p.args.length === 0) { io.out(BACKEND_HELP); return p.args.length === 0 ? 2 : 0; }
  return runEngine(new Backend(backendOptions(p)), p, io);
}

extraCommands['backend'] = runBackend;
