// Guest image: finds the host kernel and builds (once, cached) a busybox initramfs whose init serves a scriptable console shell.
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

/** Drivers a vhost-user-blk / vhost-user-net guest needs, in load order (Debian builds them as modules). */
export const GUEST_MODULES = [
  'virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci',
  'failover', 'net_failover', 'virtio_net', 'virtio_blk',
] as const;
/** Carried when the kernel has them (vhost-user-fs guests). */
export const OPTIONAL_GUEST_MODULES = ['fuse', 'virtiofs'] as const;

/** Printed by the guest shell once the modules are loaded and it reads commands. */
export const GUEST_READY = 'VL-READY';
/** `VL-BEGIN <id>` precedes a command's output; `VL-END <id> <rc>` follows it. */
export const GUEST_BEGIN = 'VL-BEGIN';
export const GUEST_END = 'VL-END';
/** Printed for each module that fails to load. */
export const GUEST_MODFAIL = 'VL-MODFAIL';

const BUSYBOX = '/bin/busybox';

export interface GuestKernel { version: string; path: string }

export interface GuestImage {
  kernel: string;
  initrd: string;
  kernelVersion: string;
  /** Modules packed into the initramfs, in load order. */
  modules: string[];
  /** False when the initramfs was just built, true when it came from the cache. */
  cached: boolean;
}

export interface GuestImageOptions {
  /** Kernel version (a directory of /lib/modules with a /boot/vmlinuz-<version>); default: env VHOST_LENS_KVER or the newest. */
  kernelVersion?: string;
  /** Cache directory; default env VHOST_LENS_CACHE or ~/.cache/vhost-lens. */
  cacheDir?: string;
}

export function guestCacheDir(): string {
  return process.env.VHOST_LENS_CACHE || join(homedir(), '.cache', 'vhost-lens');
}

/** The guest kernel: /boot/vmlinuz-<version> with a matching /lib/modules/<version>. */
export function findGuestKernel(version = process.env.VHOST_LENS_KVER): GuestKernel {
  const hint = 'run scripts/setup.sh (Debian package linux-image-amd64)';
  if (version) {
    const path = `/boot/vmlinuz-${version}`;
    if (!existsSync(path) || !existsSync(`/lib/modules/${version}`)) throw new Error(`guest kernel ${path} or /lib/modules/${version} not found: ${hint}`);
    return { version, path };
  }
  let versions: string[] = [];
  try { versions = readdirSync('/lib/modules').filter((v) => existsSync(`/boot/vmlinuz-${v}`)); } catch { /* none */ }
  if (versions.length === 0) throw new Error(`guest kernel not found (no /boot/vmlinuz-* with /lib/modules/*): ${hint}`);
  versions.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const v = versions[versions.length - 1];
  return { version: v, path: `/boot/vmlinuz-${v}` };
}

/** The guest's /init: load modules, quiet the kernel, bring up lo, then serve the line-oriented shell on the console. */
export function guestInitScript(modules: readonly string[]): string {
  return `#!/bin/sh
# Vhost Lens guest init: loads virtio drivers, then runs one console command per line.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo 1 > /proc/sys/kernel/printk
for m in ${modules.join(' ')}; do
  insmod /lib/modules/$m.ko 2>/dev/null || echo "${GUEST_MODFAIL} $m"
done
ip link set lo up
stty -echo 2>/dev/null
echo "${GUEST_READY}"
# Each input line is "<id> <command>"; output is framed by ${GUEST_BEGIN} <id> / ${GUEST_END} <id> <rc>.
while IFS= read -r line; do
  id=\${line%% *}
  cmd=\${line#* }
  echo "${GUEST_BEGIN} $id"
  sh -c "$cmd" </dev/null 2>&1
  echo "${GUEST_END} $id $?"
done
poweroff -f
`;
}

/** Path of a kernel module file for `kver`, or undefined when the kernel does not have it. */
function modulePath(kver: string, name: string): string | undefined {
  try {
    const p = execFileSync('modinfo', ['-k', kver, '-n', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    return p && existsSync(p) ? p : undefined;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new Error('modinfo not found: run scripts/setup.sh (Debian package kmod)');
    return undefined;
  }
}

/** True when the ELF file has no PT_INTERP program header (statically linked). */
function isStaticElf(buf: Buffer): boolean {
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46 || buf[4] !== 2) return false;
  const phoff = Number(buf.readBigUInt64LE(0x20));
  const phentsize = buf.readUInt16LE(0x36);
  const phnum = buf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    if (buf.readUInt32LE(phoff + i * phentsize) === 3) return false; // PT_INTERP
  }
  return true;
}

// ---- cpio "newc" writer (the initramfs format), so the image owns uid 0 and a /dev/console node.

interface CpioEntry { name: string; mode: number; data?: Buffer; rdev?: [number, number] }

