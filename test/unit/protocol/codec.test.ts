import { Packr, Unpackr, pack } from 'msgpackr'
import { describe, expect, it } from 'vitest'
import { ErrorCodes, FrameTooLargeError, ShoalError } from '../../../src/errors.ts'
import {
  FRAME_HEADER_BYTES,
  decodeEnvelope,
  encodeEnvelope,
  encodeFrame,
  validateBody,
} from '../../../src/protocol/codec.ts'
import {
  CHECKPOINT_OPS,
  CONTROL_COMMAND_OPS,
  KIND_CODES,
  MAX_BUNDLE,
  PROTOCOL_VERSION,
  ROLES,
  STATE_OPS,
  type Envelope,
  type EventAckBody,
  type EventBatchBody,
  type EventBatchesBody,
  type Header,
  type Message,
} from '../../../src/protocol/messages.ts'
import { expectProtocolError, normalize, unpooled } from './helpers.ts'

const MAX = 1 << 20

interface TestEvent {
  id: number
  key: string
  ts: number
  value: { temp: number; tags: string[]; ok: boolean }
}

const EVENTS: TestEvent[] = Array.from({ length: 50 }, (_, i) => ({
  id: i,
  key: `sensor-${i % 7}`,
  ts: 1_700_000_000_000 + i,
  value: { temp: 20.5 + i / 4, tags: i % 2 === 0 ? ['a'] : [], ok: i % 3 !== 0 },
}))
const EVENT_PAYLOAD = new Packr({ useRecords: true }).pack(EVENTS)

const HEADER: Header = { v: PROTOCOL_VERSION, from: 'worker-1', seq: 42, ts: 1_700_000_000_123, corr: 7 }

const SERIALIZED_ERROR = new ShoalError(ErrorCodes.QUEUE_FULL, 'outbound queue is full', {
  retryable: true,
  data: { limit: 1024 },
}).toJSON()

function env(message: Message, header: Partial<Header> = {}): Envelope {
  return { ...HEADER, ...header, ...message }
}

/** The frame's payload, after checking its length prefix. */
function payloadOf(frame: Buffer): Buffer {
  expect(frame.length).toBeGreaterThan(FRAME_HEADER_BYTES)
  expect(frame.readUInt32BE(0)).toBe(frame.length - FRAME_HEADER_BYTES)
  return frame.subarray(FRAME_HEADER_BYTES)
}

/** Both encoders decode back to an envelope equal to the input (bytes compared as bytes). */
function expectRoundTrip(input: Envelope): Envelope {
  const viaFrame = decodeEnvelope(payloadOf(encodeFrame(input, MAX)))
  const viaEnvelope = decodeEnvelope(encodeEnvelope(input))
  expect(normalize(viaFrame)).toEqual(normalize(input))
  expect(normalize(viaEnvelope)).toEqual(normalize(input))
  // encodeEnvelope is encodeFrame without the prefix.
  expect(Buffer.from(encodeEnvelope(input)).equals(payloadOf(encodeFrame(input, MAX)))).toBe(true)
  return viaFrame
}

/** The wire form [v, kindCode, from, seq, ts, corr, body], packed by plain msgpackr. */
function wire(overrides: Record<number, unknown> = {}): Buffer {
  const arr: unknown[] = [1, KIND_CODES.heartbeat, 'node-a', 0, 0, null, { n: 1, epoch: 0 }]
  for (const [i, v] of Object.entries(overrides)) arr[Number(i)] = v
  return pack(arr)
}

function wireBody(kind: keyof typeof KIND_CODES, body: unknown): Buffer {
  return wire({ 1: KIND_CODES[kind], 6: body })
}

