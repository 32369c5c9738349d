// Little byte reader/writer over Uint8Array with bigint u64; the codec's only view of raw bytes (no Node APIs).

/** Thrown only inside payload decoders; the codec turns it into a typed problem, never lets it escape. */
export class Truncated extends Error {
  constructor(readonly needed: number, readonly have: number) {
    super(`needs ${needed} bytes, has ${have}`);
  }
}

export class Reader {
  private readonly view: DataView;
  pos = 0;
  constructor(readonly bytes: Uint8Array, start = 0) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = start;
  }
  get remaining(): number { return this.bytes.byteLength - this.pos; }
  private need(n: number): void {
    if (this.pos + n > this.bytes.byteLength) throw new Truncated(this.pos + n, this.bytes.byteLength);
  }
  u8(): number { this.need(1); return this.view.getUint8(this.pos++); }
  u16(): number { this.need(2); const v = this.view.getUint16(this.pos, true); this.pos += 2; return v; }
  u32(): number { this.need(4); const v = this.view.getUint32(this.pos, true); this.pos += 4; return v; }
  u64(): bigint { this.need(8); const v = this.view.getBigUint64(this.pos, true); this.pos += 8; return v; }
  take(n: number): Uint8Array { this.need(n); const v = this.bytes.subarray(this.pos, this.pos + n); this.pos += n; return v; }
  rest(): Uint8Array { const v = this.bytes.subarray(this.pos); this.pos = this.bytes.byteLength; return v; }
}

export class Writer {
  private buf: Uint8Array;
  private view: DataView;
  len = 0;
  constructor(capacity = 64) {
    this.buf = new Uint8Array(capacity);
    this.view = new DataView(this.buf.buffer);
  }
  private grow(n: number): void {
    if (this.len + n <= this.buf.byteLength) return;
    const next = new Uint8Array(Math.max(this.buf.byteLength * 2, this.len + n));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number): this { this.grow(1); this.view.setUint8(this.len, v); this.len += 1; return this; }
  u16(v: number): this { this.grow(2); this.view.setUint16(this.len, v, true); this.len += 2; return this; }
  u32(v: number): this { this.grow(4); this.view.setUint32(this.len, v >>> 0, true); this.len += 4; return this; }
  u64(v: bigint): this { this.grow(8); this.view.setBigUint64(this.len, BigInt.asUintN(64, v), true); this.len += 8; return this; }
  bytes(b: Uint8Array): this { this.grow(b.byteLength); this.buf.set(b, this.len); this.len += b.byteLength; return this; }
  zeros(n: number): this { this.grow(n); this.buf.fill(0, this.len, this.len + n); this.len += n; return this; }
  finish(): Uint8Array { return this.buf.slice(0, this.len); }
}

export function hex(bytes: Uint8Array, max = Infinity): string {
  let s = '';
  const n = Math.min(bytes.byteLength, max);
  for (let i = 0; i < n; i++) s += bytes[i].toString(16).padStart(2, '0');
  return n < bytes.byteLength ? `${s}…` : s;
}

export function fromHex(s: string): Uint8Array {
  const clean = s.replace(/[^0-9a-fA-F]/g, '');
  const out = new Uint8Array(clean.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.substr(i * 2, 2), 16);
  return out;
}

export const hex64 = (v: bigint): string => `0x${v.toString(16)}`;
