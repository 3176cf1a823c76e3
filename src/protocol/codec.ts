/**
 * Envelope codec: msgpackr on the wire, strict validation on the way in.
 *
 * Wire form of an envelope is a 7-element msgpack array
 *   [version, kindCode, from, seq, ts, corr | nil, body]
 * An array (not a map) keeps the per-message overhead at a few bytes and makes the version and
 * kind the first things the decoder sees. Event payloads are msgpack `bin` (one memcpy per batch
 * on encode, a zero-copy view on decode).
 */
import { Packr, Unpackr, RESERVE_START_SPACE } from 'msgpackr'
import {
  ErrorCodes,
  ProtocolError,
  FrameTooLargeError,
  isErrorCode,
  type SerializedError,
} from '../errors.ts'
import {
  BUNDLES_SINCE_VERSION,
  CHECKPOINT_OPS,
  CONTROL_COMMAND_OPS,
  KIND_CODES,
  KINDS_BY_CODE,
  MAX_BUNDLE,
  ROLES,
  STATE_OPS,
  SUPPORTED_VERSIONS,
  type Envelope,
  type Message,
} from './messages.ts'

export const FRAME_HEADER_BYTES = 4

// Envelopes are plain data: no records (bodies are small and heterogeneous), no structured
// clone, no extensions. Maps decode as plain objects.
const envelopePackr = new Packr({ useRecords: false, moreTypes: false, variableMapSize: true })
const envelopeUnpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })

/**
 * Encode an envelope into one length-prefixed frame (4-byte big-endian length + msgpack).
 * The length prefix is written into space msgpackr reserves, so framing costs no copy.
 * Throws FrameTooLargeError (nothing is sent) if the payload exceeds maxFrameBytes.
 */
export function encodeFrame(env: Envelope, maxFrameBytes: number): Buffer {
  const wire = [env.v, KIND_CODES[env.kind], env.from, env.seq, env.ts, env.corr ?? null, env.body]
  const buf = envelopePackr.pack(wire, RESERVE_START_SPACE | FRAME_HEADER_BYTES)
  const len = buf.length - FRAME_HEADER_BYTES
  if (len > maxFrameBytes) throw new FrameTooLargeError(len, maxFrameBytes)
  buf.writeUInt32BE(len, 0)
  return buf
}

/** Encode an envelope without the length prefix (the gRPC transport carries it as `bytes`). */
export function encodeEnvelope(env: Envelope): Buffer {
  return envelopePackr.pack([
    env.v,
    KIND_CODES[env.kind],
    env.from,
    env.seq,
    env.ts,
    env.corr ?? null,
    env.body,
  ])
}

function malformed(message: string, cause?: unknown): ProtocolError {
  return new ProtocolError(ErrorCodes.MALFORMED_MESSAGE, message, cause === undefined ? undefined : { cause })
}

/**
 * Decode and validate one envelope. Throws ProtocolError with MALFORMED_MESSAGE,
 * UNSUPPORTED_VERSION or UNKNOWN_KIND; never returns a partially valid message.
 */
export function decodeEnvelope(payload: Uint8Array): Envelope {
  let wire: unknown
  try {
    wire = envelopeUnpackr.unpack(payload)
  } catch (err) {
    throw malformed(`envelope is not valid msgpack: ${(err as Error).message}`, err)
  }
  if (!Array.isArray(wire) || wire.length !== 7) {
    throw malformed('envelope must be a 7-element array')
  }
  const [v, kindCode, from, seq, ts, corr, body] = wire as unknown[]
  if (!isUint(v)) throw malformed(`envelope version must be a non-negative integer (got ${describe(v)})`)
  if (!SUPPORTED_VERSIONS.includes(v)) {
    throw new ProtocolError(
      ErrorCodes.UNSUPPORTED_VERSION,
      `protocol version ${v} is not supported (this node speaks ${SUPPORTED_VERSIONS.join(', ')})`,
      { data: { version: v, supported: [...SUPPORTED_VERSIONS] } },
    )
  }
  const kind = isUint(kindCode) ? KINDS_BY_CODE[kindCode] : undefined
  if (kind === undefined) {
    throw new ProtocolError(ErrorCodes.UNKNOWN_KIND, `unknown message kind ${describe(kindCode)}`, {
      data: { kind: typeof kindCode === 'number' || typeof kindCode === 'string' ? kindCode : null },
    })
  }
  if (typeof from !== 'string') throw malformed(`envelope.from must be a string (got ${describe(from)})`)
  if (!isUint(seq)) throw malformed(`envelope.seq must be a non-negative integer (got ${describe(seq)})`)
  if (!isUint(ts)) throw malformed(`envelope.ts must be a non-negative integer (got ${describe(ts)})`)
  if (corr !== null && !isUint(corr))
    throw malformed(`envelope.corr must be an integer or nil (got ${describe(corr)})`)
  const msg = { kind, body } as Message
  validateBody(msg)
  if (
    v < BUNDLES_SINCE_VERSION &&
    msg.kind === 'event' &&
    (msg.body.op === 'batches' || msg.body.op === 'acks')
  ) {
    throw malformed(
      `event op ${msg.body.op} needs protocol version ${BUNDLES_SINCE_VERSION} (envelope is version ${v})`,
    )
  }
  return { v, from, seq, ts, corr: corr ?? undefined, ...msg }
}