describe('codec: round trip of every kind and op', () => {
  it('event batch: payload bytes survive, and decode back to the same events', () => {
    const input = env({
      kind: 'event',
      body: {
        op: 'batch',
        partition: 17,
        epoch: 3,
        producerId: 'producer-9',
        sequence: 12345,
        count: EVENTS.length,
        payload: EVENT_PAYLOAD,
      },
    })
    const out = expectRoundTrip(input)
    if (out.kind !== 'event' || out.body.op !== 'batch') throw new Error('wrong kind')
    expect(out.body.count).toBe(EVENTS.length)
    const events = new Unpackr({ useRecords: true }).unpack(out.body.payload) as TestEvent[]
    expect(events).toEqual(EVENTS)
  })

  it("event batch: a large payload (beyond msgpackr's 8 KiB scratch buffer) survives", () => {
    const many = Array.from({ length: 5000 }, (_, i) => ({ ...EVENTS[i % EVENTS.length]!, id: i }))
    const payload = new Packr({ useRecords: true }).pack(many)
    expect(payload.length).toBeGreaterThan(64 * 1024)
    const out = expectRoundTrip(
      env({
        kind: 'event',
        body: { op: 'batch', partition: 0, epoch: 0, producerId: '', sequence: 0, count: 5000, payload },
      }),
    )
    if (out.kind !== 'event' || out.body.op !== 'batch') throw new Error('wrong kind')
    expect(new Unpackr({ useRecords: true }).unpack(out.body.payload)).toEqual(many)
  })

  it('event batch: the decoded payload is a view of the frame (no copy)', () => {
    const frame = unpooled(
      encodeFrame(
        env({
          kind: 'event',
          body: {
            op: 'batch',
            partition: 1,
            epoch: 1,
            producerId: 'p',
            sequence: 1,
            count: 50,
            payload: EVENT_PAYLOAD,
          },
        }),
        MAX,
      ),
    )
    const out = decodeEnvelope(frame.subarray(FRAME_HEADER_BYTES))
    if (out.kind !== 'event' || out.body.op !== 'batch') throw new Error('wrong kind')
    const payload = out.body.payload
    expect(payload.buffer).toBe(frame.buffer)
    const at = payload.byteOffset - frame.byteOffset
    expect(frame.subarray(at, at + payload.length).equals(EVENT_PAYLOAD)).toBe(true)
    expect(at + payload.length).toBeLessThanOrEqual(frame.length)
  })

  it('event ack: ok, and refused with an error', () => {
    expectRoundTrip(
      env({ kind: 'event', body: { op: 'ack', partition: 3, producerId: 'p', sequence: 9, ok: true } }),
    )
    const out = expectRoundTrip(
      env({
        kind: 'event',
        body: { op: 'ack', partition: 3, producerId: 'p', sequence: 9, ok: false, error: SERIALIZED_ERROR },
      }),
    )
    if (out.kind !== 'event' || out.body.op !== 'ack') throw new Error('wrong kind')
    expect(out.body.error).toEqual(SERIALIZED_ERROR)
  })

  it('state: every op, with and without its optional fields', () => {
    expect(STATE_OPS.size).toBeGreaterThanOrEqual(6)
    for (const op of STATE_OPS) {
      expectRoundTrip(env({ kind: 'state', body: { op: op as 'get' } }))
    }
    expectRoundTrip(env({ kind: 'state', body: { op: 'get', key: 'user:1', partition: 4 } }))
    expectRoundTrip(
      env({ kind: 'state', body: { op: 'result', key: 'user:1', found: true, data: pack({ a: 1 }) } }),
    )
    expectRoundTrip(env({ kind: 'state', body: { op: 'result', key: 'user:2', found: false } }))
    expectRoundTrip(env({ kind: 'state', body: { op: 'dump', partition: 0 } }))
    expectRoundTrip(env({ kind: 'state', body: { op: 'chunk', partition: 2, data: pack([['k', 1]]) } }))
    expectRoundTrip(env({ kind: 'state', body: { op: 'chunk', partition: 2, data: new Uint8Array(0) } }))
    expectRoundTrip(env({ kind: 'state', body: { op: 'end', partition: 2 } }))
    expectRoundTrip(env({ kind: 'state', body: { op: 'error', key: 'k', error: SERIALIZED_ERROR } }))
  })

  it('control: hello (with and without token), welcome, error', () => {
    for (const role of ROLES) {
      expectRoundTrip(env({ kind: 'control', body: { op: 'hello', versions: [1], nodeId: 'n-1', role } }))
      expectRoundTrip(
        env({
          kind: 'control',
          body: { op: 'hello', versions: [3, 2, 1], nodeId: 'n', role, token: 's3cret' },
        }),
      )
      expectRoundTrip(env({ kind: 'control', body: { op: 'welcome', version: 1, nodeId: 'coord', role } }))
    }
    expectRoundTrip(
      env({ kind: 'control', body: { op: 'hello', versions: [], nodeId: 'x'.repeat(256), role: 'client' } }),
    )
    for (const fatal of [true, false]) {
      expectRoundTrip(
        env({
          kind: 'control',
          body: { op: 'error', code: ErrorCodes.AUTH_FAILED, message: 'bad token', fatal },
        }),
      )
    }
  })

  it('control: every command op, with op-specific fields', () => {
    expect(CONTROL_COMMAND_OPS.size).toBeGreaterThanOrEqual(13)
    for (const op of CONTROL_COMMAND_OPS) {
      expectRoundTrip(env({ kind: 'control', body: { op: op as 'join' } }))
      expectRoundTrip(
        env({
          kind: 'control',
          body: {
            op: op as 'assign',
            epoch: 12,
            partitions: [0, 5, 1023],
            table: { 'worker-1': [1, 2], 'worker-2': [] },
            reason: 'rebalance',
            deadline: 1.5,
            nested: { deep: [null, true, 'x', -3, { bytes: new Uint8Array([1, 2, 3]) }] },
          },
        }),
      )
    }
  })

  it('heartbeat: with and without load', () => {
    expectRoundTrip(env({ kind: 'heartbeat', body: { n: 0, epoch: 0 } }))
    expectRoundTrip(env({ kind: 'heartbeat', body: { n: 99, epoch: 4, load: undefined } }))
    const out = expectRoundTrip(
      env({
        kind: 'heartbeat',
        body: {
          n: 100,
          epoch: 4,
          load: { queueDepth: 3, inFlight: 0, eventsPerSec: 1234.5, rssBytes: 512 * 1024 * 1024, lag: 0.25 },
        },
      }),
    )
    if (out.kind !== 'heartbeat') throw new Error('wrong kind')
    expect(out.body.load?.eventsPerSec).toBe(1234.5)
  })

  it('checkpoint: every op', () => {
    expect(CHECKPOINT_OPS.size).toBeGreaterThanOrEqual(4)
    for (const op of CHECKPOINT_OPS) {
      expectRoundTrip(env({ kind: 'checkpoint', body: { op: op as 'trigger', checkpointId: 8 } }))
    }
    expectRoundTrip(
      env({ kind: 'checkpoint', body: { op: 'trigger', checkpointId: 9, partitions: [1, 2, 3] } }),
    )
    expectRoundTrip(
      env({ kind: 'checkpoint', body: { op: 'ack', checkpointId: 9, partitions: [2], bytes: 4096 } }),
    )
    expectRoundTrip(env({ kind: 'checkpoint', body: { op: 'complete', checkpointId: 9 } }))
    expectRoundTrip(
      env({ kind: 'checkpoint', body: { op: 'abort', checkpointId: 9, error: SERIALIZED_ERROR } }),
    )
  })
})

