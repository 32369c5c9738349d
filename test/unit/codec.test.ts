// decodeMessage/encodeMessage: field decoding per layout and the typed problem for every kind of malformed message.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeMessage, encodeMessage, parseHeader, headerProblems, nameOf, MAX_PAYLOAD, type ProblemCode, type DecodedMessage,
} from '../../core/protocol/codec';
import type { DecodeContext } from '../../core/protocol/payloads';
import { msg, msgCode, header, payload, type MessageBuilder } from '../helpers/wire';

const decode = (b: MessageBuilder, ctx: DecodeContext = {}): DecodedMessage => decodeMessage(b.raw(), ctx);
const codes = (d: DecodedMessage): ProblemCode[] => d.problems.map((p) => p.code);
/** Exactly these problem codes (order-insensitive). */
function hasOnly(d: DecodedMessage, ...want: ProblemCode[]): void {
  assert.deepEqual([...codes(d)].sort(), [...want].sort(), JSON.stringify(d.problems));
}

const REGION = { gpa: 0n, size: 0x10000000n, uva: 0x7efc03fff000n };
const REGION2 = { gpa: 0x100000000n, size: 0x10000000n, uva: 0x7efc13fff000n, offset: 0x10000000n };

describe('header', () => {
  test('parseHeader reads request, flags, size (host order = little-endian)', () => {
    const h = parseHeader(header(11, 0x5, 8));
    assert.deepEqual(h, { request: 11, flags: 5, size: 8, version: 1, reply: true, needReply: false });
    assert.equal(parseHeader(new Uint8Array(11)), undefined);
    assert.deepEqual(parseHeader(header(0xffffffff, 0x9, 0xffffffff)), {
      request: 0xffffffff, flags: 9, size: 0xffffffff, version: 1, reply: false, needReply: true,
    });
  });

  test('parseHeader honours a subarray offset', () => {
    const buf = new Uint8Array(20);
    buf.set(header(2, 1, 8), 5);
    assert.equal(parseHeader(buf.subarray(5))?.request, 2);
  });

  test('headerProblems: clean header has none', () => assert.deepEqual(headerProblems(parseHeader(header(1, 1, 0))!), []));

  test('truncated header', () => {
    for (const n of [0, 1, 11]) {
      const d = decodeMessage({ channel: 'main', from: 'frontend', header: new Uint8Array(n), payload: new Uint8Array(0), fdCount: 0 });
      hasOnly(d, 'truncated-header');
      assert.equal(d.code, -1);
      assert.equal(d.name, 'TRUNCATED');
    }
  });

  test('bad version: 0, 2 and 3 are rejected, the message is still decoded', () => {
    for (const v of [0, 2, 3]) {
      const d = decode(msg('SET_FEATURES').u64(1).version(v));
      hasOnly(d, 'bad-version');
      assert.deepEqual(d.payload, { features: 1n });
    }
  });

  test('reserved flag bits', () => {
    for (const bit of [0x10, 0x80, 0x100, 0x80000000]) {
      const d = decode(msg('GET_FEATURES').flags(0x1 | bit));
      hasOnly(d, 'reserved-flags');
      assert.match(d.problems[0].message, new RegExp(bit.toString(16)));
    }
  });

  test('size over 0x1000 is reported (and still decoded)', () => {
    const data = new Uint8Array(MAX_PAYLOAD + 1 - 12);
    const d = decode(msg('SET_CONFIG').payload(payload().config({ data: data.subarray(0, 256) }).zeros(data.byteLength - 256)));
    assert.ok(codes(d).includes('size-too-large'), JSON.stringify(d.problems));
    assert.equal(d.size, MAX_PAYLOAD + 1);
    // exactly 0x1000 is fine
    const ok = decode(msg('CREATE_CRYPTO_SESSION').payload(new Uint8Array(MAX_PAYLOAD)));
    hasOnly(ok);
    // a lying header claiming 4 GiB
    const huge = decode(msg('GET_FEATURES').size(0xffffffff));
    assert.ok(codes(huge).includes('size-too-large'));
    assert.ok(codes(huge).includes('truncated-payload'));
  });
});

