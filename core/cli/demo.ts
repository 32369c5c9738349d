// `vhost-lens demo`: the embedded default session — a real QEMU guest on Vhost Lens (its built-in blk back-end, or the
// proxy in front of qemu-storage-daemon with --proxy), decoded with ring activity, ending by itself.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { extraCommands, runEngine, UsageError, type CliIo, type Parsed } from './main';
import { Proxy } from '../proxy/proxy';
import { Backend } from '../backend/backend';
import { PeerSet, createRawImage, readSectors, requireBinary } from '../peers';
import type { Engine } from '../engine';

const stdio: CliIo = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

export async function runDemo(p: Parsed, io: CliIo = stdio): Promise<number> {
  const viaProxy = p.flags.has('proxy');
  for (const b of ['qemu-system-x86_64', 'busybox', 'modinfo', ...(viaProxy ? ['qemu-storage-daemon'] : [])]) {
    try { requireBinary(b); } catch (e) { throw new UsageError((e as Error).message); }
  }
  // Ring activity is part of the show unless asked not to.
  if (!p.flags.has('no-rings')) p.flags.set('rings', true);
  const json = p.flags.has('json');
  const say = (step: string, detail = ''): void => {
    if (json) io.out(`${JSON.stringify({ kind: 'demo', step, ...(detail ? { detail } : {}) })}\n`);
    else io.out(`### ${step}${detail ? `: ${detail}` : ''}\n`);
  };
  const peers = new PeerSet();
  const dir = peers.tmpDir('demo');
  try {
    const image = createRawImage(path.join(dir, 'disk.img'), 64);
    const sock = path.join(dir, 'vhost-lens.sock');
    const capture = p.flags.get('capture') as string | undefined;
    let engine: Engine;
    if (viaProxy) {
      const qsd = peers.qsd({ image, socket: path.join(dir, 'qsd.sock') });
      say('starting qemu-storage-daemon', `vhost-user-blk back-end on ${qsd.socket}`);
      await qsd.start();
      const notifiers = p.flags.has('notifiers');
      engine = new Proxy({
        frontend: { mode: 'listen', path: sock }, backend: { mode: 'connect', path: qsd.socket }, maxSessions: 1,
        capture, notifiers, ringCapture: notifiers && p.flags.has('rings'),
      });
      say('starting the Vhost Lens proxy', `QEMU connects to ${sock}, the proxy to qemu-storage-daemon`);
    } else {
      engine = new Backend({
        device: 'blk', blk: { image }, endpoint: { mode: 'listen', path: sock }, maxSessions: 1, capture,
        notifiers: p.flags.has('notifiers'), ringCapture: p.flags.has('rings'),
      });
      say('starting the Vhost Lens vhost-user-blk back-end', `64 MiB raw image, listening on ${sock}`);
    }
    const done = runEngine(engine, p, io);
    await engine.start();
    say('starting QEMU', `TCG guest, vhost-user-blk-pci on ${sock}, guest RAM shared through a memfd`);
    const guest = peers.qemu({ name: 'demo-guest', blk: [{ socket: sock }] });
    await guest.start();
    await guest.waitReady();
    say('guest booted', `${guest.bootMs} ms`);
    await guest.check('i=0; while ! [ -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ -b /dev/vda ]', { timeoutMs: 60_000 });
    const marker = `hello from the guest through vhost-lens ${new Date().toISOString()}`;
    say('guest writes sector 2048', marker);
    await guest.check(`printf '%s' '${marker}' | dd of=/dev/vda bs=512 seek=2048 count=1 conv=sync oflag=direct 2>/dev/null`, { timeoutMs: 60_000 });
    const back = await guest.check(`dd if=/dev/vda bs=512 skip=2048 count=1 iflag=direct 2>/dev/null | head -c ${marker.length}`, { timeoutMs: 60_000 });
    say('guest reads it back', back);
    say('powering the guest off');
    await guest.poweroff();
    await done;
    const onDisk = readSectors(image, 2048).subarray(0, marker.length).toString();
    say('image check', onDisk === marker ? 'the host image holds what the guest wrote' : `MISMATCH: ${JSON.stringify(onDisk)}`);
    return onDisk === marker && back === marker ? 0 : 1;
  } finally {
    await peers.cleanup();
    if (fs.existsSync(dir)) fs.rmSync(dir, { recursive: true, force: true });
  }
}

extraCommands.demo = runDemo;