describe('codec: envelope header', () => {
  const body: Message = { kind: 'heartbeat', body: { n: 1, epoch: 1 } }

  it('carries v, from, seq, ts and corr', () => {
    const out = expectRoundTrip(env(body, { from: 'coordinator-α-🐟', seq: 1, ts: 2, corr: 3 }))
    expect(out).toMatchObject({
      v: PROTOCOL_VERSION,
      from: 'coordinator-α-🐟',
      seq: 1,
      ts: 2,
      corr: 3,
      kind: 'heartbeat',
    })
  })

  it('decodes an absent corr as undefined, and keeps corr = 0', () => {
    const { corr: _corr, ...noCorr } = env(body)
    const absent = expectRoundTrip(noCorr)
    expect(absent.corr).toBeUndefined()
    expect(expectRoundTrip(env(body, { corr: undefined })).corr).toBeUndefined()
    expect(expectRoundTrip(env(body, { corr: 0 })).corr).toBe(0)
  })

  it('carries extreme integer values and an empty sender id', () => {
    const max = Number.MAX_SAFE_INTEGER
    const out = expectRoundTrip(env(body, { from: '', seq: max, ts: max, corr: max }))
    expect(out).toMatchObject({ from: '', seq: max, ts: max, corr: max })
    expectRoundTrip(env(body, { seq: 0, ts: 0, corr: 0 }))
    expectRoundTrip(env(body, { seq: 2 ** 32, ts: 2 ** 32 - 1, corr: 2 ** 31 }))
  })

  it('puts version and kind first on the wire', () => {
    const bytes = encodeEnvelope(env(body))
    expect(new Unpackr({ mapsAsObjects: true }).unpack(bytes)).toEqual([
      PROTOCOL_VERSION,
      KIND_CODES.heartbeat,
      'worker-1',
      42,
      HEADER.ts,
      7,
      { n: 1, epoch: 1 },
    ])
  })
})

