/**
 * `shoal send`'s NDJSON loop (sendNdjson) against a stand-in client: lines cut anywhere by the
 * input's chunks, line endings, malformed lines with their numbers, backpressure, strict mode.
 * The cluster path is tested end to end in test/e2e/processing.test.ts.
 */
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable, Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import type { ShoalClient } from '../../../src/client/client.ts'
import { openInput, sendNdjson, type SendOptions } from '../../../src/cli/send.ts'

/** A ShoalClient stand-in: records what is sent, acks everything on flush, pushes back every `room` events. */
function fakeClient(room = Infinity): {
  client: ShoalClient
  sent: [string, unknown][]
  drains: number
} {
  const sent: [string, unknown][] = []
  const stats = { sent: 0, acked: 0, batches: 0, retries: 0, failed: 0 }
  const r = { sent, drains: 0, client: null as unknown as ShoalClient }
  r.client = {
    stats,
    send(key: string, event: unknown): boolean {
      sent.push([key, event])
      stats.sent++
      return stats.sent % room !== 0
    },
    async drain(): Promise<void> {
      r.drains++
      await new Promise((resolve) => setImmediate(resolve))
    },
    flush(): Promise<void> {
      stats.acked = stats.sent
      return Promise.resolve()
    },
  } as unknown as ShoalClient
  return r
}

function sink(): { stream: Writable; text: () => string } {
  let text = ''
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      text += chunk.toString()
      cb()
    },
  })
  return { stream, text: () => text }
}

async function send(
  chunks: (string | Buffer)[] | SendOptions['input'],
  o: Partial<SendOptions> & { room?: number } = {},
): Promise<
  { events: [string, unknown][]; err: string; drains: number } & Awaited<ReturnType<typeof sendNdjson>>
> {
  const f = fakeClient(o.room)
  const err = sink()
  // Buffers, as fs and stdin give them (a string would never split a character).
  const input = !Array.isArray(chunks)
    ? chunks
    : Readable.from(
        chunks.map((c) => (typeof c === 'string' ? Buffer.from(c) : c)),
        {
          objectMode: false,
        },
      )
  const summary = await sendNdjson(f.client, {
    input,
    keyField: o.keyField ?? 'key',
    strict: o.strict ?? false,
    progress: null,
    err: err.stream,
    out: sink().stream,
  })
  return { ...summary, events: f.sent, err: err.text(), drains: f.drains }
}

/** Every way to cut `s` into two or three chunks (as bytes). */
function cuts(s: string): Buffer[][] {
  const b = Buffer.from(s)
  const out: Buffer[][] = []
  for (let i = 0; i <= b.length; i++) {
    out.push([b.subarray(0, i), b.subarray(i)])
    for (let j = i; j <= b.length; j += 3) out.push([b.subarray(0, i), b.subarray(i, j), b.subarray(j)])
  }
  return out
}

