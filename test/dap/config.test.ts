// Launch/attach configuration validation: endpoint forms as in the CLI, defaults, and errors a user can act on; the package.json schema agrees.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { attachConfig, launchConfig, ConfigError } from '../../adapter/config';
import { CONFIGURATION_ATTRIBUTES, CONFIGURATION_SNIPPETS } from '../../common/debugConfig';

test('attach: [listen:|connect:]PATH with the CLI defaults (front-end listens, back-end connects)', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-cfg-'));
  const sock = path.join(dir, 'be.sock');
  const server = net.createServer().listen(sock);
  await new Promise((r) => server.once('listening', r));
  t.after(() => { server.close(); fs.rmSync(dir, { recursive: true, force: true }); });
  const c = attachConfig({ frontend: '/tmp/fe.sock', backend: sock });
  assert.equal(c.mode, 'proxy');
  if (c.mode !== 'proxy') return;
  assert.deepEqual(c.frontend, { mode: 'listen', path: '/tmp/fe.sock' });
  assert.deepEqual(c.backend, { mode: 'connect', path: sock });
  assert.equal(c.maxSessions, 1);
  assert.equal(c.autoContinueSeconds, 0);
  assert.equal(c.rings, false);
  const d = attachConfig({ frontend: 'connect:/tmp/qemu.sock', backend: 'listen:/tmp/be2.sock', wait: true, rings: true, pollHz: 50, socketMode: '660', autoContinueSeconds: 5 });
  if (d.mode !== 'proxy') return;
  assert.deepEqual(d.frontend, { mode: 'connect', path: '/tmp/qemu.sock' });
  assert.deepEqual(d.backend, { mode: 'listen', path: '/tmp/be2.sock' });
  assert.equal(d.socketMode, 0o660);
  assert.equal(d.pollHz, 50);
  assert.equal(d.autoContinueSeconds, 5);
});

test('attach errors', () => {
  assert.throws(() => attachConfig({ frontend: '/tmp/x.sock' }), /needs "frontend" and "backend"/);
  assert.throws(() => attachConfig({ frontend: 'tcp:1234', backend: '/tmp/b', wait: true }), /unknown endpoint kind in "tcp:1234"/);
  assert.throws(() => attachConfig({ frontend: '/tmp/fe.sock', backend: '/nonexistent/be.sock' }), /back-end socket \/nonexistent\/be.sock does not exist: start the back-end first, or set "wait": true/);
  assert.throws(() => attachConfig({ frontend: '/tmp/fe.sock', backend: '/etc', }), /is not a socket/);
  assert.throws(() => attachConfig({ frontend: '/tmp/fe.sock', backend: '/tmp/b', wait: true, socketMode: 'rw' }), /"socketMode" must be octal/);
  assert.throws(() => attachConfig({ frontend: '/tmp/fe.sock', backend: '/tmp/b', wait: true, pollHz: 0 }), /"pollHz" must be a number from 1 to 10000/);
  assert.throws(() => attachConfig({ frontend: '/tmp/fe.sock', backend: '/tmp/b', wait: true, rings: 'yes' }), /"rings" must be true or false/);
  assert.throws(() => attachConfig({ frontend: '/tmp/fe.sock', backend: '/tmp/b', wait: true, device: 'scsi' }), /"device" must be net, blk or fs/);
  assert.throws(() => attachConfig({ frontend: 'listen:/tmp/a', backend: 'listen:/tmp/a' }), /cannot listen on the same path/);
});

test('launch: replay and back-end configurations', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-cfg-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.alloc(4096));
  const r = launchConfig({ mode: 'replay', capture: '/tmp/x.vlcap', stopOnEntry: true });
  assert.equal(r.mode, 'replay');
  assert.equal(r.stopOnEntry, true);
  const b = launchConfig({ mode: 'backend', device: 'blk', socket: '/tmp/blk.sock', image: img, queues: 2, socketMode: '660' });
  assert.equal(b.mode, 'backend');
  if (b.mode === 'backend') {
    assert.equal(b.device, 'blk', 'the device type names and decodes the session');
    assert.equal(b.queues, 2);
    assert.equal(b.socketMode, 0o660);
    assert.equal(b.connect, false);
  }
  const n = launchConfig({ mode: 'backend', device: 'net', socket: '/tmp/net.sock', loopback: true, ip: '10.0.0.9', mac: '52:54:00:00:00:09' });
  assert.equal(n.mode === 'backend' && n.loopback, true);
  assert.throws(() => launchConfig({ mode: 'replay' }), /needs "capture"/);
  assert.throws(() => launchConfig({}), /needs "mode": "backend" or "replay"/);
  assert.throws(() => launchConfig({ mode: 'proxy' }), /use "request": "attach" for the proxy/);
  assert.throws(() => launchConfig({ mode: 'backend', device: 'fs', socket: '/s' }), /"device": "blk" or "net"/);
  assert.throws(() => launchConfig({ mode: 'backend', device: 'blk', socket: '/s' }), /blk back-end needs "image"/);
  assert.throws(() => launchConfig({ mode: 'backend', device: 'blk', socket: '/s', image: '/nonexistent.img' }), /image \/nonexistent.img does not exist/);
  assert.throws(() => launchConfig({ mode: 'backend', device: 'blk', socket: '/s', image: dir }), /is not a regular file/);
  assert.throws(() => launchConfig({ mode: 'backend', device: 'net', socket: '/s' }), /"tap": INTERFACE or "loopback": true/);
  assert.throws(() => launchConfig({ mode: 'backend', device: 'net', socket: '/s', tap: 'tap0', loopback: true }), /not both/);
  assert.throws(() => launchConfig({ mode: 'backend', device: 'net', socket: '/s', loopback: true, ip: '10.0.0' }), ConfigError);
  assert.throws(() => launchConfig({ mode: 'backend', device: 'net', socket: '/s', tap: 'tap0', queues: 2 }), /one queue pair/);
  assert.throws(() => launchConfig({ mode: 'backend', device: 'blk', image: img }), /needs "socket"/);
  assert.throws(() => launchConfig({ mode: 'backend', device: 'blk', socket: '/s', image: img, tap: 'tap0' }), ConfigError);
});

test('the package.json schema names every option the validator reads, and the snippets validate', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-cfg-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'disk.img'), Buffer.alloc(4096));
  const attach = Object.keys(CONFIGURATION_ATTRIBUTES.attach.properties);
  for (const k of ['frontend', 'backend', 'rings', 'notifiers', 'stopOnEntry', 'autoContinueSeconds', 'capture', 'maxSessions', 'wait']) assert.ok(attach.includes(k), k);
  const launch = Object.keys(CONFIGURATION_ATTRIBUTES.launch.properties);
  for (const k of ['mode', 'device', 'socket', 'connect', 'queues', 'serial', 'ip', 'mac', 'image', 'readOnly', 'tap', 'loopback', 'capture', 'rings', 'stopOnEntry', 'autoContinueSeconds']) assert.ok(launch.includes(k), k);
  for (const s of CONFIGURATION_SNIPPETS) {
    const body = JSON.parse(JSON.stringify(s.body).replace(/\$\{workspaceFolder\}/g, dir)) as Record<string, unknown>;
    if (body.request === 'attach') assert.equal(attachConfig({ ...body, wait: true }).mode, 'proxy');
    else assert.ok(launchConfig(body).mode);
  }
});
