import { describe, expect, it } from 'vitest'
import { ErrorCodes, FrameTooLargeError, InvalidOptionError, type ShoalError } from '../../../src/errors.ts'
import { FrameParser } from '../../../src/protocol/framing.ts'
import { collector, expectProtocolError, frameOf, headerOf, patterned, splitAt, unpooled } from './helpers.ts'

const MAX = 4096

/** Payload sizes around the interesting boundaries: tiny, header-sized, 1-byte and 2-byte edges. */
const SIZES = [1, 2, 3, 4, 5, 7, 8, 255, 256, 257, 1000]
const PAYLOADS = SIZES.map((len, i) => patterned(len, i + 1))
const STREAM = Buffer.concat(PAYLOADS.map(frameOf))

function expectPayloads(actual: readonly Buffer[], expected: readonly Buffer[]): void {
  expect(actual.map((b) => b.toString('hex'))).toEqual(expected.map((b) => b.toString('hex')))
}

/** Bytes the parser should hold after `fed` bytes of a stream of frames with `sizes`. */
function expectedBuffered(sizes: readonly number[], fed: number): number {
  let rest = fed
  for (const len of sizes) {
    if (rest < 4 + len) return rest < 4 ? rest : rest - 4
    rest -= 4 + len
  }
  return 0
}

describe('FrameParser: input split anywhere', () => {
  it('delivers the same frames for every single split point', () => {
    for (let i = 0; i <= STREAM.length; i++) {
      const c = collector(MAX)
      c.parser.push(STREAM.subarray(0, i))
      expect(c.parser.bufferedBytes).toBe(expectedBuffered(SIZES, i))
      c.parser.push(STREAM.subarray(i))
      expectPayloads(c.copies, PAYLOADS)
      expect(c.parser.bufferedBytes).toBe(0)
      c.parser.end()
      expect(c.parser.failed).toBeNull()
    }
  })

  it('delivers the same frames for every pair of split points (three chunks, some empty)', () => {
    const sizes = [1, 3, 4, 9, 2]
    const payloads = sizes.map((len, i) => patterned(len, 100 + i))
    const stream = Buffer.concat(payloads.map(frameOf))
    for (let i = 0; i <= stream.length; i++) {
      for (let j = i; j <= stream.length; j++) {
        const c = collector(MAX)
        for (const chunk of splitAt(stream, [i, j])) c.parser.push(chunk)
        expectPayloads(c.copies, payloads)
        c.parser.end()
      }
    }
  })

  it('delivers the same frames fed byte by byte, holding exactly the partial frame', () => {
    const c = collector(MAX)
    let delivered = 0
    for (let i = 0; i < STREAM.length; i++) {
      c.parser.push(STREAM.subarray(i, i + 1))
      expect(c.parser.bufferedBytes).toBe(expectedBuffered(SIZES, i + 1))
      // A frame is delivered exactly when its last byte arrives, never earlier or later.
      let boundaries = 0
      let off = 0
      for (const len of SIZES) {
        off += 4 + len
        if (off <= i + 1) boundaries++
      }
      expect(c.raw.length).toBe(boundaries)
      delivered = c.raw.length
    }
    expect(delivered).toBe(SIZES.length)
    expectPayloads(c.copies, PAYLOADS)
    c.parser.end()
  })

  it('delivers many frames from one chunk, in order', () => {
    const payloads = Array.from({ length: 1000 }, (_, i) => patterned(1 + (i % 17), i))
    const c = collector(MAX)
    c.parser.push(Buffer.concat(payloads.map(frameOf)))
    expectPayloads(c.copies, payloads)
    expect(c.parser.bufferedBytes).toBe(0)
  })

  it('accepts empty chunks anywhere without effect', () => {
    const c = collector(MAX)
    c.parser.push(Buffer.alloc(0))
    c.parser.push(STREAM.subarray(0, 2))
    c.parser.push(Buffer.alloc(0))
    expect(c.parser.bufferedBytes).toBe(2)
    c.parser.push(STREAM.subarray(2))
    c.parser.push(Buffer.alloc(0))
    expectPayloads(c.copies, PAYLOADS)
    c.parser.end()
  })

  it('delivers payloads that span many chunks with their exact length', () => {
    const big = patterned(200_000, 9)
    const stream = frameOf(big)
    const c = collector(big.length)
    for (let i = 0; i < stream.length; i += 1000) c.parser.push(stream.subarray(i, i + 1000))
    expect(c.raw).toHaveLength(1)
    expect(c.raw[0]!.length).toBe(big.length)
    expect(c.raw[0]!.equals(big)).toBe(true)
  })
})