describe('sendNdjson', () => {
  it('sends every line wherever the chunks cut it: CRLF, lone CR, a final line without newline, multi-byte UTF-8', async () => {
    const text = '{"key":"a","v":1}\r\n{"key":"é€😀","v":2}\r{"key":"b","v":"ü"}\n\n{"key":3}'
    const expected = [
      ['a', { key: 'a', v: 1 }],
      ['é€😀', { key: 'é€😀', v: 2 }],
      ['b', { key: 'b', v: 'ü' }],
      ['3', { key: 3 }],
    ]
    for (const chunks of cuts(text)) {
      const r = await send(chunks)
      expect(r.err, JSON.stringify(chunks.map(String))).toBe('')
      expect(r.events).toEqual(expected)
      expect(r.lines).toBe(5)
      expect(r.malformed).toBe(0)
      expect(r.acked).toBe(4)
    }
  })

  it('a CR at the end of one chunk and the LF at the start of the next are one line ending', async () => {
    const r = await send(['{"key":"a"}\r', '\n{"key":"b"}\r', '\r\n'])
    expect(r.events.map(([k]) => k)).toEqual(['a', 'b'])
    // "\r" then "\r\n": the second is a blank line.
    expect(r.lines).toBe(3)
  })

  it('empty and whitespace-only lines are counted and skipped; a byte order mark at the start is ignored', async () => {
    const r = await send(['\uFEFF{"key":"a"}\n', '\n   \n\t\n{"key":"b"}\n'])
    expect(r.events.map(([k]) => k)).toEqual(['a', 'b'])
    expect(r.lines).toBe(5)
    expect(r.malformed).toBe(0)
  })

  it('reports malformed lines in the middle with their numbers and still sends the rest', async () => {
    const r = await send([
      '{"key":"a"}\n{"key":\n[1,2]\n{"va',
      'lue":3}\nnull\n"s"\n{"key":true}\n{"key":"b"}',
    ])
    expect(r.events.map(([k]) => k)).toEqual(['a', 'b'])
    expect(r.malformed).toBe(6)
    expect(r.lines).toBe(8)
    const lines = r.err.trim().split('\n')
    expect(lines).toHaveLength(6)
    expect(lines[0]).toMatch(/^line 2: not valid JSON/)
    expect(lines[1]).toBe('line 3: expected a JSON object, got an array')
    expect(lines[2]).toBe('line 4: field "key" must be a string or number')
    expect(lines[3]).toBe('line 5: expected a JSON object, got null')
    expect(lines[4]).toBe('line 6: expected a JSON object, got string')
    expect(lines[5]).toBe('line 7: field "key" must be a string or number')
  })

  it('--strict stops at the first malformed line', async () => {
    const r = await send(['{"key":"a"}\nx\n{"key":"b"}\n'], { strict: true })
    expect(r.events.map(([k]) => k)).toEqual(['a'])
    expect(r.malformed).toBe(1)
    expect(r.err).toMatch(/^line 2: not valid JSON/)
  })

  it('takes the key from --key-field, numbers stringified', async () => {
    const r = await send(['{"user":"u1","key":"no"}\n{"user":42}\n{"key":"k"}\n'], { keyField: 'user' })
    expect(r.events.map(([k]) => k)).toEqual(['u1', '42'])
    expect(r.err).toBe('line 3: field "user" must be a string or number\n')
  })

  it('waits for the client when it pushes back, and sends everything in order', async () => {
    const lines = Array.from({ length: 10_000 }, (_, i) => JSON.stringify({ key: `k${i % 7}`, i }))
    const text = lines.join('\n') + '\n'
    // Chunks of odd sizes, so lines and the pushback points fall anywhere.
    const chunks: string[] = []
    for (let i = 0; i < text.length; i += 4099) chunks.push(text.slice(i, i + 4099))
    const r = await send(chunks, { room: 100 })
    expect(r.drains).toBe(100)
    expect(r.events.map(([, e]) => (e as { i: number }).i)).toEqual(lines.map((_, i) => i))
    expect(r.lines).toBe(10_000)
  })

  it('invalid UTF-8 is replaced, as readline did, not fatal', async () => {
    const r = await send([
      Buffer.concat([Buffer.from('{"key":"a'), Buffer.from([0xff]), Buffer.from('"}\n')]),
    ])
    expect(r.events).toEqual([['a\uFFFD', { key: 'a\uFFFD' }]])
  })

  it('reads a named file in chunks: a line and a multi-byte character across the 1 MiB read boundary, CRLF, no final newline', async () => {
    // Line 1 pads the file so that the 3 bytes of '€' in line 2 straddle byte 1 MiB.
    const pad = 'x'.repeat((1 << 20) - '{"key":"p","pad":""}\r\n{"key":"'.length - 1)
    const text = `{"key":"p","pad":"${pad}"}\r\n{"key":"€","v":1}\r\n\r\n{"key":"z"}`
    expect(Buffer.from(text).indexOf(Buffer.from('€'))).toBe((1 << 20) - 1)
    const file = join(mkdtempSync(join(tmpdir(), 'shoal-send-test-')), 'events.ndjson')
    writeFileSync(file, text)
    const r = await send(openInput(file))
    expect(r.events.map(([k]) => k)).toEqual(['p', '€', 'z'])
    expect(r.lines).toBe(4)
    expect(r.err).toBe('')
  })
})
