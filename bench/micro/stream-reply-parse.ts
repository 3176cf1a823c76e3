/**
 * Micro-benchmark: what parsing one XREADGROUP reply costs a reader, with the parser ioredis uses
 * (redis-parser, buffers on: what RedisStreamSource's callBuffer gets) against a scan that only
 * walks the RESP bytes and records where each entry's id and `data` value are (the shape a reply
 * parser of Shoal's own would hand the JSON writer: docs/benchmarks.md, "What 300k entries/s
 * would take"). The scan is a measuring stick, not product code: it handles this reply's shape
 * only and checks nothing beyond it.
 *
 * A real redis-server (test/helpers/redis.ts) holds a stream of N entries shaped like the
 * connectors benchmark's (field `data` = {"key":"k<i % 100000>","value":<(i % 17) - 5>}); one
 * XREADGROUP COUNT N reply is captured from a plain socket, then each parser runs over it R times.
 * Prints µs of CPU per entry (the best of 5 rounds); also redis-parser with string replies (what
 * ioredis's plain `xreadgroup` gets, as the connectors benchmark's floor client does).
 *
 *   N=10000 R=200 node --import tsx bench/micro/stream-reply-parse.ts
 */
import { once } from 'node:events'
import { connect } from 'node:net'
import { Redis } from 'ioredis'
import RedisParser from 'redis-parser'
import { encodeCommand } from '../../src/state/checkpoint/resp.ts'
import { startRedis } from '../../test/helpers/redis.ts'

const N = Number(process.env.N ?? 10_000)
const R = Number(process.env.R ?? 200)

/** The raw bytes of one reply to `args`, read off a plain socket. */
async function rawReply(port: number, args: string[]): Promise<Buffer> {
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  const chunks: Buffer[] = []
  const done = new Promise<void>((resolve, reject) => {
    const parser = new RedisParser({
      returnReply: () => resolve(),
      returnError: (err: Error) => reject(err),
      returnBuffers: true,
    })
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk)
      parser.execute(chunk)
    })
  })
  socket.write(encodeCommand(args, []))
  await done
  socket.destroy()
  return Buffer.concat(chunks)
}

/** `$<n>\r\n` or `*<n>\r\n` at i: the number, and the offset after the CRLF in `next`. */
let next = 0
function header(b: Buffer, i: number): number {
  let n = 0
  let j = i + 1
  for (let c = b[j]!; c !== 13; c = b[++j]!) n = n * 10 + (c - 48)
  next = j + 2
  return n
}

/** Walk the reply, recording each entry's id and `data` value as byte ranges. */
function scan(b: Buffer, ids: string[], ranges: Int32Array): number {
  header(b, 0) // *1: one stream
  header(b, next) // *2: name, entries
  const nameLen = header(b, next)
  let i = next + nameLen + 2
  const entries = header(b, i)
  i = next
  for (let e = 0; e < entries; e++) {
    header(b, i) // *2: id, fields
    const idLen = header(b, next)
    ids[e] = b.toString('latin1', next, next + idLen)
    i = next + idLen + 2
    const fields = header(b, i)
    i = next
    for (let f = 0; f < fields; f += 2) {
      const fl = header(b, i)
      const isData =
        fl === 4 && b[next] === 100 && b[next + 1] === 97 && b[next + 2] === 116 && b[next + 3] === 97
      i = next + fl + 2
      const vl = header(b, i)
      if (isData) {
        ranges[2 * e] = next
        ranges[2 * e + 1] = next + vl
      }
      i = next + vl + 2
    }
  }
  return entries
}

function cpuUs(f: () => void): number {
  let best = Infinity
  for (let round = 0; round < 5; round++) {
    const t0 = process.cpuUsage()
    for (let r = 0; r < R; r++) f()
    const t = process.cpuUsage(t0)
    best = Math.min(best, (t.user + t.system) / (R * N))
  }
  return best
}

const server = await startRedis()
try {
  const redis = new Redis(server.port, '127.0.0.1')
  const stream = 'bench:parse'
  for (let i = 0; i < N; i += 1000) {
    const p = redis.pipeline()
    for (let j = i; j < Math.min(N, i + 1000); j++) {
      p.xadd(stream, '*', 'data', JSON.stringify({ key: `k${j % 100_000}`, value: (j % 17) - 5 }))
    }
    await p.exec()
  }
  await redis.xgroup('CREATE', stream, 'g', '0')
  redis.disconnect()
  const reply = await rawReply(server.port, [
    'XREADGROUP',
    'GROUP',
    'g',
    'c',
    'COUNT',
    String(N),
    'STREAMS',
    stream,
    '>',
  ])

  let entries = 0
  const withLibrary = cpuUs(() => {
    const parser = new RedisParser({
      returnReply: (r: unknown) => {
        entries = ((r as unknown[][])[0]![1] as unknown[]).length
      },
      returnError: (err: Error) => {
        throw err
      },
      returnBuffers: true,
    })
    parser.execute(reply)
  })
  if (entries !== N) throw new Error(`redis-parser saw ${entries} entries of ${N}`)
  const asStrings = cpuUs(() => {
    new RedisParser({
      returnReply: () => {},
      returnError: (err: Error) => {
        throw err
      },
    }).execute(reply)
  })
  const ids = new Array<string>(N)
  const ranges = new Int32Array(2 * N)
  const scanned = cpuUs(() => {
    entries = scan(reply, ids, ranges)
  })
  if (entries !== N) throw new Error(`the scan saw ${entries} entries of ${N}`)
  const first = reply.subarray(ranges[0], ranges[1]).toString()
  if (JSON.parse(first).key !== 'k0') throw new Error(`the scan found ${first} first`)

  console.log(
    `XREADGROUP reply of ${N} entries (${reply.length} bytes): redis-parser (buffers, as ioredis) ` +
      `${withLibrary.toFixed(3)} µs per entry (strings: ${asStrings.toFixed(3)}); ` +
      `a scan to byte ranges ${scanned.toFixed(3)} µs per entry`,
  )
} finally {
  await server.dispose()
}