function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let size = 0;
  const push = (b: Buffer): void => { parts.push(b); size += b.length; };
  const pad = (): void => { if (size % 4) push(Buffer.alloc(4 - (size % 4))); };
  const hex = (n: number): string => n.toString(16).padStart(8, '0');
  let ino = 1;
  for (const e of [...entries, { name: 'TRAILER!!!', mode: 0 }]) {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(e.name + '\0');
    const isDir = (e.mode & 0o170000) === 0o040000;
    const fields = [ino++, e.mode, 0, 0, isDir ? 2 : 1, 0, data.length, 0, 0, e.rdev?.[0] ?? 0, e.rdev?.[1] ?? 0, name.length, 0];
    push(Buffer.from('070701' + fields.map(hex).join(''), 'ascii'));
    push(name); pad();
    push(data); pad();
  }
  return Buffer.concat(parts, size);
}

function buildInitramfs(busybox: Buffer, applets: string[], init: string, modules: { name: string; path: string }[]): Buffer {
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>(['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'tmp', 'mnt', 'run', 'root', 'etc', 'lib', 'lib/modules']);
  for (const a of applets) { const d = a.split('/').slice(0, -1); for (let i = 1; i <= d.length; i++) dirs.add(d.slice(0, i).join('/')); }
  for (const d of [...dirs].sort()) entries.push({ name: d, mode: d === 'tmp' ? 0o041777 : 0o040755 });
  entries.push({ name: 'dev/console', mode: 0o020600, rdev: [5, 1] });
  entries.push({ name: 'bin/busybox', mode: 0o100755, data: busybox });
  for (const a of applets) {
    if (a === 'bin/busybox') continue; // busybox lists itself; never link it onto itself
    entries.push({ name: a, mode: 0o120777, data: Buffer.from('/bin/busybox') });
  }
  for (const m of modules) entries.push({ name: `lib/modules/${m.name}.ko`, mode: 0o100644, data: readFileSync(m.path) });
  entries.push({ name: 'init', mode: 0o100755, data: Buffer.from(init) });
  return gzipSync(cpioNewc(entries), { level: 1 });
}

/**
 * The kernel and a cached busybox initramfs for it. The cache key is the kernel version plus a hash of
 * the init script, the module list (with file sizes) and the busybox binary's identity, so the image is
 * rebuilt only when one of them changes; it is written under a temporary name and renamed into place, so
 * concurrent builders never expose a partial file.
 */
export function ensureGuestImage(opts: GuestImageOptions = {}): GuestImage {
  const kernel = findGuestKernel(opts.kernelVersion);
  const kver = kernel.version;
  const modules: { name: string; path: string }[] = [];
  for (const name of GUEST_MODULES) {
    const p = modulePath(kver, name);
    if (!p) throw new Error(`kernel module ${name} not found for ${kver} (modinfo -k ${kver} -n ${name}): run scripts/setup.sh (Debian package linux-image-amd64)`);
    modules.push({ name, path: p });
  }
  for (const name of OPTIONAL_GUEST_MODULES) {
    const p = modulePath(kver, name);
    if (p) modules.push({ name, path: p });
  }
  if (modules.some((m) => /\.(xz|zst|gz)$/.test(m.path))) {
    throw new Error(`compressed kernel modules are not supported by the guest's insmod: ${modules.map((m) => m.path).join(', ')}`);
  }
  if (!existsSync(BUSYBOX)) throw new Error(`busybox not found at ${BUSYBOX}: run scripts/setup.sh (Debian package busybox-static)`);
  const bbStat = statSync(BUSYBOX);
  const init = guestInitScript(modules.map((m) => m.name));

  const h = createHash('sha256');
  h.update(init);
  for (const m of modules) h.update(`\0${m.name}\0${m.path}\0${statSync(m.path).size}`);
  h.update(`\0busybox\0${bbStat.size}\0${bbStat.mtimeMs}`);
  const key = `${kver}-${h.digest('hex').slice(0, 16)}`;
  const dir = opts.cacheDir ?? guestCacheDir();
  const initrd = join(dir, `initramfs-${key}.cpio.gz`);
  const result = { kernel: kernel.path, initrd, kernelVersion: kver, modules: modules.map((m) => m.name) };
  if (existsSync(initrd)) return { ...result, cached: true };

  const busybox = readFileSync(BUSYBOX);
  if (!isStaticElf(busybox)) throw new Error(`${BUSYBOX} is not a static binary: run scripts/setup.sh (Debian package busybox-static)`);
  const applets = execFileSync(BUSYBOX, ['--list-full'], { encoding: 'utf8' }).split('\n').map((s) => s.trim()).filter(Boolean);
  const image = buildInitramfs(busybox, applets, init, modules);
  mkdirSync(dir, { recursive: true });
  const tmp = `${initrd}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    writeFileSync(tmp, image);
    renameSync(tmp, initrd);
  } catch (e) {
    try { unlinkSync(tmp); } catch { /* not created */ }
    throw e;
  }
  return { ...result, cached: false };
}