describe('lying size', () => {
  test('header says more than the payload: truncated-payload', () => {
    const d = decode(msg('SET_FEATURES').u64(0x140000046n).size(16));
    assert.ok(codes(d).includes('truncated-payload'), JSON.stringify(d.problems));
    assert.match(d.problems[0].message, /16 payload bytes, 8 arrived/);
  });

  test('header says less than the payload: the excess is an error, not a truncation', () => {
    const d = decode(msg('SET_FEATURES').u64(0x140000046n).size(4));
    assert.ok(codes(d).includes('trailing-bytes'), JSON.stringify(d.problems));
    const excess = d.problems.find((p) => p.code === 'trailing-bytes')!;
    assert.equal(excess.severity, 'error');
    assert.match(excess.message, /4 payload bytes, 8 arrived/);
    // The peer reads only the declared 4 bytes: too few for the u64.
    assert.ok(codes(d).includes('truncated-payload'));
  });

  test('header says 0 for a u64 request with 8 bytes behind it: decoded as the peer sees it (nothing)', () => {
    const d = decode(msg('SET_STATUS').u64(15).size(0));
    assert.ok(codes(d).includes('trailing-bytes'));
    assert.ok(codes(d).includes('truncated-payload'));
    assert.equal(d.payload, undefined);
  });

  test('payload shorter than the layout with an honest header: truncated-payload naming the layout', () => {
    const d = decode(msg('SET_VRING_ADDR').payload(payload().u32(0).u32(0).u64(0x1000)));
    hasOnly(d, 'truncated-payload');
    assert.match(d.problems[0].message, /SET_VRING_ADDR: vring address needs 24 bytes, has 16/);
    assert.equal(d.payload, undefined);
  });

  test('payload longer than the layout with an honest header: trailing-bytes warning', () => {
    const d = decode(msg('SET_VRING_NUM').payload(payload().vringState(0, 256).u32(7)));
    hasOnly(d, 'trailing-bytes');
    assert.equal(d.problems[0].severity, 'warning');
    assert.deepEqual(d.payload, { index: 0, num: 256 });
  });

  test('a payload on a message that has none', () => {
    hasOnly(decode(msg('GET_FEATURES').u64(0)), 'trailing-bytes');
  });

  test('IOTLB: 32 bytes (C padding) and 26 bytes (packed) are fine, more is reported', () => {
    const m = { iova: 0x1000n, size: 0x1000n, uaddr: 0x7f0000001000n, perm: 3, type: 2 };
    hasOnly(decode(msg('IOTLB_MSG').payload(payload().iotlb(m))));
    hasOnly(decode(msg('IOTLB_MSG').payload(payload().iotlb(m, { packed: true }))));
    const d = decode(msg('IOTLB_MSG').payload(payload().iotlb(m).zeros(68)));
    hasOnly(d, 'trailing-bytes');
    assert.match(d.problems[0].message, /68 byte/);
    hasOnly(decode(msg('IOTLB_MSG').payload(payload().u64(1).u64(2).u64(3).u8(3))), 'truncated-payload');
  });

  test('shmem config is fixed size: all 256 sizes on the wire, fewer is truncated', () => {
    hasOnly(decode(msg('GET_SHMEM_CONFIG').reply().payload(payload().shmemConfig([0x1000n]))));
    const d = decode(msg('GET_SHMEM_CONFIG').reply().payload(payload().u32(2).u32(0).u64(0x1000).u64(0x2000)));
    hasOnly(d, 'truncated-payload');
    assert.match(d.problems[0].message, /shared memory config needs/);
  });

  test('inflight: 24 bytes (C padding) and 20 bytes (packed) are fine, more is reported', () => {
    const i = { mmapSize: 0x1000n, mmapOffset: 0n, numQueues: 1, queueSize: 128 };
    hasOnly(decode(msg('SET_INFLIGHT_FD').payload(payload().inflight(i)).fds(1, 'memfd')));
    hasOnly(decode(msg('SET_INFLIGHT_FD').payload(payload().inflight(i, { packed: true })).fds(1, 'memfd')));
    hasOnly(decode(msg('SET_INFLIGHT_FD').payload(payload().inflight(i).zeros(8)).fds(1, 'memfd')), 'trailing-bytes');
  });
});