/** Validates a message body against its kind; exported for transports that carry bodies natively. */
export function validateBody(msg: { kind: string; body: unknown }): asserts msg is Message {
  const body = msg.body
  if (!isObject(body)) throw malformed(`${msg.kind} body must be a map (got ${describe(body)})`)
  switch (msg.kind) {
    case 'event':
      return validateEvent(body)
    case 'state':
      requireOp(body, 'state', STATE_OPS)
      optional(body, 'key', isString, 'a string')
      optional(body, 'partition', isUint, 'a non-negative integer')
      optional(body, 'data', isBytes, 'bytes')
      optional(body, 'found', isBool, 'a boolean')
      optional(body, 'error', isSerializedError, 'an error object')
      return
    case 'control':
      return validateControl(body)
    case 'heartbeat':
      field(body, 'heartbeat', 'n', isUint, 'a non-negative integer')
      field(body, 'heartbeat', 'epoch', isUint, 'a non-negative integer')
      if (body.load !== undefined && body.load !== null) {
        const load = body.load
        if (!isObject(load)) throw malformed('heartbeat.load must be a map')
        for (const k of ['queueDepth', 'inFlight', 'eventsPerSec', 'rssBytes', 'lag'] as const) {
          field(load, 'heartbeat.load', k, isFiniteNonNeg, 'a non-negative number')
        }
        for (const k of ['ackedPerSec', 'backpressure'] as const) {
          optional(load, k, isFiniteNonNeg, 'a non-negative number')
        }
      }
      return
    case 'checkpoint':
      requireOp(body, 'checkpoint', CHECKPOINT_OPS)
      field(body, 'checkpoint', 'checkpointId', isUint, 'a non-negative integer')
      optional(body, 'partitions', isUintArray, 'an array of non-negative integers')
      optional(body, 'error', isSerializedError, 'an error object')
      return
    default:
      throw new ProtocolError(ErrorCodes.UNKNOWN_KIND, `unknown message kind ${describe(msg.kind)}`)
  }
}

function validateEvent(body: Record<string, unknown>): void {
  if (body.op === 'batches' || body.op === 'acks') {
    const inner = body.op === 'batches' ? 'batch' : 'ack'
    const list = body[body.op]
    if (!Array.isArray(list) || list.length === 0 || list.length > MAX_BUNDLE) {
      throw malformed(
        `event.${body.op} must be an array of 1..${MAX_BUNDLE} ${inner} bodies (got ${describe(list)})`,
      )
    }
    for (const item of list) {
      if (!isObject(item) || item.op !== inner) {
        throw malformed(
          `every entry of event.${body.op} must be an event ${inner} body (got ${describe(item)})`,
        )
      }
      validateEvent(item)
    }
  } else if (body.op === 'batch') {
    field(body, 'event', 'partition', isUint, 'a non-negative integer')
    field(body, 'event', 'epoch', isUint, 'a non-negative integer')
    field(body, 'event', 'producerId', isString, 'a string')
    field(body, 'event', 'sequence', isUint, 'a non-negative integer')
    optional(body, 'firstSequence', isUint, 'a non-negative integer')
    optional(body, 'eventSequences', isUintArray, 'an array of non-negative integers')
    field(body, 'event', 'count', isUint, 'a non-negative integer')
    field(body, 'event', 'payload', isBytes, 'bytes')
  } else if (body.op === 'ack') {
    field(body, 'event', 'partition', isUint, 'a non-negative integer')
    field(body, 'event', 'producerId', isString, 'a string')
    field(body, 'event', 'sequence', isUint, 'a non-negative integer')
    field(body, 'event', 'ok', isBool, 'a boolean')
    optional(body, 'error', isSerializedError, 'an error object')
  } else {
    throw malformed(`unknown event op ${describe(body.op)}`)
  }
}

