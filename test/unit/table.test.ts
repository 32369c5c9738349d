// The message table: unique keys per channel, names and old names, consistent columns, and a round trip for every row.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { MESSAGES, CATEGORIES, specFor, specByName, requester, otherSide, type MessageSpec } from '../../core/protocol/table';
import { decodeMessage, encodeMessage, payloadCodec } from '../../core/protocol/codec';
import { PROTOCOL_BIT, FEATURE_BIT } from '../../core/protocol/features';
import type { DecodeContext } from '../../core/protocol/payloads';
import { msgCode, fdCountFor } from '../helpers/wire';
import { examplePayload, EXAMPLES } from '../helpers/wireExamples';

const label = (m: MessageSpec): string => `${m.channel}:${m.code} ${m.name}`;

describe('table keys and names', () => {
  test('codes are unique per channel and names unique across the table', () => {
    for (const channel of ['main', 'backend'] as const) {
      const codes = MESSAGES.filter((m) => m.channel === channel).map((m) => m.code);
      assert.equal(new Set(codes).size, codes.length, `${channel} codes repeat`);
    }
    const names = MESSAGES.flatMap((m) => [m.name, ...(m.oldNames ?? [])]);
    assert.equal(new Set(names).size, names.length, 'a name or old name is used twice');
  });

  test('both channels are present and numbered as the spec numbers them', () => {
    const main = MESSAGES.filter((m) => m.channel === 'main').map((m) => m.code);
    const back = MESSAGES.filter((m) => m.channel === 'backend').map((m) => m.code);
    assert.deepEqual(main, Array.from({ length: 44 }, (_, i) => i + 1));
    assert.deepEqual(back, Array.from({ length: 12 }, (_, i) => i + 1));
  });

  test('channel + code is the key: back-end code 1 is BACKEND_IOTLB_MSG, main code 1 is GET_FEATURES', () => {
    assert.equal(specFor('main', 1)?.name, 'GET_FEATURES');
    assert.equal(specFor('backend', 1)?.name, 'BACKEND_IOTLB_MSG');
    assert.equal(specFor('backend', 3)?.name, 'BACKEND_VRING_HOST_NOTIFIER_MSG');
    assert.equal(specFor('main', 3)?.name, 'SET_OWNER');
    assert.equal(specFor('main', 0), undefined);
    assert.equal(specFor('main', 45), undefined);
    assert.equal(specFor('backend', 0), undefined);
    assert.equal(specFor('backend', 13), undefined);
  });

  test('every spec is found by its own name and by channel + code', () => {
    for (const m of MESSAGES) {
      assert.equal(specByName(m.name), m, m.name);
      assert.equal(specByName(`VHOST_USER_${m.name}`), m, m.name);
      assert.equal(specByName(m.name.toLowerCase()), m, m.name);
      assert.equal(specFor(m.channel, m.code), m, label(m));
    }
  });

  test('old names resolve (logs of older QEMU and DPDK say SLAVE)', () => {
    assert.equal(specByName('SET_SLAVE_REQ_FD')?.code, 21);
    assert.equal(specByName('SET_SLAVE_REQ_FD')?.name, 'SET_BACKEND_REQ_FD');
    assert.equal(specByName('VHOST_USER_SET_SLAVE_REQ_FD')?.name, 'SET_BACKEND_REQ_FD');
    assert.equal(specByName('SLAVE_IOTLB_MSG')?.name, 'BACKEND_IOTLB_MSG');
    assert.equal(specByName('SLAVE_IOTLB_MSG')?.channel, 'backend');
    assert.equal(specByName('vhost_user_slave_config_change_msg')?.name, 'BACKEND_CONFIG_CHANGE_MSG');
    assert.equal(specByName('SLAVE_VRING_HOST_NOTIFIER_MSG')?.code, 3);
    assert.equal(specByName('NO_SUCH_MESSAGE'), undefined);
  });

  test('requester: the front-end asks on the main socket, the back-end on its channel', () => {
    assert.equal(requester('main'), 'frontend');
    assert.equal(requester('backend'), 'backend');
    assert.equal(otherSide('frontend'), 'backend');
    assert.equal(otherSide('backend'), 'frontend');
  });
});

