/**
 * The NDJSON body parser of POST /events: the format `shoal send` reads, all or nothing.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { ErrorCodes, type ShoalError } from '../../../src/errors.ts'
import {
  NdjsonByteLines,
  NdjsonError,
  parseNdjson,
  readNdjson,
  type ByteLines,
} from '../../../src/ingest/ndjson.ts'
import { partitionForKey } from '../../../src/protocol/partition.ts'

const enc = (s: string): Uint8Array => new TextEncoder().encode(s)

function errorOf(body: Uint8Array | string, o?: Parameters<typeof parseNdjson>[1]): NdjsonError {
  try {
    parseNdjson(typeof body === 'string' ? enc(body) : body, o)
  } catch (err) {
    expect(err).toBeInstanceOf(NdjsonError)
    return err as NdjsonError
  }
  throw new Error('expected an NdjsonError')
}

describe('parseNdjson', () => {
  it('parses objects with a string or number key, skipping blank lines', () => {
    const r = parseNdjson(enc('{"key":"a","value":1}\n\n  \t\n{"key":7,"value":2}\r\n{"key":"c"}'))
    expect(r.lines).toBe(5)
    expect(r.events).toEqual([
      { key: 'a', event: { key: 'a', value: 1 } },
      { key: '7', event: { key: 7, value: 2 } },
      { key: 'c', event: { key: 'c' } },
    ])
    expect(parseNdjson(enc('')).events).toEqual([])
    expect(parseNdjson(enc('\n')).lines).toBe(1)
    // A lone CR ends a line too (readline, as `shoal send`); a BOM at the start is ignored.
    expect(parseNdjson(enc('\uFEFF{"key":"a"}\r{"key":"b"}\n')).events.map((e) => e.key)).toEqual(['a', 'b'])
    expect(parseNdjson(enc('{"user":"u1"}'), { keyField: 'user' }).events[0]!.key).toBe('u1')
  })

  it('names every malformed line, with its number, and counts them all', () => {
    const body = [
      '{"key":"ok"}',
      '{"key":',
      '[1,2]',
      '',
      '{"value":1}',
      '"str"',
      'null',
      '{"key":null}',
      '{"key":{"nested":1}}',
      '{"key":"ok2"}',
    ].join('\n')
    const err = errorOf(body)
    expect(err.code).toBe(ErrorCodes.HTTP_BAD_REQUEST)
    expect(err.malformed).toBe(7)
    expect(err.totalLines).toBe(10)
    expect(err.lines.map((l) => l.line)).toEqual([2, 3, 5, 6, 7, 8, 9])
    expect(err.lines[0]!.error).toMatch(/^not valid JSON/)
    expect(err.lines[1]!.error).toBe('expected a JSON object, got an array')
    expect(err.lines[2]!.error).toBe('field "key" must be a string or number')
    expect(err.message).toContain('7 of 10 lines are malformed')
    expect(err.message).toContain('nothing was applied')
  })

  it('invalid UTF-8 is a malformed line; the report is capped, the count is not', () => {
    const bad = Buffer.concat([
      Buffer.from('{"key":"a"}\n{"key":"'),
      Buffer.from([0xff, 0xfe]),
      Buffer.from('"}\n'),
    ])
    expect(errorOf(bad).lines).toEqual([{ line: 2, error: 'not valid UTF-8' }])
    const many = Array.from({ length: 250 }, (_, i) => (i % 2 === 0 ? 'x' : '{"key":"k"}')).join('\n')
    const err = errorOf(many, { maxReportedErrors: 100 })
    expect(err.lines).toHaveLength(100)
    expect(err.lines[99]!.line).toBe(199)
    expect(err.malformed).toBe(125)
  })
})

describe('parseNdjson properties', () => {
  it('random bytes: returns, or throws only NdjsonError', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }),
          fc
            .array(
              fc.constantFrom(
                '{',
                '}',
                '"key"',
                ':',
                '"',
                '1',
                ',',
                '\n',
                '\r',
                ' ',
                'null',
                '[',
                ']',
                '\\',
                'é',
              ),
            )
            .map((parts) => enc(parts.join(''))),
        ),
        (bytes) => {
          try {
            const r = parseNdjson(bytes)
            for (const e of r.events) expect(typeof e.key).toBe('string')
          } catch (err) {
            expect(err).toBeInstanceOf(NdjsonError)
            expect((err as ShoalError).code).toBe(ErrorCodes.HTTP_BAD_REQUEST)
            const e = err as NdjsonError
            expect(e.malformed).toBeGreaterThan(0)
            expect(e.lines.length).toBe(Math.min(e.malformed, 100))
          }
        },
      ),
      { numRuns: 2000 },
    )
  })

  const line = fc.oneof(
    {
      arbitrary: fc
        .record({
          key: fc.oneof(fc.string(), fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true })),
          value: fc.jsonValue(),
        })
        .map((o) => ({ good: true as const, text: JSON.stringify(o), key: String(o.key), event: o })),
      weight: 4,
    },
    {
      arbitrary: fc
        .oneof(
          fc.jsonValue().filter((v) => typeof v !== 'object' || v === null || Array.isArray(v)),
          fc.record({ value: fc.jsonValue() }),
          fc.record({ key: fc.oneof(fc.boolean(), fc.constant(null), fc.array(fc.integer())) }),
        )
        .map((v) => ({ good: false as const, text: JSON.stringify(v) })),
      weight: 1,
    },
    { arbitrary: fc.constantFrom('', ' ', '\t').map((text) => ({ good: null, text })), weight: 1 },
    {
      arbitrary: fc.string({ minLength: 1 }).filter((s) => {
        if (/[\r\n]/.test(s) || s.trim() === '') return false
        try {
          JSON.parse(s)
          return false
        } catch {
          return true
        }
      }),
      weight: 1,
    },
  )

  it('random lines: good ones parse exactly, malformed ones are named exactly', () => {
    fc.assert(
      fc.property(
        fc.array(line, { maxLength: 40 }),
        fc.constantFrom('\n', '\r\n'),
        fc.boolean(),
        (lines, eol, trailing) => {
          const items = lines.map((l) => (typeof l === 'string' ? { good: false as const, text: l } : l))
          const body = items.map((l) => l.text).join(eol) + (trailing && items.length > 0 ? eol : '')
          const expectedBad = items.flatMap((l, i) => (l.good === false ? [i + 1] : []))
          if (expectedBad.length > 0) {
            const err = errorOf(body)
            expect(err.lines.map((l) => l.line)).toEqual(expectedBad)
            expect(err.malformed).toBe(expectedBad.length)
            return
          }
          const r = parseNdjson(enc(body))
          // A final blank line without a line ending after it is no line at all.
          const lastBlankUnended = !trailing && items.length > 0 && items[items.length - 1]!.text === ''
          expect(r.lines).toBe(items.length - (lastBlankUnended ? 1 : 0))
          const good = items.filter((l) => l.good === true)
          expect(r.events.map((e) => e.key)).toEqual(good.map((g) => g.key))
          // JSON round trip of the generated object (-0 and such normalised the same way).
          expect(r.events.map((e) => e.event)).toEqual(
            good.map((g) => JSON.parse(JSON.stringify(g.event)) as unknown),
          )
          // POST /events hashes keys from their bytes (or text): the partitions of their text.
          const events = readNdjson(enc(body))
          const parts = Array.from(events.partitions(64).subarray(0, events.length))
          expect(parts).toEqual(good.map((g) => partitionForKey(g.key, 64)))
          events.release()
          if (events.length > 0) expect(() => events.key(0)).toThrow(/after release/)
        },
      ),
      { numRuns: 500 },
    )
  })
})

describe('NdjsonByteLines', () => {
  /** The lines of a whole text: ends at \r\n, \r or \n; a final line ending starts no line. */
  const reference = (text: string): string[] => {
    const lines = text.replace(/^\uFEFF/, '').split(/\r\n|\r|\n/)
    if (lines[lines.length - 1] === '') lines.pop()
    return lines
  }

  it('gives the same lines however the bytes are cut into chunks', () => {
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom('{"key":"a"}', 'x', '\n', '\r', '\r\n', ' ', 'é', '€', '😀', '\uFEFF'), {
          maxLength: 30,
        }),
        fc.array(fc.nat(), { maxLength: 6 }),
        (parts, cutsAt) => {
          const text = parts.join('')
          const bytes = Buffer.from(text)
          const cuts = [...new Set(cutsAt.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b)
          const splitter = new NdjsonByteLines()
          const got: string[] = []
          const take = (l: ByteLines): void => {
            for (let i = 0; i < l.count; i++) got.push(l.buf.toString('utf8', l.starts[i], l.ends[i]))
          }
          let from = 0
          for (const c of [...cuts, bytes.length]) {
            // A copy: the splitter may keep the caller's chunk only until its next push.
            take(splitter.push(Buffer.from(bytes.subarray(from, c))))
            from = c
          }
          take(splitter.end())
          expect(got).toEqual(reference(text))
        },
      ),
      { numRuns: 2000 },
    )
  })
})