describe('codec: batches and acks (protocol version 2)', () => {
  const batch = (partition: number): EventBatchBody => ({
    op: 'batch',
    partition,
    epoch: 2,
    producerId: 'p',
    sequence: partition + 1,
    count: EVENTS.length,
    payload: EVENT_PAYLOAD,
  })
  const ack = (partition: number, ok = true): EventAckBody => ({
    op: 'ack',
    partition,
    producerId: 'p',
    sequence: partition + 1,
    ok,
    ...(ok ? {} : { error: SERIALIZED_ERROR }),
  })
  const v2 = (body: unknown): Buffer => wire({ 0: 2, 1: KIND_CODES.event, 6: body })

  it('round-trips a round of batches and of acks, each batch payload intact', () => {
    const out = expectRoundTrip(
      env({ kind: 'event', body: { op: 'batches', batches: [batch(3), batch(9)] } }),
    )
    const body = out.body as EventBatchesBody
    expect(body.batches.map((b) => b.partition)).toEqual([3, 9])
    expect(new Packr({ useRecords: true }).unpack(body.batches[1]!.payload)).toEqual(EVENTS)
    expectRoundTrip(env({ kind: 'event', body: { op: 'acks', acks: [ack(3), ack(9, false)] } }))
  })

  it('refuses a bundle that is empty, too long, not an array, or holds anything but its own op', () => {
    for (const body of [
      { op: 'batches', batches: [] },
      { op: 'batches', batches: batch(1) },
      { op: 'batches' },
      { op: 'batches', batches: Array.from({ length: MAX_BUNDLE + 1 }, (_, i) => batch(i)) },
      { op: 'batches', batches: [batch(1), ack(1)] },
      { op: 'batches', batches: [batch(1), { op: 'batches', batches: [batch(2)] }] },
      { op: 'batches', batches: [{ ...batch(1), sequence: -1 }] },
      { op: 'batches', batches: [{ ...batch(1), payload: 'x' }] },
      { op: 'acks', acks: [] },
      { op: 'acks', acks: [ack(1), batch(1)] },
      { op: 'acks', acks: [{ ...ack(1), ok: 'yes' }] },
      { op: 'acks', acks: [null] },
    ]) {
      expectProtocolError(() => decodeEnvelope(v2(body)), ErrorCodes.MALFORMED_MESSAGE)
    }
  })

  it('refuses batches and acks in a version-1 envelope (they do not exist there)', () => {
    const err = expectProtocolError(
      () => decodeEnvelope(wire({ 0: 1, 1: KIND_CODES.event, 6: { op: 'batches', batches: [batch(1)] } })),
      ErrorCodes.MALFORMED_MESSAGE,
    )
    expect(err.message).toMatch(/needs protocol version 2/)
    expectProtocolError(
      () => decodeEnvelope(wire({ 0: 1, 1: KIND_CODES.event, 6: { op: 'acks', acks: [ack(1)] } })),
      ErrorCodes.MALFORMED_MESSAGE,
    )
    // The same bodies one by one are version 1.
    expect(decodeEnvelope(wire({ 0: 1, 1: KIND_CODES.event, 6: batch(1) })).body).toMatchObject({
      op: 'batch',
    })
  })
})