describe('fds', () => {
  test('fds on a message that takes none', () => {
    hasOnly(decode(msg('GET_FEATURES').fds(1)), 'unexpected-fds');
    hasOnly(decode(msg('SET_VRING_NUM').payload(payload().vringState(0, 128)).fds(2)), 'unexpected-fds');
    hasOnly(decode(msg('REM_MEM_REG').payload(payload().singleRegion(REGION)).fds(1, 'memfd')), 'unexpected-fds');
    // replies too: GET_FEATURES reply with an fd
    hasOnly(decode(msg('GET_FEATURES').reply().u64(1).fds(1)), 'unexpected-fds');
  });

  test('SET_VRING_KICK without the no-fd bit and without an fd: missing-fds', () => {
    const d = decode(msg('SET_VRING_KICK').payload(payload().vringFd(0)));
    hasOnly(d, 'missing-fds');
    assert.match(d.problems[0].message, /no-fd bit clear/);
  });

  test('SET_VRING_KICK with the no-fd bit and an fd: unexpected-fds; with the bit and none: fine', () => {
    hasOnly(decode(msg('SET_VRING_KICK').payload(payload().vringFd(0, { noFd: true })).fds(1)), 'unexpected-fds');
    const d = decode(msg('SET_VRING_CALL').payload(payload().vringFd(3, { noFd: true })));
    hasOnly(d);
    assert.deepEqual(d.payload, { index: 3, noFd: true });
  });

  test('SET_MEM_TABLE with 2 regions and 1 fd: missing-fds', () => {
    const d = decode(msg('SET_MEM_TABLE').payload(payload().memTable([REGION, REGION2])).fds(1, 'memfd'));
    hasOnly(d, 'missing-fds');
    assert.match(d.problems[0].message, /carries 1 fd\(s\), expected 2/);
  });

  test('too many fds', () => {
    hasOnly(decode(msg('SET_BACKEND_REQ_FD').fds(2, 'socket')), 'too-many-fds');
    hasOnly(decode(msg('SET_LOG_BASE').payload(payload().logBase(0x1000, 0)).fds(2, 'memfd')), 'too-many-fds');
    hasOnly(decode(msg('SET_MEM_TABLE').payload(payload().memTable([REGION, REGION2])).fds(3, 'memfd')), 'too-many-fds');
    hasOnly(decode(msg('SET_VRING_KICK').payload(payload().vringFd(0)).fds(2)), 'too-many-fds');
    hasOnly(decode(msg('ADD_MEM_REG').payload(payload().singleRegion(REGION)).fds(9, 'memfd')), 'too-many-fds');
    hasOnly(decode(msg('GET_INFLIGHT_FD').reply().payload(payload().inflight({ mmapSize: 1, mmapOffset: 0, numQueues: 1, queueSize: 1 })).fds(2)), 'too-many-fds');
  });

  test('missing the one fd', () => {
    hasOnly(decode(msg('SET_LOG_FD')), 'missing-fds');
    hasOnly(decode(msg('ADD_MEM_REG').payload(payload().singleRegion(REGION))), 'missing-fds');
    hasOnly(decode(msg('BACKEND_SHMEM_MAP').payload(payload().shmemMap({ shmid: 0, fdOffset: 0, shmOffset: 0, len: 0x1000, flags: 1 }))), 'missing-fds');
  });

  test('no fd check on a payload that could not be decoded (the rule reads the payload)', () => {
    hasOnly(decode(msg('SET_VRING_KICK').payload(new Uint8Array(4))), 'truncated-payload');
  });
});