describe('FrameParser: maxFrameBytes', () => {
  const max = 64

  it('accepts a frame of exactly maxFrameBytes, whole or split', () => {
    const payload = patterned(max, 3)
    const stream = frameOf(payload)
    for (let i = 0; i <= stream.length; i++) {
      const c = collector(max)
      for (const chunk of splitAt(stream, [i])) c.parser.push(chunk)
      expectPayloads(c.copies, [payload])
      c.parser.end()
    }
  })

  it('accepts maxFrameBytes = 1 with one-byte frames', () => {
    const c = collector(1)
    c.parser.push(Buffer.concat([frameOf(Buffer.from([7])), frameOf(Buffer.from([8]))]))
    expectPayloads(c.copies, [Buffer.from([7]), Buffer.from([8])])
  })

  it('rejects maxFrameBytes + 1 from the header alone, before any body byte arrives', () => {
    const c = collector(max)
    const err = expectProtocolError(() => c.parser.push(headerOf(max + 1)), ErrorCodes.FRAME_TOO_LARGE)
    expect(err).toBeInstanceOf(FrameTooLargeError)
    expect(err.data).toEqual({ declared: max + 1, max })
    expect(c.parser.bufferedBytes).toBe(0)
    expect(c.parser.failed).toBe(err)
    expect(c.raw).toHaveLength(0)
  })

  it('rejects a too-large header split across single-byte chunks when its last byte arrives', () => {
    const c = collector(max)
    const header = headerOf(max + 1)
    for (let i = 0; i < 3; i++) {
      c.parser.push(header.subarray(i, i + 1))
      expect(c.parser.bufferedBytes).toBe(i + 1)
    }
    expectProtocolError(() => c.parser.push(header.subarray(3)), ErrorCodes.FRAME_TOO_LARGE)
    expect(c.parser.bufferedBytes).toBeLessThanOrEqual(4)
  })

  it('rejects a 4 GiB declaration without allocating for it', () => {
    const c = collector(1 << 20)
    const err = expectProtocolError(() => c.parser.push(headerOf(0xffffffff)), ErrorCodes.FRAME_TOO_LARGE)
    expect(err.data).toEqual({ declared: 0xffffffff, max: 1 << 20 })
    expect(c.parser.bufferedBytes).toBe(0)
  })

  it('delivers the valid frames before a too-large header in the same chunk, then throws', () => {
    const c = collector(max)
    const ok = [patterned(10, 1), patterned(max, 2)]
    const chunk = Buffer.concat([...ok.map(frameOf), headerOf(max + 1), patterned(max + 1, 3)])
    expectProtocolError(() => c.parser.push(chunk), ErrorCodes.FRAME_TOO_LARGE)
    expectPayloads(c.copies, ok)
  })

  it('rejects invalid maxFrameBytes values with INVALID_OPTION', () => {
    for (const bad of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 32]) {
      let thrown: unknown
      try {
        new FrameParser(bad, () => {})
      } catch (err) {
        thrown = err
      }
      expect(thrown, String(bad)).toBeInstanceOf(InvalidOptionError)
      expect((thrown as ShoalError).code).toBe(ErrorCodes.INVALID_OPTION)
    }
    expect(() => new FrameParser(2 ** 32 - 1, () => {})).not.toThrow()
  })
})

describe('FrameParser: malformed streams', () => {
  it('rejects a zero-length frame, whether the header arrives whole or split', () => {
    for (const cut of [0, 1, 2, 3]) {
      const c = collector(MAX)
      const stream = Buffer.concat([frameOf(patterned(5, 1)), headerOf(0), frameOf(patterned(5, 2))])
      const chunks = splitAt(stream, [9 + cut])
      c.parser.push(chunks[0]!)
      expectProtocolError(() => c.parser.push(chunks[1]!), ErrorCodes.MALFORMED_FRAME)
      expectPayloads(c.copies, [patterned(5, 1)])
    }
  })

  it('end() at a frame boundary (or on a fresh parser) succeeds', () => {
    const fresh = new FrameParser(MAX, () => {})
    expect(() => fresh.end()).not.toThrow()
    const c = collector(MAX)
    c.parser.push(STREAM)
    expect(() => c.parser.end()).not.toThrow()
    expect(c.parser.failed).toBeNull()
  })

  it('end() inside a frame throws MALFORMED_FRAME, at every cut inside a frame', () => {
    const payload = patterned(10, 4)
    const stream = Buffer.concat([frameOf(patterned(3, 1)), frameOf(payload)])
    const start = 4 + 3
    // Inside the header (1..3 bytes), exactly after the header (nothing of the body yet), mid-body.
    for (let cut = start + 1; cut < stream.length; cut++) {
      const c = collector(MAX)
      c.parser.push(stream.subarray(0, cut))
      const err = expectProtocolError(() => c.parser.end(), ErrorCodes.MALFORMED_FRAME)
      expect(c.parser.failed).toBe(err)
      expect(c.copies).toHaveLength(1)
      // A parser that failed in end() refuses further input too.
      expect(() => c.parser.push(stream.subarray(cut))).toThrow(err)
      expect(c.copies).toHaveLength(1)
    }
  })

  it('after an error every push() rethrows the same error and nothing more is delivered', () => {
    const c = collector(64)
    const first = expectProtocolError(
      () => c.parser.push(Buffer.concat([headerOf(65), patterned(65, 1)])),
      ErrorCodes.FRAME_TOO_LARGE,
    )
    // Never resynchronizes: not on a fresh valid frame, nor on an empty chunk, nor on a header.
    for (const next of [frameOf(patterned(5, 1)), Buffer.alloc(0), headerOf(1), STREAM]) {
      let again: unknown
      try {
        c.parser.push(next)
      } catch (err) {
        again = err
      }
      expect(again).toBe(first)
    }
    expect(c.raw).toHaveLength(0)
    expect(c.parser.failed).toBe(first)
    expect(c.parser.bufferedBytes).toBe(0)
  })

  it('a zero-length error is sticky too', () => {
    const c = collector(MAX)
    const first = expectProtocolError(() => c.parser.push(headerOf(0)), ErrorCodes.MALFORMED_FRAME)
    expect(() => c.parser.push(frameOf(patterned(3, 3)))).toThrow(first)
    expect(c.raw).toHaveLength(0)
  })
})

