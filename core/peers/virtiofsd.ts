// virtiofsd peer: shares a host directory as a vhost-user-fs back-end on a UNIX socket (QEMU's C daemon or the Rust one).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { SocketDaemon } from './daemon';
import { whichBinary } from './process';

/** Where Debian installs it: /usr/lib/qemu (QEMU 7.2's C daemon, qemu-system-common) or /usr/libexec (the Rust one, package virtiofsd). */
export const VIRTIOFSD_PATHS = ['/usr/libexec/virtiofsd', '/usr/lib/qemu/virtiofsd'] as const;

/** The virtiofsd binary: env VHOST_LENS_VIRTIOFSD, then PATH, then Debian's locations; undefined when there is none. */
export function findVirtiofsd(): string | undefined {
  const env = process.env.VHOST_LENS_VIRTIOFSD;
  if (env) return existsSync(env) ? env : undefined;
  return whichBinary('virtiofsd') ?? VIRTIOFSD_PATHS.find((p) => existsSync(p));
}

/** The virtiofsd binary, or a clear error naming the package that provides it. */
export function requireVirtiofsd(): string {
  const binary = findVirtiofsd();
  if (!binary) throw new Error('virtiofsd not found: run scripts/setup.sh (Debian package qemu-system-common, pulled in by qemu-system-x86)');
  return binary;
}

export interface VirtiofsdOptions {
  name?: string;
  /** Host directory the guest mounts. */
  shared: string;
  /** UNIX socket the daemon listens on. */
  socket: string;
  binary?: string;
}

const dialect = new Map<string, 'rust' | 'c'>();

/** The Rust daemon takes --shared-dir; QEMU's C one takes -o source=. */
function dialectOf(binary: string): 'rust' | 'c' {
  let d = dialect.get(binary);
  if (!d) {
    let help = '';
    try { help = execFileSync(binary, ['--help'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }); } catch (e) { help = String((e as { stdout?: string }).stdout ?? ''); }
    d = help.includes('--shared-dir') ? 'rust' : 'c';
    dialect.set(binary, d);
  }
  return d;
}

/** Arguments for one session: no caching (every guest access reaches the daemon), no sandbox namespaces. */
export function virtiofsdArgs(o: VirtiofsdOptions, kind: 'rust' | 'c'): string[] {
  return kind === 'rust'
    ? ['--socket-path', o.socket, '--shared-dir', o.shared, '--cache', 'never', '--sandbox', 'none']
    : [`--socket-path=${o.socket}`, '-o', `source=${o.shared}`, '-o', 'cache=none', '-o', 'sandbox=chroot', '-o', 'no_posix_lock'];
}

/** One virtiofsd process (it serves a single front-end connection, then exits). */
export class Virtiofsd extends SocketDaemon {
  constructor(readonly options: VirtiofsdOptions) {
    super(options.name ?? 'virtiofsd', options.socket);
  }

  protected command(): { command: string; args: string[] } {
    const binary = this.options.binary ?? requireVirtiofsd();
    return { command: binary, args: virtiofsdArgs(this.options, dialectOf(binary)) };
  }
}