describe('codes and direction', () => {
  test('unknown codes on each channel', () => {
    for (const [channel, code] of [['main', 0], ['main', 45], ['main', 0x7fffffff], ['backend', 0], ['backend', 13], ['backend', 44]] as const) {
      const d = decode(msgCode(channel, code).sentBy(channel === 'main' ? 'frontend' : 'backend'));
      hasOnly(d, 'unknown-request');
      assert.equal(d.name, `UNKNOWN_${code}`);
      assert.equal(d.spec, undefined);
      assert.equal(nameOf(channel, code), `UNKNOWN_${code}`);
      assert.match(d.problems[0].message, channel === 'main' ? /front-end request code/ : /back-end request code/);
    }
  });

  test('wrong direction: a request from the back-end on the main channel', () => {
    const d = decode(msg('SET_FEATURES').u64(1).sentBy('backend'));
    hasOnly(d, 'wrong-direction');
    assert.match(d.problems[0].message, /request SET_FEATURES sent by the backend, expected the frontend/);
  });

  test('wrong direction: a reply from the front-end on the main channel, a request from the front-end on the back-end channel', () => {
    hasOnly(decode(msg('GET_FEATURES').reply().u64(1).sentBy('frontend')), 'wrong-direction');
    hasOnly(decode(msg('BACKEND_CONFIG_CHANGE_MSG').sentBy('frontend')), 'wrong-direction');
    hasOnly(decode(msg('BACKEND_CONFIG_CHANGE_MSG').reply().u64(0).sentBy('backend')), 'wrong-direction');
    hasOnly(decode(msg('BACKEND_CONFIG_CHANGE_MSG').reply().u64(0)));
  });
});