describe('table columns are consistent', () => {
  test('gates name real feature bits, categories exist, summaries are sentences', () => {
    for (const m of MESSAGES) {
      if (m.gate?.protocol) assert.ok(m.gate.protocol in PROTOCOL_BIT, `${label(m)} gate ${m.gate.protocol}`);
      if (m.gate?.feature) assert.ok(m.gate.feature in FEATURE_BIT, `${label(m)} gate ${m.gate.feature}`);
      assert.ok(m.category in CATEGORIES, `${label(m)} category ${m.category}`);
      assert.match(m.summary, /^[A-Z].*\.$/, `${label(m)} summary`);
    }
  });

  test('replies: `always` rows have a reply layout; requests the spec says need a reply are `always`', () => {
    for (const m of MESSAGES) if (m.replyRule === 'always') assert.ok(m.reply, `${label(m)} always replies but has no reply layout`);
    const always = ['GET_FEATURES', 'GET_VRING_BASE', 'GET_PROTOCOL_FEATURES', 'GET_QUEUE_NUM', 'IOTLB_MSG', 'GET_CONFIG',
      'CREATE_CRYPTO_SESSION', 'POSTCOPY_ADVISE', 'POSTCOPY_END', 'GET_INFLIGHT_FD', 'GET_MAX_MEM_SLOTS', 'GET_STATUS',
      'GET_SHARED_OBJECT', 'SET_DEVICE_STATE_FD', 'CHECK_DEVICE_STATE', 'GET_SHMEM_CONFIG'];
    assert.deepEqual(MESSAGES.filter((m) => m.channel === 'main' && m.replyRule === 'always').map((m) => m.name), always);
    assert.equal(specByName('SET_LOG_BASE')?.replyRule, 'conditional');
  });

  test('fd rules match the spec lists (messages carrying fds, replies carrying fds)', () => {
    const withFds = MESSAGES.filter((m) => m.fds !== 'none').map((m) => m.name).sort();
    assert.deepEqual(withFds, ['ADD_MEM_REG', 'BACKEND_SHMEM_MAP', 'BACKEND_VRING_HOST_NOTIFIER_MSG', 'GPU_SET_SOCKET',
      'SET_BACKEND_REQ_FD', 'SET_DEVICE_STATE_FD', 'SET_INFLIGHT_FD', 'SET_LOG_BASE', 'SET_LOG_FD', 'SET_MEM_TABLE',
      'SET_VRING_CALL', 'SET_VRING_ERR', 'SET_VRING_KICK']);
    const replyFds = MESSAGES.filter((m) => m.replyFds !== 'none').map((m) => m.name).sort();
    assert.deepEqual(replyFds, ['BACKEND_SHARED_OBJECT_LOOKUP', 'GET_INFLIGHT_FD', 'GET_SHARED_OBJECT', 'POSTCOPY_ADVISE', 'SET_DEVICE_STATE_FD']);
    // Payload-dependent rules need the field they read.
    for (const m of MESSAGES) {
      const ex = decodeMessage(msgCode(m.channel, m.code).payload(examplePayload(m.request.layout)).fds(1).raw()).payload ?? {};
      if (m.fds === 'per-region') assert.ok('nregions' in ex, `${label(m)} per-region without nregions`);
      if (m.fds === 'unless-nofd') assert.ok('noFd' in ex, `${label(m)} unless-nofd without noFd`);
    }
  });

  test('relay actions: memory fds kept for the memory table, the back-end channel followed, notifiers interposed', () => {
    const relay = Object.fromEntries(MESSAGES.filter((m) => m.relay).map((m) => [m.name, m.relay]));
    assert.deepEqual(relay, {
      SET_MEM_TABLE: 'keep-memory-fds', ADD_MEM_REG: 'keep-memory-fds', SET_BACKEND_REQ_FD: 'backend-channel',
      SET_VRING_KICK: 'notifier', SET_VRING_CALL: 'notifier', SET_VRING_ERR: 'notifier',
    });
    for (const m of MESSAGES) if (m.relay) assert.equal(m.channel, 'main', `${label(m)}: the relay acts on main-socket fds only`);
  });

  test('perVring rows decode an `index`', () => {
    for (const m of MESSAGES.filter((x) => x.perVring)) {
      const d = decodeMessage(msgCode(m.channel, m.code).payload(examplePayload(m.request.layout)).fds(fdCountFor(m.fds, { noFd: false })).raw());
      assert.equal(typeof d.payload?.index, 'number', label(m));
    }
  });

  test('every layout in the table has an example payload', () => {
    const layouts = new Set(MESSAGES.flatMap((m) => [m.request.layout, ...(m.reply ? [m.reply.layout] : [])]));
    for (const l of layouts) assert.ok(l in EXAMPLES, `no example for ${l}`);
  });
});