function validateControl(body: Record<string, unknown>): void {
  switch (body.op) {
    case 'hello':
      field(body, 'control.hello', 'versions', isUintArray, 'an array of non-negative integers')
      field(body, 'control.hello', 'nodeId', isNonEmptyString, 'a non-empty string')
      field(body, 'control.hello', 'role', isRole, `one of ${ROLES.join(', ')}`)
      optional(body, 'token', isString, 'a string')
      return
    case 'welcome':
      field(body, 'control.welcome', 'version', isUint, 'a non-negative integer')
      field(body, 'control.welcome', 'nodeId', isNonEmptyString, 'a non-empty string')
      field(body, 'control.welcome', 'role', isRole, `one of ${ROLES.join(', ')}`)
      return
    case 'error':
      field(body, 'control.error', 'code', isString, 'a string')
      field(body, 'control.error', 'message', isString, 'a string')
      field(body, 'control.error', 'fatal', isBool, 'a boolean')
      return
    case 'join':
      // The job identity a worker joins with (checked by the coordinator). Optional: workers
      // older than these fields leave them out. The other join fields: control.ts parseJoin.
      optional(body, 'jobId', isString, 'a string')
      optional(body, 'sources', isStringArray, 'an array of strings')
      optional(body, 'sinks', isStringArray, 'an array of strings')
      return
    default:
      requireOp(body, 'control', CONTROL_COMMAND_OPS)
  }
}

// --- small, allocation-free predicates --------------------------------------------------------

function isUint(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
}
function isFiniteNonNeg(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0
}
function isString(v: unknown): v is string {
  return typeof v === 'string'
}
function isNonEmptyString(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && v.length <= 256
}
function isBool(v: unknown): v is boolean {
  return typeof v === 'boolean'
}
function isBytes(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array
}
function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array)
}
function isUintArray(v: unknown): v is number[] {
  return Array.isArray(v) && v.every(isUint)
}
function isStringArray(v: unknown): v is string[] {
  return Array.isArray(v) && v.every(isString)
}
function isRole(v: unknown): boolean {
  return typeof v === 'string' && (ROLES as readonly string[]).includes(v)
}
function isSerializedError(v: unknown): v is SerializedError {
  return isObject(v) && typeof v.code === 'string' && typeof v.message === 'string'
}

function requireOp(body: Record<string, unknown>, kind: string, ops: ReadonlySet<string>): void {
  if (typeof body.op !== 'string' || !ops.has(body.op))
    throw malformed(`unknown ${kind} op ${describe(body.op)}`)
}
function field(
  body: Record<string, unknown>,
  where: string,
  name: string,
  ok: (v: unknown) => boolean,
  expected: string,
): void {
  if (!ok(body[name])) throw malformed(`${where}.${name} must be ${expected} (got ${describe(body[name])})`)
}
function optional(
  body: Record<string, unknown>,
  name: string,
  ok: (v: unknown) => boolean,
  expected: string,
): void {
  const v = body[name]
  if (v !== undefined && v !== null && !ok(v))
    throw malformed(`${name} must be ${expected} (got ${describe(v)})`)
}

function describe(v: unknown): string {
  if (v === null) return 'nil'
  if (v instanceof Uint8Array) return `bytes(${v.length})`
  if (Array.isArray(v)) return `array(${v.length})`
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)
  if (typeof v === 'object') return 'map'
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v)
  return typeof v
}

/** Build a ShoalError code for a Control error received from a peer; unknown codes map to PEER_ERROR. */
export function peerErrorCode(code: string): (typeof ErrorCodes)[keyof typeof ErrorCodes] {
  return isErrorCode(code) ? code : ErrorCodes.PEER_ERROR
}