describe('payload fields and semantic checks', () => {
  test('vring address: order on the wire is desc, used, avail', () => {
    const d = decode(msg('SET_VRING_ADDR').payload(payload().vringAddr({ index: 0, desc: 0x7efc13fdc000n, used: 0x7efc13fdd000n, avail: 0x7efc13fdc800n, log: 0xffde000n })));
    hasOnly(d);
    assert.deepEqual(d.payload, { index: 0, flags: 0, desc: 0x7efc13fdc000n, used: 0x7efc13fdd000n, avail: 0x7efc13fdc800n, log: 0xffde000n });
  });

  test('vring address misalignment and unknown flags', () => {
    const bad = (a: Partial<{ desc: bigint; used: bigint; avail: bigint; flags: number }>): DecodedMessage =>
      decode(msg('SET_VRING_ADDR').payload(payload().vringAddr({ index: 0, desc: 0x1000n, used: 0x2000n, avail: 0x3000n, ...a })));
    let d = bad({ desc: 0x1008n });
    hasOnly(d, 'bad-field');
    assert.match(d.problems[0].message, /descriptor table 0x1008 is not 16-byte aligned/);
    d = bad({ used: 0x2002n });
    hasOnly(d, 'bad-field');
    assert.match(d.problems[0].message, /used ring 0x2002 is not 4-byte aligned/);
    d = bad({ avail: 0x3001n });
    hasOnly(d, 'bad-field');
    assert.match(d.problems[0].message, /avail ring 0x3001 is not 2-byte aligned/);
    hasOnly(bad({ desc: 0x1001n, used: 0x2001n, avail: 0x3001n }), 'bad-field', 'bad-field', 'bad-field');
    hasOnly(bad({ flags: 1 }));
    hasOnly(bad({ flags: 2 }), 'bad-field');
  });

  test('nregions > 8', () => {
    const regions = Array.from({ length: 9 }, (_, i) => ({ gpa: BigInt(i) << 28n, size: 0x10000000n, uva: 0x7f0000000000n + (BigInt(i) << 28n) }));
    const d = decode(msg('SET_MEM_TABLE').payload(payload().memTable(regions)).fds(8, 'memfd'));
    hasOnly(d, 'bad-field');
    assert.match(d.problems[0].message, /nregions 9 exceeds 8/);
  });

  test('nregions larger than the regions present', () => {
    const d = decode(msg('SET_MEM_TABLE').payload(payload().memTable([REGION], { nregions: 2 })).fds(2, 'memfd'));
    hasOnly(d, 'bad-field');
    assert.match(d.problems[0].message, /nregions 2 but only 1 regions present/);
  });

  test('a huge nregions never drives the loop past the bytes', () => {
    const d = decode(msg('SET_MEM_TABLE').payload(payload().memTable([REGION], { nregions: 0xffffffff })).fds(1, 'memfd'));
    assert.equal((d.payload as { regions: unknown[] }).regions.length, 1);
    assert.ok(codes(d).includes('bad-field'));
    assert.ok(codes(d).includes('too-many-fds') === false);
  });

  test('memory region checks: zero size, 64-bit overflow', () => {
    hasOnly(decode(msg('ADD_MEM_REG').payload(payload().singleRegion({ gpa: 0, size: 0, uva: 0x1000 })).fds(1, 'memfd')), 'bad-field');
    const d = decode(msg('SET_MEM_TABLE').payload(payload().memTable([{ gpa: 0xfffffffffffff000n, size: 0x2000n, uva: 0x1000n }])).fds(1, 'memfd'));
    hasOnly(d, 'bad-field');
    assert.match(d.problems[0].message, /region 0: guest_phys_addr \+ memory_size overflows/);
  });

  test('memory regions with XEN_MMAP carry flags and domid', () => {
    const d = decode(msg('ADD_MEM_REG').payload(payload().singleRegion({ ...REGION, xenFlags: 1, domid: 9 }, { xen: true })).fds(1, 'memfd'), { xenMmap: true });
    hasOnly(d);
    assert.deepEqual(d.payload, { padding: 0n, guestPhysAddr: 0n, memorySize: 0x10000000n, userspaceAddr: 0x7efc03fff000n, mmapOffset: 0n, xenMmapFlags: 1, domid: 9 });
    // the same bytes without XEN_MMAP negotiated: 8 bytes too many
    hasOnly(decode(msg('ADD_MEM_REG').payload(payload().singleRegion(REGION, { xen: true })).fds(1, 'memfd')), 'trailing-bytes');
  });

  test('config size mismatch, oversize config, unknown config flags', () => {
    let d = decode(msg('SET_CONFIG').payload(payload().config({ size: 60, data: new Uint8Array(57) })));
    hasOnly(d, 'bad-field');
    assert.match(d.problems[0].message, /config size field 60 but 57 data bytes/);
    d = decode(msg('GET_CONFIG').reply().payload(payload().config({ size: 8, data: new Uint8Array(4) })));
    hasOnly(d, 'bad-field');
    d = decode(msg('SET_CONFIG').payload(payload().config({ data: new Uint8Array(300) })));
    hasOnly(d, 'bad-field');
    assert.match(d.problems[0].message, /config size 300 exceeds 256/);
    hasOnly(decode(msg('SET_CONFIG').payload(payload().config({ flags: 4, data: [1] }))), 'bad-field');
    hasOnly(decode(msg('SET_CONFIG').payload(payload().config({ flags: 3, data: [1] }))));
  });

  test('vring fd u64: index, no-fd bit, reserved bits', () => {
    assert.deepEqual(decode(msg('SET_VRING_ERR').payload(payload().vringFd(255)).fds(1)).payload, { index: 255, noFd: false });
    const d = decode(msg('SET_VRING_ERR').payload(payload().vringFd(1, { reserved: 0x200n })).fds(1));
    hasOnly(d, 'bad-field');
    assert.deepEqual(d.payload, { index: 1, noFd: false, reserved: 0x200n });
    assert.deepEqual(encodeMessage({ channel: 'main', code: 14, payload: d.payload }), msg('SET_VRING_ERR').payload(payload().vringFd(1, { reserved: 0x200n })).bytes());
  });

  test('vring base: split ring with reserved bits; packed ring wrap counters', () => {
    hasOnly(decode(msg('GET_VRING_BASE').reply().payload(payload().vringState(0, 0x10000))), 'bad-field');
    hasOnly(decode(msg('SET_VRING_BASE').payload(payload().vringState(0, 0xffff))));
    const d = decode(msg('SET_VRING_BASE').payload(payload().packedBase(1, { availIdx: 0x1234, availWrap: true, usedIdx: 0x7fff, usedWrap: true })), { packed: true });
    hasOnly(d);
    assert.deepEqual(d.payload, { index: 1, num: 0xffff9234, availIdx: 0x1234, availWrap: true, usedIdx: 0x7fff, usedWrap: true });
  });

  test('GET_VRING_BASE request num is not checked (QEMU sends a stale num)', () => {
    hasOnly(decode(msg('GET_VRING_BASE').payload(payload().vringState(1, 51392))));
  });

  test('IOTLB: unknown type and permission', () => {
    const d = decode(msg('BACKEND_IOTLB_MSG').payload(payload().iotlb({ iova: 0, size: 0, uaddr: 0, perm: 4, type: 0 })));
    hasOnly(d, 'bad-field', 'bad-field');
  });

  test('device state params: direction and phase', () => {
    hasOnly(decode(msg('SET_DEVICE_STATE_FD').payload(payload().deviceState(1, 0)).fds(1, 'pipe')));
    hasOnly(decode(msg('SET_DEVICE_STATE_FD').payload(payload().deviceState(2, 1)).fds(1, 'pipe')), 'bad-field', 'bad-field');
  });

  test('shared object UUID text', () => {
    const d = decode(msg('GET_SHARED_OBJECT').payload(payload().uuid('0b6bc2ba-9a1b-4f0e-8f27-3c2d1e0a9b8c')));
    assert.deepEqual(d.payload, { uuid: '0b6bc2ba-9a1b-4f0e-8f27-3c2d1e0a9b8c' });
  });

  test('shmem config: nregions over 256', () => {
    hasOnly(decode(msg('GET_SHMEM_CONFIG').reply().payload(payload().shmemConfig([1n], { nregions: 257 }))), 'bad-field');
  });

  test('vring area: index and no-fd bit', () => {
    const d = decode(msg('BACKEND_VRING_HOST_NOTIFIER_MSG').payload(payload().vringArea({ index: 2, noFd: true, size: 0x1000, offset: 0 })));
    hasOnly(d);
    assert.deepEqual(d.payload, { index: 2, noFd: true, size: 0x1000n, offset: 0n });
  });
});

