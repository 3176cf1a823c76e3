// Shared helpers for the protocol unit tests (not a test file: vitest only collects *.test.ts).
import { expect } from 'vitest'
import { ErrorCodes, ProtocolError, ShoalError, type ErrorCode } from '../../../src/errors.ts'
import { FrameParser } from '../../../src/protocol/framing.ts'

/** The codes FrameParser may throw, and the codes decodeEnvelope may throw. */
export const FRAME_ERROR_CODES: readonly ErrorCode[] = [
  ErrorCodes.FRAME_TOO_LARGE,
  ErrorCodes.MALFORMED_FRAME,
]
export const DECODE_ERROR_CODES: readonly ErrorCode[] = [
  ErrorCodes.MALFORMED_MESSAGE,
  ErrorCodes.UNKNOWN_KIND,
  ErrorCodes.UNSUPPORTED_VERSION,
]

/** Runs fn, asserts it throws a ProtocolError with `code`, and returns the error. */
export function expectProtocolError(fn: () => unknown, code: ErrorCode): ProtocolError {
  let thrown: unknown
  try {
    fn()
  } catch (err) {
    thrown = err
  }
  expect(thrown, `expected a ProtocolError with code ${code}`).toBeInstanceOf(ProtocolError)
  expect(thrown).toBeInstanceOf(ShoalError)
  const err = thrown as ProtocolError
  expect(err.code).toBe(code)
  return err
}

/** Throws unless `err` is a ProtocolError whose code is one of `codes`. */
export function assertDocumentedError(
  err: unknown,
  codes: readonly ErrorCode[],
): asserts err is ProtocolError {
  if (!(err instanceof ProtocolError)) {
    throw new Error(`expected a ProtocolError, got ${String(err)}`, { cause: err })
  }
  if (!codes.includes(err.code)) {
    throw new Error(`unexpected code ${err.code}: ${err.message}`, { cause: err })
  }
}

/** A length-prefixed frame built by hand (independent of encodeFrame). */
export function frameOf(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(4 + payload.length)
  out.writeUInt32BE(payload.length, 0)
  out.set(payload, 4)
  return out
}

/** A copy in memory of its own (Buffer.alloc never uses the shared pool), for identity checks. */
export function unpooled(data: Uint8Array): Buffer {
  const out = Buffer.alloc(data.length)
  out.set(data)
  return out
}

/** A header declaring `len` payload bytes. */
export function headerOf(len: number): Buffer {
  const out = Buffer.alloc(4)
  out.writeUInt32BE(len, 0)
  return out
}

/** A payload of `len` bytes whose content depends on `seed`, so frames are distinguishable. */
export function patterned(len: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(len)
  for (let i = 0; i < len; i++) out[i] = (seed * 31 + i * 7 + (i >> 8)) & 0xff
  return out
}

export interface Collector {
  parser: FrameParser
  /** Payloads exactly as delivered (possibly views of the pushed chunks). */
  raw: Buffer[]
  /** Copies taken at delivery time. */
  copies: Buffer[]
}

export function collector(maxFrameBytes: number): Collector {
  const raw: Buffer[] = []
  const copies: Buffer[] = []
  const parser = new FrameParser(maxFrameBytes, (payload) => {
    raw.push(payload)
    copies.push(Buffer.from(payload))
  })
  return { parser, raw, copies }
}

/** Splits `data` at the given cut points (any order, duplicates and out-of-range values allowed). */
export function splitAt(data: Uint8Array, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.max(0, Math.min(data.length, c))))].sort((a, b) => a - b)
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  const chunks: Buffer[] = []
  let prev = 0
  for (const p of points) {
    chunks.push(buf.subarray(prev, p))
    prev = p
  }
  chunks.push(buf.subarray(prev))
  return chunks
}

/** Deep copy in which every Uint8Array becomes `{ $bytes: hex }`, so bytes compare as bytes. */
export function normalize(value: unknown): unknown {
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value).toString('hex') }
  if (Array.isArray(value)) return value.map(normalize)
  if (typeof value === 'object' && value !== null) {
    // fromEntries (not assignment) so a '__proto__' key stays an own property.
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normalize(v)]))
  }
  return value
}
