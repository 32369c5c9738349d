// Representative valid payloads for every payload layout the message table uses (values from the reference traces).
import type { DecodeContext } from '../../core/protocol/payloads';
import { payload, type PayloadBuilder } from './wire';

const REGION = { gpa: 0n, size: 0x10000000n, uva: 0x7efc03fff000n, offset: 0n };
const REGION_HI = { gpa: 0x100000000n, size: 0x40000000n, uva: 0x7efc43fff000n, offset: 0x10000000n };

/**
 * Keyed by `PayloadCodec.layout`. A layout added to the table without an example here fails the table tests,
 * so every row keeps a round-trip test.
 */
export const EXAMPLES: Record<string, (ctx: DecodeContext) => PayloadBuilder> = {
  'none': () => payload(),
  'u64': () => payload().u64(0x175007e46n),
  'u64 (REPLY_ACK: 0 = success)': () => payload().u64(0),
  'vring state': () => payload().vringState(0, 128),
  'vring base': (ctx) => (ctx.packed
    ? payload().packedBase(1, { availIdx: 58, availWrap: true, usedIdx: 57, usedWrap: false })
    : payload().vringState(0, 58)),
  'vring address': () => payload().vringAddr({ index: 0, desc: 0x7efc13fdc000n, used: 0x7efc13fdd000n, avail: 0x7efc13fdc800n, log: 0xffde000n }),
  'u64 (vring index, bit 8 = no fd)': () => payload().vringFd(1),
  'multiple memory regions': (ctx) => payload().memTable([
    { ...REGION, xenFlags: 1, domid: 7 }, { ...REGION_HI, xenFlags: 2, domid: 7 },
  ], { xen: ctx.xenMmap }),
  'single memory region': (ctx) => payload().singleRegion({ ...REGION, xenFlags: 1, domid: 3 }, { xen: ctx.xenMmap }),
  'log description': () => payload().logBase(0x2000, 0),
  'IOTLB message': () => payload().iotlb({ iova: 0xfee00000n, size: 0x1000n, uaddr: 0x7f0000001000n, perm: 3, type: 2 }),
  'device config space': () => payload().config({ offset: 0, flags: 0, data: Array.from({ length: 57 }, (_, i) => i) }),
  'crypto session': () => payload().bytes([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
  'userfaultfd reply': () => payload(),
  'inflight description': () => payload().inflight({ mmapSize: 0x10000, mmapOffset: 0, numQueues: 2, queueSize: 256 }),
  'shared object (UUID)': () => payload().uuid('0b6bc2ba-9a1b-4f0e-8f27-3c2d1e0a9b8c'),
  'device state transfer parameters': () => payload().deviceState(0, 0),
  'shared memory config': () => payload().shmemConfig([0x100000n, 0x200000n]),
  'vring area description': () => payload().vringArea({ index: 1, size: 0x1000n, offset: 0x3000n }),
  'shared memory mapping (VhostUserMMap)': () => payload().shmemMap({ shmid: 0, fdOffset: 0x1000n, shmOffset: 0x2000n, len: 0x1000n, flags: 3n }),
  'memory read request': () => payload().u64(0x1000).u64(0x40),
  'memory read reply': () => payload().bytes(new Uint8Array(0x40).fill(0xab)),
  'memory write request': () => payload().u64(0x1000).u64(4).bytes([0xde, 0xad, 0xbe, 0xef]),
};

export function examplePayload(layout: string, ctx: DecodeContext = {}): Uint8Array {
  const ex = EXAMPLES[layout];
  if (!ex) throw new Error(`no example payload for layout "${layout}": add one to test/helpers/wireExamples.ts`);
  return ex(ctx).build();
}