describe('replies', () => {
  test('an ack reply is a u64 (0 = success)', () => {
    const d = decode(msg('SET_MEM_TABLE').reply().u64(0));
    hasOnly(d);
    assert.deepEqual(d.payload, { ack: 0n });
  });

  test('an ack reply with no payload is truncated', () => {
    hasOnly(decode(msg('SET_BACKEND_REQ_FD').reply()), 'truncated-payload');
  });

  test('postcopy SET_MEM_TABLE reply carries regions; ADD_MEM_REG reply one region', () => {
    const d = decode(msg('SET_MEM_TABLE').reply().payload(payload().memTable([REGION])));
    hasOnly(d);
    assert.equal((d.payload as { nregions: number }).nregions, 1);
    const a = decode(msg('ADD_MEM_REG').reply().payload(payload().singleRegion(REGION)));
    hasOnly(a);
    assert.equal((a.payload as { userspaceAddr: bigint }).userspaceAddr, REGION.uva);
  });

  test('GET_VRING_BASE reply decodes its layout, not an ack', () => {
    assert.deepEqual(decode(msg('GET_VRING_BASE').reply().payload(payload().vringState(0, 58))).payload, { index: 0, num: 58 });
  });

  test('encodeMessage sets REPLY and NEED_REPLY bits', () => {
    const b = encodeMessage({ channel: 'main', code: 37, needReply: true, payload: { padding: 0n, guestPhysAddr: 0n, memorySize: 1n, userspaceAddr: 2n, mmapOffset: 3n } });
    assert.deepEqual(parseHeader(b), { request: 37, flags: 9, size: 40, version: 1, reply: false, needReply: true });
    assert.deepEqual(encodeMessage({ channel: 'main', code: 1, reply: true, payload: { features: 5n } }), msg('GET_FEATURES').reply().u64(5).bytes());
    assert.deepEqual(encodeMessage({ channel: 'main', code: 99, raw: new Uint8Array([1, 2]) }), msgCode('main', 99).payload(new Uint8Array([1, 2])).bytes());
    assert.throws(() => encodeMessage({ channel: 'backend', code: 13 }), /unknown backend request 13/);
  });
});

describe('decodeMessage never throws', () => {
  test('odd buffers: offset subarrays, empty everything, huge claims', () => {
    const big = new Uint8Array(64);
    big.set(header(5, 1, 40), 3);
    const d = decodeMessage({ channel: 'main', from: 'frontend', header: big.subarray(3, 15), payload: big.subarray(15, 55), fdCount: 0 });
    assert.equal(d.name, 'SET_MEM_TABLE');
    assert.ok(!codes(d).includes('decoder-fault'));
    for (const code of [0, 1, 5, 24, 44]) {
      const e = decodeMessage({ channel: 'main', from: 'backend', header: header(code, 0xffffffff, 0xffffffff), payload: new Uint8Array(0), fdCount: 300 });
      assert.ok(e.problems.length > 0);
      assert.ok(!codes(e).includes('decoder-fault'));
    }
  });
});
