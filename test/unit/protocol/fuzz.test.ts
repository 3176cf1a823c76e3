// Time-boxed property tests of the frame parser and the envelope codec (undici-style fuzzing).
// Each property stops after TIME_LIMIT_MS even if numRuns is not reached; a failure prints the
// seed and the shrunk counterexample, which reproduce it with fc.assert(..., { seed, path }).
import fc from 'fast-check'
import { pack } from 'msgpackr'
import { describe, expect, it } from 'vitest'
import { ErrorCodes, type ErrorCode, type SerializedError } from '../../../src/errors.ts'
import { decodeEnvelope, encodeFrame, validateBody } from '../../../src/protocol/codec.ts'
import { FrameParser } from '../../../src/protocol/framing.ts'
import {
  BUNDLES_SINCE_VERSION,
  CHECKPOINT_OPS,
  CONTROL_COMMAND_OPS,
  KIND_CODES,
  MESSAGE_KINDS,
  ROLES,
  STATE_OPS,
  SUPPORTED_VERSIONS,
  type CheckpointBody,
  type ControlCommandBody,
  type Envelope,
  type EventAckBody,
  type EventBatchBody,
  type Header,
  type Message,
  type StateBody,
} from '../../../src/protocol/messages.ts'
import {
  DECODE_ERROR_CODES,
  FRAME_ERROR_CODES,
  assertDocumentedError,
  collector,
  frameOf,
  headerOf,
  normalize,
  splitAt,
} from './helpers.ts'

const TIME_LIMIT_MS = 3000
const RUNS = { numRuns: 1000, interruptAfterTimeLimit: TIME_LIMIT_MS }
const MAX = 1 << 20

// --- arbitraries for the message model ----------------------------------------------------------

const noNegZero = (d: number): number => (Object.is(d, -0) ? 0 : d)
// 'binary' strings are any valid code points; lone surrogates are excluded because UTF-8
// cannot carry them (msgpackr turns them into U+FFFD, so they could never round-trip).
const str = fc.string({ unit: 'binary', maxLength: 24 })
const key = fc.string({ unit: 'binary', maxLength: 10 }).filter((k) => k !== '__proto__')
const uint = fc.oneof(fc.nat({ max: 300 }), fc.nat(), fc.maxSafeNat())
const bytes = fc.oneof(
  { weight: 6, arbitrary: fc.uint8Array({ maxLength: 64 }) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 256, maxLength: 20_000 }) },
)
const nonNeg = fc.oneof(uint, fc.double({ min: 0, noNaN: true, noDefaultInfinity: true }).map(noNegZero))

/** Plain data that msgpack carries faithfully (op-specific fields of commands and checkpoints). */
const { value: plainValue } = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.maxSafeInteger(),
    fc.double().map(noNegZero),
    str,
    fc.uint8Array({ maxLength: 16 }),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(key, tie('value'), { maxKeys: 4, noNullPrototype: true }),
  ),
}))
const extraFields = fc.dictionary(key, plainValue, { maxKeys: 4, noNullPrototype: true })

const serializedError: fc.Arbitrary<SerializedError> = fc.record(
  {
    name: str,
    code: fc.constantFrom(...Object.values(ErrorCodes)),
    message: str,
    retryable: fc.boolean(),
    data: extraFields,
  },
  { requiredKeys: ['name', 'code', 'message', 'retryable'] },
)

const optionalUndefined = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> =>
  fc.option(arb, { nil: undefined })

const batchBody: fc.Arbitrary<EventBatchBody> = fc.record({
  op: fc.constant('batch' as const),
  partition: uint,
  epoch: uint,
  producerId: str,
  sequence: uint,
  count: uint,
  payload: bytes,
})
const ackBody: fc.Arbitrary<EventAckBody> = fc.record(
  {
    op: fc.constant('ack' as const),
    partition: uint,
    producerId: str,
    sequence: uint,
    ok: fc.boolean(),
    error: optionalUndefined(serializedError),
  },
  { requiredKeys: ['op', 'partition', 'producerId', 'sequence', 'ok'] },
)

