// The README's main job (`vhost-lens demo`) runs end to end on real QEMU: decoded session, ring activity, image checked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { requireBinary } from '../../core/peers';
import { CLI } from '../helpers/cliProxy';

for (const variant of [[], ['--proxy', '--notifiers']]) {
  test(`vhost-lens demo ${variant.join(' ')}: a guest writes and reads a sector, every request decoded, ends by itself`, { timeout: 240_000 }, () => {
    requireBinary('qemu-system-x86_64');
    if (variant.includes('--proxy')) requireBinary('qemu-storage-daemon');
    const r = spawnSync(process.execPath, [CLI, 'demo', '--json', ...variant], { encoding: 'utf8', timeout: 200_000 });
    assert.equal(r.status, 0, `demo failed:\n${r.stderr}\n${r.stdout.slice(-3000)}`);
    const lines = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
    const steps = lines.filter((l) => l.kind === 'demo');
    assert.match(steps.find((s) => s.step === 'image check')?.detail ?? '', /holds what the guest wrote/);
    const messages = lines.filter((l) => l.kind === 'message');
    assert.ok(messages.some((m) => m.name === 'SET_VRING_KICK'), 'the vhost-user session was decoded');
    assert.ok(messages.every((m) => m.problems.length === 0), 'no decode problems');
    const chains = lines.filter((l) => l.kind === 'ring').flatMap((l) => l.chains);
    const out = chains.find((c) => c.device?.type === 'OUT' && BigInt(c.device.sector) === 2048n && c.state === 'used');
    assert.ok(out, 'ring activity shows the guest\'s write at sector 2048');
    assert.equal(out.device.status, 'OK');
    const summary = lines.find((l) => l.kind === 'summary');
    assert.equal(summary.workerFds, 0);
    assert.equal(summary.hostFds, 0);
  });
}