describe('FrameParser: zero copy', () => {
  it('delivers a frame wholly inside a chunk as a view of that chunk', () => {
    const c = collector(MAX)
    // Put the stream at a non-zero offset inside a larger ArrayBuffer.
    const backing = Buffer.alloc(STREAM.length + 16) // alloc: never the shared pool
    STREAM.copy(backing, 8)
    const chunk = backing.subarray(8, 8 + STREAM.length)
    c.parser.push(chunk)
    expect(c.raw).toHaveLength(PAYLOADS.length)
    let offset = chunk.byteOffset
    for (const [i, payload] of c.raw.entries()) {
      expect(payload.buffer).toBe(chunk.buffer)
      expect(payload.byteOffset).toBe(offset + 4)
      expect(payload.length).toBe(SIZES[i])
      offset += 4 + SIZES[i]!
    }
    // A view: writes to the chunk show through.
    chunk[4] = chunk[4]! ^ 0xff
    expect(c.raw[0]![0]).toBe(chunk[4])
  })

  it('delivers a body wholly inside a chunk as a view even when its header was split', () => {
    const c = collector(MAX)
    const stream = unpooled(Buffer.concat([frameOf(patterned(6, 1)), frameOf(patterned(20, 2))]))
    const [a, b] = splitAt(stream, [2])
    c.parser.push(a!)
    c.parser.push(b!)
    expect(c.raw[0]!.buffer).toBe(stream.buffer)
    expect(c.raw[0]!.byteOffset).toBe(b!.byteOffset + 2)
    expect(c.raw[1]!.buffer).toBe(stream.buffer)
    expect(c.raw[1]!.byteOffset).toBe(b!.byteOffset + 2 + 6 + 4)
    expectPayloads(c.copies, [patterned(6, 1), patterned(20, 2)])
  })

  it('assembles a body split across chunks, and views the next frame wholly inside the last chunk', () => {
    const c = collector(MAX)
    const stream = unpooled(Buffer.concat([frameOf(patterned(6, 1)), frameOf(patterned(20, 2))]))
    const [a, b] = splitAt(stream, [7])
    c.parser.push(a!)
    c.parser.push(b!)
    expect(c.raw[0]!.buffer).not.toBe(stream.buffer)
    expect(c.raw[1]!.buffer).toBe(stream.buffer)
    expect(c.raw[1]!.byteOffset).toBe(b!.byteOffset + 3 + 4)
    expectPayloads(c.copies, [patterned(6, 1), patterned(20, 2)])
  })

  it('copies a frame that spans chunks, so later changes to the chunks do not show through', () => {
    const payload = patterned(50, 5)
    const stream = frameOf(payload)
    const [a, b] = splitAt(unpooled(stream), [20])
    const c = collector(MAX)
    c.parser.push(a!)
    c.parser.push(b!)
    expect(c.raw).toHaveLength(1)
    const delivered = c.raw[0]!
    expect(delivered.buffer).not.toBe(a!.buffer)
    expect(delivered.length).toBe(payload.length)
    a!.fill(0)
    b!.fill(0)
    expect(delivered.equals(payload)).toBe(true)
    // And the parser does not reuse the assembly buffer for the next frame.
    c.parser.push(frameOf(patterned(50, 6)).subarray(0, 30))
    c.parser.push(frameOf(patterned(50, 6)).subarray(30))
    expect(delivered.equals(payload)).toBe(true)
  })
})