const message: fc.Arbitrary<Message> = fc.oneof(
  batchBody.map((body): Message => ({ kind: 'event', body })),
  ackBody.map((body): Message => ({ kind: 'event', body })),
  fc
    .array(batchBody, { minLength: 1, maxLength: 4 })
    .map((batches): Message => ({ kind: 'event', body: { op: 'batches', batches } })),
  fc
    .array(ackBody, { minLength: 1, maxLength: 4 })
    .map((acks): Message => ({ kind: 'event', body: { op: 'acks', acks } })),
  fc
    .record(
      {
        op: fc.constantFrom(...([...STATE_OPS] as StateBody['op'][])),
        key: str,
        partition: uint,
        data: bytes,
        found: fc.boolean(),
        error: serializedError,
      },
      { requiredKeys: ['op'] },
    )
    .map((body): Message => ({ kind: 'state', body })),
  fc
    .record(
      {
        op: fc.constant('hello' as const),
        versions: fc.array(uint, { maxLength: 4 }),
        nodeId: fc.string({ unit: 'binary', minLength: 1, maxLength: 100 }),
        role: fc.constantFrom(...ROLES),
        token: str,
      },
      { requiredKeys: ['op', 'versions', 'nodeId', 'role'] },
    )
    .map((body): Message => ({ kind: 'control', body })),
  fc
    .record({
      op: fc.constant('welcome' as const),
      version: uint,
      nodeId: fc.string({ unit: 'binary', minLength: 1, maxLength: 100 }),
      role: fc.constantFrom(...ROLES),
    })
    .map((body): Message => ({ kind: 'control', body })),
  fc
    .record({ op: fc.constant('error' as const), code: str, message: str, fatal: fc.boolean() })
    .map((body): Message => ({ kind: 'control', body })),
  fc
    .tuple(fc.constantFrom(...([...CONTROL_COMMAND_OPS] as ControlCommandBody['op'][])), extraFields)
    .map(([op, extra]): Message => ({ kind: 'control', body: { ...extra, op } })),
  fc
    .record(
      {
        n: uint,
        epoch: uint,
        load: optionalUndefined(
          fc.record({
            queueDepth: nonNeg,
            inFlight: nonNeg,
            eventsPerSec: nonNeg,
            rssBytes: nonNeg,
            lag: nonNeg,
          }),
        ),
      },
      { requiredKeys: ['n', 'epoch'] },
    )
    .map((body): Message => ({ kind: 'heartbeat', body })),
  fc
    .tuple(
      fc.constantFrom(...([...CHECKPOINT_OPS] as CheckpointBody['op'][])),
      uint,
      fc.option(fc.array(uint, { maxLength: 8 }), { nil: undefined }),
      fc.option(serializedError, { nil: undefined }),
      extraFields,
    )
    .map(([op, checkpointId, partitions, error, extra]): Message => {
      const body: CheckpointBody = { ...extra, op, checkpointId }
      if (partitions !== undefined) body.partitions = partitions
      if (error !== undefined) body.error = error
      return { kind: 'checkpoint', body }
    }),
)

const header: fc.Arbitrary<Header> = fc.record(
  { v: fc.constantFrom(...SUPPORTED_VERSIONS), from: str, seq: uint, ts: uint, corr: uint },
  { requiredKeys: ['v', 'from', 'seq', 'ts'] },
)

/** `batches` and `acks` exist from protocol version 2 on (a version-1 envelope with one is refused). */
const envelope: fc.Arbitrary<Envelope> = fc.tuple(header, message).map(([h, m]) => {
  const bundle = m.kind === 'event' && (m.body.op === 'batches' || m.body.op === 'acks')
  return { ...h, ...m, v: bundle ? Math.max(h.v, BUNDLES_SINCE_VERSION) : h.v }
})

const cuts = fc.array(fc.nat({ max: 70_000 }), { maxLength: 24 })

// --- checks -------------------------------------------------------------------------------------

const isUint = (v: unknown): boolean => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0

/** What decodeEnvelope promises about a value it returns. */
function assertValidEnvelope(env: Envelope): void {
  expect(SUPPORTED_VERSIONS).toContain(env.v)
  expect(MESSAGE_KINDS).toContain(env.kind)
  expect(typeof env.from).toBe('string')
  expect(isUint(env.seq) && isUint(env.ts)).toBe(true)
  expect(env.corr === undefined || isUint(env.corr)).toBe(true)
  validateBody({ kind: env.kind, body: env.body })
}

/** decodeEnvelope either returns a valid envelope or throws a documented ProtocolError. */
function decodeOrDocumentedError(payload: Uint8Array): Envelope | null {
  let out: Envelope
  try {
    out = decodeEnvelope(payload)
  } catch (err) {
    assertDocumentedError(err, DECODE_ERROR_CODES)
    return null
  }
  assertValidEnvelope(out)
  return out
}

/** A non-incremental model of the frame format: what a parser fed `data` in any chunking must do. */
function frameModel(
  data: Uint8Array,
  max: number,
): { frames: string[]; error: ErrorCode | null; errorAt: number; rest: number } {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  const frames: string[] = []
  let pos = 0
  while (buf.length - pos >= 4) {
    const len = buf.readUInt32BE(pos)
    if (len === 0) return { frames, error: ErrorCodes.MALFORMED_FRAME, errorAt: pos + 4, rest: 0 }
    if (len > max) return { frames, error: ErrorCodes.FRAME_TOO_LARGE, errorAt: pos + 4, rest: 0 }
    if (buf.length - pos - 4 < len) break
    frames.push(buf.subarray(pos + 4, pos + 4 + len).toString('hex'))
    pos += 4 + len
  }
  return { frames, error: null, errorAt: -1, rest: buf.length - pos }
}

