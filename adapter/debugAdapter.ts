// Debug adapter entry (bundled to dist/adapter.js): runs one VhostDebugSession over stdin/stdout in its own process; exports the session for inline use in tests.
import { VhostDebugSession } from './session';

export { VhostDebugSession } from './session';

/**
 * Serve DAP on stdin/stdout. stdout carries only the protocol: anything else that would print there goes to
 * stderr. The engine is stopped (sockets unlinked, fds closed) before the process exits, however it ends.
 */
export function runAdapter(): VhostDebugSession {
  const toStderr = (...a: unknown[]): void => { process.stderr.write(`${a.map(String).join(' ')}\n`); };
  console.log = toStderr;
  console.info = toStderr;
  console.debug = toStderr;
  const session = new VhostDebugSession();
  let exiting = false;
  const exit = (code: number): void => {
    if (exiting) return;
    exiting = true;
    session.teardown().finally(() => process.exit(code));
  };
  process.on('SIGTERM', () => exit(0));
  process.on('SIGINT', () => exit(0));
  process.stdin.on('end', () => exit(0));
  process.on('uncaughtException', (e) => {
    process.stderr.write(`vhost-lens adapter: uncaught ${e.stack ?? e}\n`);
    try { session.sendEvent({ seq: 0, type: 'event', event: 'output', body: { category: 'stderr', output: `Vhost Lens adapter internal error: ${e.message}\n` } } as never); } catch { /* stdout gone */ }
  });
  session.start(process.stdin, process.stdout);
  return session;
}

if (require.main === module) runAdapter();