describe('codec: bad input', () => {
  const validHeartbeat = { n: 1, epoch: 0 }

  it('rejects an unsupported version with UNSUPPORTED_VERSION, before looking at the kind', () => {
    const err = expectProtocolError(
      () =>
        decodeEnvelope(
          pack([3, 1, 'n', 0, 0, null, { op: 'ack', partition: 0, producerId: 'p', sequence: 0, ok: true }]),
        ),
      ErrorCodes.UNSUPPORTED_VERSION,
    )
    expect(err.data).toEqual({ version: 3, supported: [2, 1] })
    expectProtocolError(() => decodeEnvelope(wire({ 0: 0 })), ErrorCodes.UNSUPPORTED_VERSION)
    expectProtocolError(() => decodeEnvelope(wire({ 0: 2 ** 32 })), ErrorCodes.UNSUPPORTED_VERSION)
    expectProtocolError(() => decodeEnvelope(wire({ 0: 3, 1: 9 })), ErrorCodes.UNSUPPORTED_VERSION)
  })

  it('rejects an unknown kind code with UNKNOWN_KIND', () => {
    for (const kind of [9, 0, 6, 255, 2 ** 31, 'event', -1, 1.5, null, true, [1], { kind: 1 }]) {
      expectProtocolError(() => decodeEnvelope(wire({ 1: kind })), ErrorCodes.UNKNOWN_KIND)
    }
  })

  it('rejects a payload that is not an array with MALFORMED_MESSAGE', () => {
    for (const value of [{}, { v: 1 }, 'hello', 1, null, true, new Uint8Array([0x97])]) {
      expectProtocolError(() => decodeEnvelope(pack(value)), ErrorCodes.MALFORMED_MESSAGE)
    }
  })

  it('rejects an array of the wrong length with MALFORMED_MESSAGE', () => {
    const full = [1, KIND_CODES.heartbeat, 'n', 0, 0, null, validHeartbeat]
    for (const arr of [[], full.slice(0, 6), [...full, null], [...full, 1, 2]]) {
      expectProtocolError(() => decodeEnvelope(pack(arr)), ErrorCodes.MALFORMED_MESSAGE)
    }
  })

  it('rejects bad header field types with MALFORMED_MESSAGE', () => {
    const cases: [number, unknown][] = [
      [0, '1'],
      [0, -1],
      [0, 1.5],
      [0, null],
      [2, 1],
      [2, null],
      [2, new Uint8Array([0x6e])],
      [3, -1],
      [3, 1.5],
      [3, '1'],
      [3, 2 ** 53],
      [3, null],
      [4, -5],
      [4, Number.NaN],
      [4, Number.POSITIVE_INFINITY],
      [5, -1],
      [5, 'c'],
      [5, 0.5],
      [5, false],
    ]
    for (const [index, value] of cases) {
      expectProtocolError(() => decodeEnvelope(wire({ [index]: value })), ErrorCodes.MALFORMED_MESSAGE)
    }
  })

  it('rejects a body that is not a map with MALFORMED_MESSAGE', () => {
    for (const kind of ['event', 'state', 'control', 'heartbeat', 'checkpoint'] as const) {
      for (const body of [null, [], [1, 2], 'body', 3, new Uint8Array([1])]) {
        expectProtocolError(() => decodeEnvelope(wireBody(kind, body)), ErrorCodes.MALFORMED_MESSAGE)
      }
    }
  })

  it('rejects an unknown or missing op with MALFORMED_MESSAGE', () => {
    const cases: [keyof typeof KIND_CODES, Record<string, unknown>][] = [
      ['event', { op: 'nope', partition: 0, producerId: 'p', sequence: 0, ok: true }],
      ['event', { partition: 0, producerId: 'p', sequence: 0, ok: true }],
      ['event', { op: 'Batch' }],
      ['state', { op: 'put' }],
      ['state', {}],
      ['control', { op: 'hi' }],
      ['control', { op: 1 }],
      ['control', {}],
      ['checkpoint', { op: 'begin', checkpointId: 1 }],
      ['checkpoint', { checkpointId: 1 }],
      // Inherited names are not ops.
      ['control', { op: 'constructor' }],
      ['state', { op: 'toString' }],
    ]
    for (const [kind, body] of cases) {
      expectProtocolError(() => decodeEnvelope(wireBody(kind, body)), ErrorCodes.MALFORMED_MESSAGE)
    }
  })

  const REQUIRED: [string, keyof typeof KIND_CODES, Record<string, unknown>, Record<string, unknown>][] = [
    [
      'event batch',
      'event',
      {
        op: 'batch',
        partition: 0,
        epoch: 0,
        producerId: 'p',
        sequence: 0,
        count: 1,
        payload: new Uint8Array([0x90]),
      },
      { partition: -1, epoch: 1.5, producerId: 7, sequence: '1', count: null, payload: 'bytes' },
    ],
    [
      'event ack',
      'event',
      { op: 'ack', partition: 0, producerId: 'p', sequence: 0, ok: true },
      { partition: '0', producerId: null, sequence: -1, ok: 1 },
    ],
    [
      'control hello',
      'control',
      { op: 'hello', versions: [1], nodeId: 'n', role: 'worker' },
      { versions: [1, -1], nodeId: '', role: 'admin' },
    ],
    [
      'control welcome',
      'control',
      { op: 'welcome', version: 1, nodeId: 'n', role: 'coordinator' },
      { version: '1', nodeId: 'x'.repeat(257), role: 'Worker' },
    ],
    [
      'control error',
      'control',
      { op: 'error', code: 'SHOAL_ERR_AUTH_FAILED', message: 'm', fatal: true },
      { code: 1, message: null, fatal: 'true' },
    ],
    ['heartbeat', 'heartbeat', { n: 0, epoch: 0 }, { n: -1, epoch: 0.5 }],
    ['checkpoint', 'checkpoint', { op: 'trigger', checkpointId: 0 }, { checkpointId: -2 }],
  ]

  it.each(REQUIRED)('%s: valid as given', (_name, kind, body) => {
    expect(decodeEnvelope(wireBody(kind, body)).kind).toBe(kind)
  })

  it.each(REQUIRED)(
    '%s: each required field missing, nil, or of the wrong type is MALFORMED_MESSAGE',
    (_name, kind, body, wrong) => {
      for (const name of Object.keys(wrong)) {
        const { [name]: _dropped, ...missing } = body
        expectProtocolError(() => decodeEnvelope(wireBody(kind, missing)), ErrorCodes.MALFORMED_MESSAGE)
        expectProtocolError(
          () => decodeEnvelope(wireBody(kind, { ...body, [name]: null })),
          ErrorCodes.MALFORMED_MESSAGE,
        )
        expectProtocolError(
          () => decodeEnvelope(wireBody(kind, { ...body, [name]: wrong[name] })),
          ErrorCodes.MALFORMED_MESSAGE,
        )
      }
    },
  )

  it('rejects optional fields of the wrong type with MALFORMED_MESSAGE', () => {
    const cases: [keyof typeof KIND_CODES, Record<string, unknown>][] = [
      ['state', { op: 'get', key: 1 }],
      ['state', { op: 'get', partition: -1 }],
      ['state', { op: 'result', data: 'bytes' }],
      ['state', { op: 'result', data: [1, 2] }],
      ['state', { op: 'result', found: 'yes' }],
      ['state', { op: 'error', error: 'boom' }],
      ['state', { op: 'error', error: { code: 1, message: 'm' } }],
      ['state', { op: 'error', error: { code: 'X' } }],
      [
        'event',
        { op: 'ack', partition: 0, producerId: 'p', sequence: 0, ok: false, error: { message: 'm' } },
      ],
      ['control', { op: 'hello', versions: [1], nodeId: 'n', role: 'worker', token: 123 }],
      ['control', { op: 'hello', versions: 1, nodeId: 'n', role: 'worker' }],
      ['checkpoint', { op: 'ack', checkpointId: 1, partitions: [-1] }],
      ['checkpoint', { op: 'ack', checkpointId: 1, partitions: 'all' }],
      ['checkpoint', { op: 'abort', checkpointId: 1, error: [] }],
    ]
    for (const [kind, body] of cases) {
      expectProtocolError(() => decodeEnvelope(wireBody(kind, body)), ErrorCodes.MALFORMED_MESSAGE)
    }
  })

  it('rejects a malformed heartbeat load with MALFORMED_MESSAGE', () => {
    const load: Record<string, number> = { queueDepth: 0, inFlight: 0, eventsPerSec: 0, rssBytes: 0, lag: 0 }
    expect(decodeEnvelope(wireBody('heartbeat', { n: 1, epoch: 1, load })).kind).toBe('heartbeat')
    const bad: unknown[] = [
      [],
      'load',
      5,
      { ...load, lag: -1 },
      { ...load, eventsPerSec: Number.NaN },
      { ...load, rssBytes: Number.POSITIVE_INFINITY },
      { ...load, queueDepth: '3' },
    ]
    for (const k of Object.keys(load)) {
      const { [k]: _dropped, ...missing } = load
      bad.push(missing)
    }
    for (const value of bad) {
      expectProtocolError(
        () => decodeEnvelope(wireBody('heartbeat', { n: 1, epoch: 1, load: value })),
        ErrorCodes.MALFORMED_MESSAGE,
      )
    }
  })

  it('rejects bytes that are not msgpack with MALFORMED_MESSAGE', () => {
    const valid = encodeEnvelope(env({ kind: 'heartbeat', body: validHeartbeat }))
    const cases: Uint8Array[] = [
      new Uint8Array(0),
      new Uint8Array([0xd4, 0x05, 0x00]), // fixext 1 of an unregistered extension type
      Buffer.concat([valid, Buffer.from([0x00])]), // trailing bytes after a valid envelope
      Buffer.concat([valid, valid]),
      Buffer.from('not msgpack at all, just text'),
    ]
    for (const bytes of cases) {
      const err = expectProtocolError(() => decodeEnvelope(bytes), ErrorCodes.MALFORMED_MESSAGE)
      expect(err.message).toMatch(/not valid msgpack/)
    }
  })

  it('rejects every truncation of a valid envelope with MALFORMED_MESSAGE, even when the view has bytes after it', () => {
    const valid = encodeEnvelope(
      env({
        kind: 'control',
        body: {
          op: 'hello',
          versions: [1, 2],
          nodeId: 'a-fairly-long-node-identifier-0123456789',
          role: 'worker',
        },
      }),
    )
    // Two copies back to back: each truncated view is followed by the rest of a valid envelope in
    // the same ArrayBuffer, so a decoder that read past the view's end would "succeed".
    const backing = unpooled(Buffer.concat([valid, valid]))
    for (let len = 0; len < valid.length; len++) {
      expectProtocolError(() => decodeEnvelope(backing.subarray(0, len)), ErrorCodes.MALFORMED_MESSAGE)
      expectProtocolError(
        () => decodeEnvelope(new Uint8Array(backing.buffer, backing.byteOffset, len)),
        ErrorCodes.MALFORMED_MESSAGE,
      )
    }
    expect(decodeEnvelope(backing.subarray(0, valid.length)).kind).toBe('control')
  })

  it('decodes a plain Uint8Array (not a Buffer)', () => {
    const input = env({ kind: 'heartbeat', body: validHeartbeat })
    expect(normalize(decodeEnvelope(new Uint8Array(encodeEnvelope(input))))).toEqual(normalize(input))
  })

  it('never lets a "__proto__" key reach the prototype', () => {
    const body = JSON.parse('{"op":"join","__proto__":{"polluted":true}}') as Message['body']
    const out = decodeEnvelope(encodeEnvelope(env({ kind: 'control', body } as Message)))
    expect(Object.getPrototypeOf(out.body)).toBe(Object.prototype)
    expect((out.body as Record<string, unknown>).polluted).toBeUndefined()
    expect(({} as Record<string, unknown>).polluted).toBeUndefined()
  })
})