/** Random bytes, or bytes that look like a stream of frames with plausible (often wrong) headers. */
const streamBytes = fc.oneof(
  fc.uint8Array({ maxLength: 600 }),
  fc
    .array(fc.tuple(fc.nat({ max: 80 }), fc.uint8Array({ maxLength: 80 }), fc.boolean()), { maxLength: 10 })
    .map((parts) =>
      Buffer.concat(
        parts.map(([len, body, exact]) => Buffer.concat([headerOf(exact ? body.length : len), body])),
      ),
    ),
)

// --- properties ---------------------------------------------------------------------------------

describe('fuzz: FrameParser', () => {
  it('(a) arbitrary bytes in arbitrary chunks: only documented errors, bounded buffering, split-invariant', () => {
    fc.assert(
      fc.property(streamBytes, fc.integer({ min: 1, max: 100 }), cuts, (data, max, cutPoints) => {
        const model = frameModel(data, max)
        const c = collector(max)
        let failure: unknown = null
        let fed = 0
        for (const chunk of splitAt(data, cutPoints)) {
          try {
            c.parser.push(chunk)
          } catch (err) {
            assertDocumentedError(err, FRAME_ERROR_CODES)
            if (failure === null) {
              failure = err
              // The push that failed is the one that completed the bad header.
              expect(model.errorAt).toBeGreaterThan(fed)
              expect(model.errorAt).toBeLessThanOrEqual(fed + chunk.length)
            } else {
              expect(err).toBe(failure)
            }
          }
          fed += chunk.length
          expect(c.parser.bufferedBytes).toBeLessThanOrEqual(max + 4)
        }
        expect(c.copies.map((b) => b.toString('hex'))).toEqual(model.frames)
        for (const frame of c.raw) expect(frame.length).toBeLessThanOrEqual(max)
        if (model.error !== null) {
          assertDocumentedError(failure, FRAME_ERROR_CODES)
          expect(failure.code).toBe(model.error)
          expect(c.parser.failed).toBe(failure)
          return
        }
        expect(failure).toBeNull()
        expect(c.parser.bufferedBytes).toBe(model.rest < 4 ? model.rest : model.rest - 4)
        let endError: unknown = null
        try {
          c.parser.end()
        } catch (err) {
          endError = err
        }
        if (model.rest === 0) {
          expect(endError).toBeNull()
        } else {
          assertDocumentedError(endError, [ErrorCodes.MALFORMED_FRAME])
        }
      }),
      RUNS,
    )
  })

  it('(e) valid frames followed by garbage: delivered frames never change, and the parser terminates', () => {
    fc.assert(
      fc.property(
        fc.array(envelope, { minLength: 1, maxLength: 5 }),
        fc.uint8Array({ minLength: 1, maxLength: 300 }),
        cuts,
        (envs, garbage, cutPoints) => {
          const frames = envs.map((e) => Buffer.from(encodeFrame(e, MAX)))
          // Small enough that garbage often declares a too-large frame, big enough for every frame.
          const max = Math.max(4096, ...frames.map((f) => f.length - 4))
          const stream = Buffer.concat([...frames, garbage])
          const c = collector(max)
          let failure: unknown = null
          for (const chunk of splitAt(stream, cutPoints)) {
            try {
              c.parser.push(chunk)
            } catch (err) {
              assertDocumentedError(err, FRAME_ERROR_CODES)
              failure ??= err
              expect(err).toBe(failure)
            }
          }
          try {
            c.parser.end()
          } catch (err) {
            assertDocumentedError(err, FRAME_ERROR_CODES)
          }
          expect(c.raw.length).toBeGreaterThanOrEqual(frames.length)
          // Every payload, as delivered, still holds the bytes it held when it was delivered.
          for (const [i, raw] of c.raw.entries()) expect(raw.equals(c.copies[i]!)).toBe(true)
          for (const [i, frame] of frames.entries()) {
            expect(c.raw[i]!.equals(frame.subarray(4))).toBe(true)
            expect(normalize(decodeEnvelope(c.raw[i]!))).toEqual(normalize(envs[i]))
          }
          // Frames found in the garbage decode to a valid envelope or a documented error.
          for (const extra of c.raw.slice(frames.length)) {
            expect(extra.length).toBeLessThanOrEqual(max)
            decodeOrDocumentedError(extra)
          }
        },
      ),
      RUNS,
    )
  })
})

