// JSON-safe views of engine values: bigint -> "0x…", bytes -> hex; the form that crosses process boundaries.
import { hex } from '../protocol/bytes';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export function toJson(v: unknown, maxBytes = 4096): Json {
  if (v === null || v === undefined) return null;
  if (typeof v === 'bigint') return `0x${v.toString(16)}`;
  if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') return v;
  if (v instanceof Uint8Array) return hex(v, maxBytes);
  if (Array.isArray(v)) return v.map((x) => toJson(x, maxBytes));
  if (v instanceof Map) return Object.fromEntries([...v.entries()].map(([k, x]) => [String(k), toJson(x, maxBytes)]));
  if (typeof v === 'object') {
    const out: Record<string, Json> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) if (x !== undefined) out[k] = toJson(x, maxBytes);
    return out;
  }
  return String(v);
}

/** Parse a "0x…" string (or decimal) back to bigint. */
export function parseU64(s: string | number | bigint): bigint {
  return typeof s === 'bigint' ? s : BigInt(s);
}
