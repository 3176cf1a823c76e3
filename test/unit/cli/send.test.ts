/**
 * `shoal send`'s NDJSON loop (sendNdjson) against a stand-in client: lines cut anywhere by the
 * input's chunks, line endings, malformed lines with their numbers, backpressure, strict mode.
 * The cluster path is tested end to end in test/e2e/processing.test.ts.
 */
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { closeSync, constants, mkdtempSync, openSync, writeFileSync, writeSync } from 'node:fs'
import { Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough, Readable, Writable } from 'node:stream'
import { Packr } from 'msgpackr'
import { describe, expect, it, onTestFinished } from 'vitest'
import type { ShoalClient } from '../../../src/client/client.ts'
import { openInput, sendNdjson, type SendOptions } from '../../../src/cli/send.ts'
import { newBatchBuffer, sealBatch, type EventWriter } from '../../../src/client/encode.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const unpackr = new Packr({ useRecords: true, moreTypes: true })

/**
 * A ShoalClient stand-in: records what is sent, acks everything on flush, pushes back every
 * `room` events; `onDrain` runs while the sender waits.
 */
function fakeClient(
  room = Infinity,
  onDrain?: () => void,
): {
  client: ShoalClient
  sent: [string, unknown][]
  drains: number
  /** Events that came through sendWritten. */
  written: number
} {
  const sent: [string, unknown][] = []
  const stats = { sent: 0, acked: 0, batches: 0, retries: 0, failed: 0 }
  const r = { sent, drains: 0, written: 0, client: null as unknown as ShoalClient }
  r.client = {
    stats,
    send(key: string, event: unknown): boolean {
      sent.push([key, event])
      stats.sent++
      return stats.sent % room !== 0
    },
    // The fast path: the event as the writer encodes it, decoded as a worker would.
    sendWritten(key: string, writer: EventWriter): boolean | null {
      const f = newBatchBuffer(16)
      if (!writer.writeEvent(f, key)) return null
      const [[k, event]] = unpackr.unpack(sealBatch(f, 1)) as [[string, unknown]]
      r.written++
      expect(k).toBe(key)
      return r.client.send(k, event)
    },
    async drain(): Promise<void> {
      r.drains++
      onDrain?.()
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
  o: Partial<SendOptions> & {
    room?: number
    onDrain?: () => void
    client?: ReturnType<typeof fakeClient>
  } = {},
): Promise<
  { events: [string, unknown][]; err: string; drains: number } & Awaited<ReturnType<typeof sendNdjson>>
> {
  const f = o.client ?? fakeClient(o.room, o.onDrain)
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

describe('sendNdjson while the cluster cannot take events', () => {
  it('says every 5 s what it waits for (e.g. no coordinator), then finishes when the events are acked', async () => {
    const f = fakeClient()
    const stats = f.client.stats as { lastRetry?: { code: string; message: string; at: number } }
    const errText = sink()
    let release: () => void = () => {}
    const acked = new Promise<void>((resolve) => (release = resolve))
    // The client retries (as during a coordinator outage) until the test lets the acks come.
    ;(f.client as { flush: () => Promise<void> }).flush = async () => {
      const retrying = setInterval(() => {
        stats.lastRetry = {
          code: 'SHOAL_ERR_NO_COORDINATOR',
          message: 'no coordinator reachable: partition 3 is not served until one leads again',
          at: performance.now(),
        }
        if (errText.text().includes('still sending')) release()
      }, 100)
      await acked
      clearInterval(retrying)
      f.client.stats.acked = f.client.stats.sent
    }
    const summary = await sendNdjson(f.client, {
      input: Readable.from([Buffer.from('{"key":"a"}\n{"key":"b"}\n')]),
      keyField: 'key',
      strict: false,
      progress: null,
      err: errText.stream,
      out: sink().stream,
    })
    expect(errText.text()).toMatch(
      /^acked 0 of 2; still sending, SHOAL_ERR_NO_COORDINATOR \(no coordinator reachable: partition 3/,
    )
    expect(summary).toMatchObject({ sent: 2, acked: 2, failed: 0 })
  })
})

/** A named pipe: its read end non-blocking (as libuv leaves stdin) and a write end. */
function fifo(): { path: string; readFd: number; writeFd: number } {
  const path = join(mkdtempSync(join(tmpdir(), 'shoal-send-fifo-')), 'in')
  execFileSync('mkfifo', [path])
  const readFd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK)
  // Opened before the reader starts: without a writer a read would see the end at once.
  const writeFd = openSync(path, constants.O_WRONLY)
  return { path, readFd, writeFd }
}

describe('sendNdjson from a pipe (stdin)', () => {
  it('a pipe through its stream and readSync: every line in order, however the writer cuts it', async () => {
    // ~3 MiB, multi-byte characters, CRLF, a blank and a malformed line, no final newline:
    // many pipe-fulls, so lines and characters fall across the reads.
    const lines = Array.from({ length: 40_000 }, (_, i) =>
      i === 20_000
        ? '{"key":'
        : i === 30_000
          ? ''
          : JSON.stringify({ key: `k€${i % 13}`, i, pad: 'é'.repeat(i % 17) }),
    )
    const text = lines.map((l, i) => (i % 5 === 0 ? `${l}\r\n` : `${l}\n`)).join('') + '{"key":"last"}'
    const dir = mkdtempSync(join(tmpdir(), 'shoal-send-test-'))
    writeFileSync(join(dir, 'events.ndjson'), text)
    const { readFd, writeFd } = fifo()
    const writer = spawn('cat', [join(dir, 'events.ndjson')], { stdio: ['ignore', writeFd, 'inherit'] })
    closeSync(writeFd)
    const stream = new Socket({ fd: readFd, readable: true, writable: false })
    onTestFinished(() => {
      stream.destroy()
    })
    // Listened for before the send: cat may be done before the last line is sent.
    const exited = once(writer, 'exit').catch(() => {})
    const r = await send({ fd: readFd, stream }, { room: 5000 })
    await exited
    const want = lines.flatMap((_, i) => (i === 20_000 || i === 30_000 ? [] : [i]))
    expect(r.events.slice(0, -1).map(([, e]) => (e as { i: number }).i)).toEqual(want)
    expect(r.events.at(-1)).toEqual(['last', { key: 'last' }])
    expect(r.err).toMatch(/^line 20001: not valid JSON/)
    expect(r.lines).toBe(40_001)
    expect(r.malformed).toBe(1)
    expect(r.drains).toBeGreaterThan(0)
  })

  it('what the stream buffered comes before what readSync finds next, also across a wait for the client', async () => {
    // The stream stands in for libuv's reads of the same pipe: a line and a character split
    // between a stream chunk and the pipe, both before the first line and while the client
    // pushes back.
    const { readFd, writeFd } = fifo()
    const stream = new PassThrough()
    const euro = Buffer.from('€')
    stream.write(Buffer.concat([Buffer.from('{"key":"a","n":1}\n{"key":"'), euro.subarray(0, 1)]))
    writeSync(writeFd, Buffer.concat([euro.subarray(1), Buffer.from('","n":2}\n{"key":"c","n":3}\n')]))
    let waits = 0
    const r = send(
      { fd: readFd, stream },
      {
        room: 3,
        onDrain: () => {
          // While the sender waits on the client, the stream takes in more, then the pipe.
          if (waits++ > 0) return
          stream.write('{"key":"d","n":4}\n{"key":"e",')
          writeSync(writeFd, '"n":5}\n{"key":"f","n":6}')
          closeSync(writeFd)
          stream.end()
        },
      },
    )
    const got = await r
    closeSync(readFd)
    expect(got.events).toEqual([
      ['a', { key: 'a', n: 1 }],
      ['€', { key: '€', n: 2 }],
      ['c', { key: 'c', n: 3 }],
      ['d', { key: 'd', n: 4 }],
      ['e', { key: 'e', n: 5 }],
      ['f', { key: 'f', n: 6 }],
    ])
    expect(got.err).toBe('')
  })

  it('a slow writer: each line is sent as soon as it is written, before the next one or the end', async () => {
    const { readFd, writeFd } = fifo()
    const stream = new Socket({ fd: readFd, readable: true, writable: false })
    onTestFinished(() => {
      stream.destroy()
    })
    const f = fakeClient()
    const done = send({ fd: readFd, stream }, { client: f })
    const euro = Buffer.from('€')
    for (let i = 0; i < 5; i++) {
      // A character split across two writes, then the rest of the line.
      writeSync(writeFd, Buffer.concat([Buffer.from(`{"key":"k${i}","v":"`), euro.subarray(0, 2)]))
      writeSync(writeFd, Buffer.concat([euro.subarray(2), Buffer.from(`"}\n`)]))
      await waitFor(() => f.sent.length === i + 1, `line ${i + 1} to be sent`)
    }
    writeSync(writeFd, '{"key":"x"\n')
    closeSync(writeFd)
    const r = await done
    expect(r.events.map(([k, e]) => [k, (e as { v: string }).v])).toEqual(
      Array.from({ length: 5 }, (_, i) => [`k${i}`, '€']),
    )
    expect(r.err).toMatch(/^line 6: not valid JSON/)
  })
})