describe('fuzz: decodeEnvelope', () => {
  it('(b) arbitrary bytes: a valid envelope or a documented ProtocolError, nothing else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (data) => {
        decodeOrDocumentedError(data)
      }),
      RUNS,
    )
  })

  it('(b) arbitrary msgpack values shaped like an envelope: a valid envelope or a documented error', () => {
    const fieldValue = fc.oneof(
      plainValue,
      fc.constantFrom(0, 1, 2, 5, 6, -1, 1.5, 2 ** 53, 'event', ''),
      fc.constantFrom(...MESSAGE_KINDS.map((k) => KIND_CODES[k])),
    )
    const bodyLike = fc.oneof(
      plainValue,
      message.map((m) => m.body),
      // A valid body with one field replaced, removed or added.
      fc.tuple(message, key, fieldValue, fc.boolean()).map(([m, k, v, remove]) => {
        const b = { ...(m.body as Record<string, unknown>) }
        const names = Object.keys(b)
        const name = names.length > 0 && k.length % 2 === 0 ? names[k.length % names.length]! : k
        if (remove) delete b[name]
        else b[name] = v
        return b
      }),
    )
    const wire = fc.oneof(
      fc.tuple(fieldValue, fieldValue, fieldValue, fieldValue, fieldValue, fieldValue, bodyLike),
      fc.tuple(
        fc.constantFrom<unknown>(...SUPPORTED_VERSIONS, 0, 2),
        fc.oneof(fc.constantFrom<unknown>(...MESSAGE_KINDS.map((k) => KIND_CODES[k])), fieldValue),
        fc.oneof(str, fieldValue),
        fc.oneof(uint, fieldValue),
        fc.oneof(uint, fieldValue),
        fc.oneof(fc.constant(null), uint, fieldValue),
        bodyLike,
      ),
      fc.array(fieldValue, { maxLength: 9 }),
    )
    fc.assert(
      fc.property(wire, (arr) => {
        decodeOrDocumentedError(pack(arr))
      }),
      RUNS,
    )
  })

  it('(c) valid envelopes survive encodeFrame -> arbitrary chunks -> FrameParser -> decodeEnvelope', () => {
    fc.assert(
      fc.property(fc.array(envelope, { minLength: 1, maxLength: 6 }), cuts, (envs, cutPoints) => {
        const stream = Buffer.concat(envs.map((e) => encodeFrame(e, MAX)))
        const decoded: Envelope[] = []
        const parser = new FrameParser(MAX, (payload) => decoded.push(decodeEnvelope(payload)))
        for (const chunk of splitAt(stream, cutPoints)) parser.push(chunk)
        parser.end()
        expect(decoded.map(normalize)).toEqual(envs.map(normalize))
        for (const env of decoded) assertValidEnvelope(env)
      }),
      RUNS,
    )
  })

  it('(d) mutated frames decode to a valid envelope or a documented error', () => {
    const mutation = fc.record({
      op: fc.constantFrom('flip', 'insert', 'delete', 'set'),
      at: fc.nat(),
      byte: fc.integer({ min: 0, max: 255 }),
    })
    fc.assert(
      fc.property(
        envelope,
        fc.array(mutation, { minLength: 1, maxLength: 8 }),
        fc.boolean(),
        cuts,
        (env, mutations, mutateHeader, cutPoints) => {
          const frame = encodeFrame(env, MAX)
          const bytesOut = [...(mutateHeader ? frame : frame.subarray(4))]
          for (const m of mutations) {
            const at = bytesOut.length === 0 ? 0 : m.at % bytesOut.length
            if (m.op === 'flip' && bytesOut.length > 0) bytesOut[at] = bytesOut[at]! ^ (1 << (m.byte % 8))
            else if (m.op === 'set' && bytesOut.length > 0) bytesOut[at] = m.byte
            else if (m.op === 'insert') bytesOut.splice(m.at % (bytesOut.length + 1), 0, m.byte)
            else if (m.op === 'delete') bytesOut.splice(at, 1)
          }
          const mutated = Buffer.from(bytesOut)
          // A mutated header goes through the parser as is; a mutated payload gets a correct header.
          const stream = mutateHeader ? mutated : mutated.length > 0 ? frameOf(mutated) : mutated
          const c = collector(MAX)
          for (const chunk of splitAt(stream, cutPoints)) {
            try {
              c.parser.push(chunk)
            } catch (err) {
              assertDocumentedError(err, FRAME_ERROR_CODES)
              break
            }
          }
          if (!mutateHeader) {
            if (mutated.length > 0) expect(c.raw).toHaveLength(1)
            decodeOrDocumentedError(mutated)
          }
          for (const payload of c.raw) decodeOrDocumentedError(payload)
        },
      ),
      RUNS,
    )
  })
})