/** Encode → decode → re-encode: no problems, same bytes, same value. */
function roundTrip(m: MessageSpec, reply: boolean, body: Uint8Array, ctx: DecodeContext, needReply = false): void {
  const b = msgCode(m.channel, m.code).payload(body).reply(reply).needReply(needReply);
  const first = decodeMessage(b.raw(), ctx);
  b.fds(fdCountFor(reply ? m.replyFds : m.fds, first.payload));
  const d = decodeMessage(b.raw(), ctx);
  const what = `${label(m)}${reply ? ' reply' : ''} ${JSON.stringify(ctx)}`;
  assert.deepEqual(d.problems, [], what);
  assert.equal(d.name, m.name);
  assert.equal(d.spec, m);
  assert.equal(d.reply, reply);
  assert.equal(d.needReply, needReply);
  assert.equal(d.size, body.byteLength);
  assert.ok(d.payload, `${what}: no payload`);
  const again = encodeMessage({ channel: m.channel, code: m.code, reply, needReply, payload: d.payload }, ctx);
  assert.deepEqual(again, b.bytes(), `${what}: re-encoding changed the bytes`);
  const d2 = decodeMessage({ ...b.raw(), header: again.subarray(0, 12), payload: again.subarray(12) }, ctx);
  assert.deepEqual(d2.payload, d.payload, `${what}: value changed`);
}

const contexts = (layout: string): DecodeContext[] => {
  if (layout === 'vring base') return [{}, { packed: true }];
  if (layout === 'multiple memory regions' || layout === 'single memory region') return [{}, { xenMmap: true }];
  return [{}];
};

describe('every row round-trips', () => {
  for (const m of MESSAGES) {
    test(`${label(m)} request`, () => {
      for (const ctx of contexts(m.request.layout)) {
        roundTrip(m, false, examplePayload(m.request.layout, ctx), ctx);
        roundTrip(m, false, examplePayload(m.request.layout, ctx), ctx, true);
      }
    });
    if (m.reply) {
      const replyLayout = m.reply.layout;
      test(`${label(m)} reply (${replyLayout})`, () => {
        for (const ctx of contexts(replyLayout)) {
          const body = examplePayload(replyLayout, ctx);
          // Non-`always` rows choose the reply layout by size: an 8-byte reply is the ack.
          assert.equal(payloadCodec(m, true, body.byteLength), m.reply, `${label(m)}: the example reply would decode as an ack`);
          roundTrip(m, true, body, ctx);
        }
      });
    }
    if (m.replyRule !== 'always') {
      test(`${label(m)} ack reply`, () => {
        const b = msgCode(m.channel, m.code).reply().u64(0);
        const d = decodeMessage(b.raw());
        assert.deepEqual(d.problems, []);
        assert.deepEqual(d.payload, { ack: 0n });
        assert.deepEqual(encodeMessage({ channel: m.channel, code: m.code, reply: true }), b.bytes(), 'an ack without a payload is ack=0');
        assert.deepEqual(encodeMessage({ channel: m.channel, code: m.code, reply: true, payload: { ack: 1n } }), msgCode(m.channel, m.code).reply().u64(1).bytes());
      });
    }
  }
});
