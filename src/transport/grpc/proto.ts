/**
 * The gRPC schema (proto/shoal.proto) and the hand-built codec for its hot path.
 *
 * On the wire a Shoal gRPC connection is one `Connect` bidirectional stream of `Frame`s, and a
 * Frame is a protobuf message with a single `bytes envelope = 1` field holding the
 * msgpack-encoded envelope (src/protocol/codec.ts `encodeEnvelope`). Its protobuf encoding is
 * fixed and tiny: tag 0x0a (field 1, wire type 2), a varint length, the bytes. So
 * {@link shoalServiceDefinition} is built by hand with {@link encodeFrameMessage} /
 * {@link decodeFrameMessage} as serializers instead of going through protobufjs: no message
 * object, no reflection, no Writer, one copy on encode and a zero-copy view on decode. The
 * result is byte-for-byte what any protobuf library produces and accepts (a test checks it
 * against the proto-loader-built codec).
 *
 * {@link loadShoalPackageDefinition} loads the full schema with @grpc/proto-loader for tools,
 * tests and the typed mirror messages; nothing on the data path needs the .proto file.
 */
import { existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import { ErrorCodes, InvalidOptionError, ProtocolError } from '../../errors.ts'

/** Fully qualified gRPC service name; also the name health checks use for this service. */
export const SHOAL_SERVICE_NAME = 'shoal.v1.Shoal'
/** HTTP/2 path of the bidirectional transport RPC. */
export const CONNECT_METHOD_PATH = '/shoal.v1.Shoal/Connect'

// -------------------------------------------------------------------------------------------
// The hand-built Frame codec.

/** Protobuf key of `Frame.envelope`: field 1, wire type 2 (length-delimited). */
const ENVELOPE_TAG = 0x0a

function varintSize(value: number): number {
  let size = 1
  while (value > 0x7f) {
    value = Math.floor(value / 128)
    size++
  }
  return size
}

/**
 * Encode a `Frame` whose `envelope` is `envelope` (msgpack bytes of one envelope). One
 * allocation and one copy; the result is exactly what protobufjs would produce for a
 * non-empty envelope. An empty envelope encodes as `0a 00`, which the decoder rejects.
 */
export function encodeFrameMessage(envelope: Uint8Array): Buffer {
  const len = envelope.length
  const out = Buffer.allocUnsafe(1 + varintSize(len) + len)
  out[0] = ENVELOPE_TAG
  let pos = 1
  let v = len
  while (v > 0x7f) {
    out[pos++] = (v & 0x7f) | 0x80
    v = Math.floor(v / 128)
  }
  out[pos++] = v
  out.set(envelope, pos)
  return out
}

function malformed(message: string): ProtocolError {
  return new ProtocolError(ErrorCodes.MALFORMED_MESSAGE, `malformed Frame: ${message}`)
}

/** End position of the last varint read by {@link readVarint} (avoids a tuple per call). */
let varintEnd = 0

/** Read a base-128 varint (at most 10 bytes) as a number; exact up to 2^53. */
function readVarint(buf: Uint8Array, pos: number): number {
  let value = 0
  let scale = 1
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw malformed(`truncated varint at offset ${pos}`)
    const byte = buf[pos++] as number
    value += (byte & 0x7f) * scale
    if (byte < 0x80) {
      varintEnd = pos
      return value
    }
    scale *= 128
  }
  throw malformed(`varint longer than 10 bytes at offset ${pos - 10}`)
}

/**
 * Decode a `Frame` message and return its `envelope` bytes as a view of `buf` (no copy; grpc-js
 * hands every deserializer a freshly assembled buffer). Follows protobuf's rules: fields in
 * any order, unknown fields (varint, fixed64, length-delimited, fixed32) skipped, the last
 * `envelope` wins. Throws ProtocolError (SHOAL_ERR_MALFORMED_MESSAGE) on a truncated or
 * invalid message, on field 1 with the wrong wire type, on groups, and on a Frame without a
 * non-empty envelope.
 */
export function decodeFrameMessage(buf: Uint8Array): Buffer {
  const bytes = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)
  const end = bytes.length
  // What every sender emits (one envelope field spanning the message) takes one loop turn.
  let envelope: Buffer | undefined
  let pos = 0
  while (pos < end) {
    const key = readVarint(bytes, pos)
    pos = varintEnd
    const field = Math.floor(key / 8)
    const wireType = key % 8
    if (field === 0) throw malformed(`field number 0 at offset ${pos}`)
    switch (wireType) {
      case 0: // varint
        readVarint(bytes, pos)
        pos = varintEnd
        break
      case 1: // fixed64
        pos += 8
        break
      case 2: {
        const len = readVarint(bytes, pos)
        pos = varintEnd
        if (len > end - pos) throw malformed(`field ${field} declares ${len} bytes, ${end - pos} remain`)
        if (field === 1) envelope = bytes.subarray(pos, pos + len)
        pos += len
        break
      }
      case 5: // fixed32
        pos += 4
        break
      default:
        throw malformed(`unsupported wire type ${wireType} for field ${field}`)
    }
    if (field === 1 && wireType !== 2) throw malformed(`field 1 (envelope) has wire type ${wireType}, not 2`)
    if (pos > end) throw malformed(`field ${field} runs past the end of the message`)
  }
  if (envelope === undefined || envelope.length === 0) throw malformed('no envelope')
  return envelope
}