describe('codec: validateBody', () => {
  it('rejects a kind it does not know with UNKNOWN_KIND', () => {
    expectProtocolError(() => validateBody({ kind: 'gossip', body: {} }), ErrorCodes.UNKNOWN_KIND)
  })

  it('accepts a valid native body and rejects an invalid one', () => {
    expect(() => validateBody({ kind: 'heartbeat', body: { n: 1, epoch: 2 } })).not.toThrow()
    expectProtocolError(
      () => validateBody({ kind: 'heartbeat', body: { n: 1 } }),
      ErrorCodes.MALFORMED_MESSAGE,
    )
    expectProtocolError(() => validateBody({ kind: 'event', body: undefined }), ErrorCodes.MALFORMED_MESSAGE)
  })
})

describe('codec: encodeFrame size limit', () => {
  const big = env({
    kind: 'event',
    body: {
      op: 'batch',
      partition: 0,
      epoch: 0,
      producerId: 'p',
      sequence: 0,
      count: 0,
      payload: new Uint8Array(1000),
    },
  })

  it('accepts a frame whose payload is exactly maxFrameBytes and rejects one byte less of room', () => {
    const len = encodeFrame(big, MAX).length - FRAME_HEADER_BYTES
    expect(len).toBeGreaterThan(1000)
    expect(payloadOf(encodeFrame(big, len)).length).toBe(len)
    const err = expectProtocolError(() => encodeFrame(big, len - 1), ErrorCodes.FRAME_TOO_LARGE)
    expect(err).toBeInstanceOf(FrameTooLargeError)
    expect(err.data).toEqual({ declared: len, max: len - 1 })
  })

  it('rejects a payload far over the limit', () => {
    expectProtocolError(() => encodeFrame(big, 100), ErrorCodes.FRAME_TOO_LARGE)
  })

  it('a failed encode does not disturb frames encoded before or after it', () => {
    const small = env({ kind: 'heartbeat', body: { n: 5, epoch: 5 } })
    const before = encodeFrame(small, MAX)
    const beforeCopy = Buffer.from(before)
    expectProtocolError(() => encodeFrame(big, 10), ErrorCodes.FRAME_TOO_LARGE)
    const after = encodeFrame(small, MAX)
    expect(before.equals(beforeCopy)).toBe(true)
    expect(after.equals(beforeCopy)).toBe(true)
    expect(normalize(decodeEnvelope(payloadOf(after)))).toEqual(normalize(small))
  })
})