// -------------------------------------------------------------------------------------------
// The service definitions.

/** grpc-js method definition of `Connect`, carrying envelope bytes both ways. */
export type ConnectMethodDefinition = MethodDefinition<Uint8Array, Uint8Array>

/** The `shoal.v1.Shoal` service as grpc-js sees it: `server.addService(def, { Connect })`. */
export interface ShoalServiceDefinition extends ServiceDefinition {
  readonly Connect: ConnectMethodDefinition
}

/**
 * The hand-built service definition used on the wire. Clients write envelope bytes
 * (`Uint8Array`) and read envelope bytes (a `Buffer` view); nothing else is (de)serialized.
 * Usable with `server.addService` and `new grpc.Client(...).makeBidiStreamRequest(...)` or
 * `grpc.makeClientConstructor(shoalServiceDefinition, 'shoal.v1.Shoal')`.
 */
export const shoalServiceDefinition: ShoalServiceDefinition = Object.freeze({
  Connect: Object.freeze({
    path: CONNECT_METHOD_PATH,
    requestStream: true,
    responseStream: true,
    requestSerialize: encodeFrameMessage,
    requestDeserialize: decodeFrameMessage,
    responseSerialize: encodeFrameMessage,
    responseDeserialize: decodeFrameMessage,
    originalName: 'connect',
  }),
})

// -------------------------------------------------------------------------------------------
// Loading proto/shoal.proto with @grpc/proto-loader.

/**
 * proto-loader options used for the schema: camelCase field names (as in messages.ts), 64-bit
 * integers as JS numbers (all Shoal counters stay below 2^53), enums as their names, bytes as
 * Buffers, defaults filled in, a virtual field naming the set member of each oneof.
 */
export const PROTO_LOADER_OPTIONS: Readonly<protoLoader.Options> = Object.freeze({
  keepCase: false,
  longs: Number,
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
})

const PROTO_FILE = join('proto', 'shoal.proto')

/**
 * Locate proto/shoal.proto: walk up from this module to the package root (the first directory
 * with a package.json and a proto/shoal.proto). Works from src/transport/grpc with tsx and
 * from a compiled dist/ (dist/transport/grpc or dist/src/transport/grpc), whose proto/ sits at
 * the package root (package.json "files" ships it).
 */
export function findShoalProtoPath(fromDir: string = dirname(fileURLToPath(import.meta.url))): string {
  let dir = resolve(fromDir)
  for (;;) {
    const candidate = join(dir, PROTO_FILE)
    if (existsSync(join(dir, 'package.json')) && existsSync(candidate)) return candidate
    const parent = dirname(dir)
    if (parent === dir) break
    dir = parent
  }
  throw new InvalidOptionError(
    `cannot find ${PROTO_FILE} in any package root above ${fromDir}; pass protoPath explicitly`,
  )
}

let cachedDefinition: protoLoader.PackageDefinition | undefined

/**
 * Load proto/shoal.proto (memoized when `protoPath` is not given). Throws InvalidOptionError
 * when the file cannot be found, and proto-loader's error when it does not parse.
 */
export function loadShoalPackageDefinition(protoPath?: string): protoLoader.PackageDefinition {
  if (protoPath !== undefined) return protoLoader.loadSync(protoPath, { ...PROTO_LOADER_OPTIONS })
  cachedDefinition ??= protoLoader.loadSync(findShoalProtoPath(), { ...PROTO_LOADER_OPTIONS })
  return cachedDefinition
}

/**
 * The proto-loader-built (protobufjs) definition of `shoal.v1.Shoal`. Equivalent on the wire to
 * {@link shoalServiceDefinition} but slower: its Connect messages are `{ envelope: Buffer }`
 * objects. For tools and cross-checks, not the data path.
 */
export function loadShoalServiceDefinition(protoPath?: string): protoLoader.ServiceDefinition {
  const def = loadShoalPackageDefinition(protoPath)[SHOAL_SERVICE_NAME]
  if (def === undefined || 'format' in def) {
    throw new InvalidOptionError(`${protoPath ?? PROTO_FILE} does not define service ${SHOAL_SERVICE_NAME}`)
  }
  return def
}
