/**
 * The Sink suite against RedisStreamSink on real redis-server processes (standalone and a
 * 3-master cluster), plus Redis-only checks: guard key slots, entry fields, MAXLEN, the
 * target type check at open, and how Redis failures map to sink error codes.
 */
import { createRequire } from 'node:module'
import { Cluster, Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest'
import {
  RedisStreamSink,
  guardKey,
  hashTag,
  type RedisStreamSinkOptions,
} from '../../src/connectors/redis-stream/sink.ts'
import { ErrorCodes, ShoalError } from '../../src/errors.ts'
import {
  freePort,
  startRedis,
  startRedisCluster,
  type RedisCluster,
  type RedisServer,
} from '../helpers/redis.ts'
import {
  sinkConformance,
  type SinkReadDeadLetter,
  type SinkReadEvent,
  type SinkUnderTest,
} from './sink-suite.ts'

// ioredis's own slot function (a dependency of ioredis, untyped).
const calculateSlot = createRequire(import.meta.url)('cluster-key-slot') as (key: string) => number

const fast: RedisStreamSinkOptions = { connectTimeoutMs: 3000, commandTimeoutMs: 2000 }
let streams = 0
const uniqueStream = (tag: string): string => `out-${tag}-${process.pid}-${++streams}`

type Fields = Record<string, string>
function fieldMap(flat: string[]): Fields {
  const out: Fields = {}
  for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]!] = flat[i + 1]!
  return out
}

async function readStream(client: Redis | Cluster, stream: string): Promise<Fields[]> {
  const entries = await client.xrange(stream, '-', '+')
  return entries.map(([, flat]) => fieldMap(flat))
}

function toEvent(f: Fields): SinkReadEvent {
  const data = JSON.parse(f.data!) as { stream: string; key: string; partition: number; event: unknown }
  expect(data.partition).toBe(Number(f.partition))
  return {
    partition: Number(f.partition),
    offset: f.offset === undefined ? null : Number(f.offset),
    index: Number(f.index),
    stream: data.stream,
    key: data.key,
    event: data.event,
  }
}

function factory(url: () => string, reader: () => Redis | Cluster) {
  return (): Promise<SinkUnderTest> => {
    const stream = uniqueStream('conf')
    const sink = new RedisStreamSink({ kind: 'redis-stream', redis: url(), stream, maxlen: null }, fast)
    return Promise.resolve({
      sink,
      read: async () => ({ events: (await readStream(reader(), stream)).map(toEvent), state: new Map() }),
      readDeadLetters: async () =>
        (await readStream(reader(), `${stream}:dlq`)).map((f): SinkReadDeadLetter => ({
          ...toEvent(f),
          error: f.error!,
          attempts: Number(f.attempts),
        })),
      cleanup: async () => {
        await reader().del(stream)
        await reader().del(sink.guard)
        await reader().del(`${stream}:dlq`)
      },
    })
  }
}

describe('hash slots of the guard', () => {
  it('puts the guard in the stream slot for names with and without tags', () => {
    for (const name of ['out', 'clicks:enriched', 'a{b}c', '{tag}', '{tag}:x', 'weird{', 'a{b', 'ü-ñ']) {
      const g = guardKey(name)
      expect(g, name).toBeDefined()
      expect(calculateSlot(g!), name).toBe(calculateSlot(name))
      expect(calculateSlot(hashTag(name)), name).toBe(calculateSlot(name))
    }
    expect(guardKey('out')).toBe('{out}:shoal-emitted')
    expect(guardKey('a{b}c')).toBe('a{b}c:shoal-emitted')
    // A '}' without a tag: no key shares the slot by tagging, refused on a cluster.
    for (const name of ['a}b', 'x{}y', '{}']) expect(guardKey(name), name).toBeUndefined()
  })
})

describe('standalone redis', () => {
  let server: RedisServer
  let reader: Redis
  beforeAll(async () => {
    server = await startRedis()
    reader = new Redis({ host: server.host, port: server.port, lazyConnect: true })
    await reader.connect()
  })
  afterAll(async () => {
    reader?.disconnect()
    await server?.dispose()
  })

  sinkConformance(
    'redis stream',
    factory(
      () => server.url,
      () => reader,
    ),
    { effectivelyOnce: true },
  )

  async function open(stream: string, maxlen: number | null = null): Promise<RedisStreamSink> {
    const sink = new RedisStreamSink({ kind: 'redis-stream', redis: server.url, stream, maxlen }, fast)
    onTestFinished(() => sink.close())
    await sink.open()
    return sink
  }

  it('adds entries with data, partition, offset and index, and keeps the guard', async () => {
    const stream = uniqueStream('fields')
    const sink = await open(stream)
    await sink.writeEvents([
      { partition: 3, offset: 41, firstIndex: 2, records: [['clicks', 'u1', { a: 1 }]] },
    ])
    await sink.writeEvents([{ partition: 3, offset: null, firstIndex: 0, records: [['clicks', 'u2', 2]] }])
    const [first, second] = await readStream(reader, stream)
    expect(first).toEqual({
      data: '{"stream":"clicks","key":"u1","partition":3,"event":{"a":1}}',
      partition: '3',
      offset: '41',
      index: '2',
    })
    expect(second).toEqual({
      data: '{"stream":"clicks","key":"u2","partition":3,"event":2}',
      partition: '3',
      index: '0',
    })
    expect(await reader.hgetall(sink.guard)).toEqual({ '3': '41:2' })
    expect(sink.name).toBe(`redis:${stream}`)
  })

  it('trims with MAXLEN ~ and still writes each record once', async () => {
    const stream = uniqueStream('maxlen')
    const sink = await open(stream, 10)
    const records = Array.from({ length: 1000 }, (_, i) => ['s', `k${i}`, i] as const)
    const b = { partition: 0, offset: 1, firstIndex: 0, records }
    await sink.writeEvents([b])
    await sink.writeEvents([b])
    const len = await reader.xlen(stream)
    expect(len).toBeGreaterThanOrEqual(10)
    expect(len).toBeLessThan(1000)
    const last = await reader.xrevrange(stream, '+', '-', 'COUNT', 1)
    expect(fieldMap(last[0]![1]).index).toBe('999')
    expect(await reader.hget(sink.guard, '0')).toBe('1:999')
  })

  it('refuses a key of another type with SINK_SCHEMA naming the stream', async () => {
    const stream = uniqueStream('wrongtype')
    await reader.set(stream, 'not a stream')
    onTestFinished(() => reader.del(stream).then(() => undefined))
    const sink = new RedisStreamSink({ kind: 'redis-stream', redis: server.url, stream, maxlen: null }, fast)
    onTestFinished(() => sink.close())
    const err = (await sink.open().catch((e: unknown) => e)) as ShoalError
    expect(err).toBeInstanceOf(ShoalError)
    expect(err.code).toBe(ErrorCodes.SINK_SCHEMA)
    expect(err.message).toContain(stream)
  })

  it('maps WRONGTYPE while writing and OOM to SINK_REJECTED', async () => {
    const stream = uniqueStream('rejected')
    const sink = await open(stream)
    const write = (): Promise<unknown> =>
      sink.writeEvents([{ partition: 0, offset: 1, firstIndex: 0, records: [['s', 'k', 1]] }]).then(
        () => undefined,
        (e: unknown) => e,
      )
    await reader.set(stream, 'replaced')
    let err = (await write()) as ShoalError
    expect(err.code).toBe(ErrorCodes.SINK_REJECTED)
    expect(err.message).toMatch(/WRONGTYPE/)
    await reader.del(stream)
    await reader.config('SET', 'maxmemory', '1')
    try {
      err = (await write()) as ShoalError
    } finally {
      await reader.config('SET', 'maxmemory', '0')
    }
    expect(err.code).toBe(ErrorCodes.SINK_REJECTED)
    expect(err.message).toMatch(/OOM/)
    expect(await write()).toBeUndefined()
    expect(await reader.xlen(stream)).toBe(1)
  })

  it('fails open with retryable SINK_UNAVAILABLE when nothing listens', async () => {
    const port = await freePort()
    const sink = new RedisStreamSink(
      { kind: 'redis-stream', redis: `redis://127.0.0.1:${port}`, stream: 'x', maxlen: null },
      { connectTimeoutMs: 300 },
    )
    onTestFinished(() => sink.close())
    const err = (await sink.open().catch((e: unknown) => e)) as ShoalError
    expect(err.code).toBe(ErrorCodes.SINK_UNAVAILABLE)
    expect(err.retryable).toBe(true)
    // Writing before a successful open is an outage too, not a crash.
    const w = (await sink.writeEvents([]).catch((e: unknown) => e)) as ShoalError
    expect(w.code).toBe(ErrorCodes.SINK_UNAVAILABLE)
  })
})

describe('redis cluster (3 masters)', () => {
  let cluster: RedisCluster
  let reader: Cluster
  beforeAll(async () => {
    cluster = await startRedisCluster(3)
    reader = new Cluster(
      cluster.nodes.map((n) => ({ host: n.host, port: n.port })),
      { lazyConnect: true },
    )
    await reader.connect()
  }, 30_000)
  afterAll(async () => {
    reader?.disconnect()
    await cluster?.dispose()
  })

  sinkConformance(
    'redis stream on a cluster',
    factory(
      () => cluster.url,
      () => reader,
    ),
    { effectivelyOnce: true },
  )

  it('keeps stream and guard in one slot, for streams on every master', async () => {
    const node = cluster.nodes[0]!
    const slot = (k: string): number => Number(node.cli('cluster', 'keyslot', k).trim())
    const owners = new Set<number>()
    for (let i = 0; i < 12; i++) {
      const stream = uniqueStream(`slot${i}`)
      const sink = new RedisStreamSink(
        { kind: 'redis-stream', redis: cluster.url, stream, maxlen: null },
        fast,
      )
      onTestFinished(() => sink.close())
      await sink.open()
      await sink.writeEvents([
        { partition: 0, offset: 1, firstIndex: 0, records: [['s', 'a', 1]] },
        { partition: 1, offset: 1, firstIndex: 0, records: [['s', 'b', 2]] },
      ])
      expect(slot(sink.guard)).toBe(slot(stream))
      expect(slot(stream)).toBe(calculateSlot(stream))
      owners.add(Math.min(2, Math.floor(slot(stream) / 5461)))
      expect(await reader.xlen(stream)).toBe(2)
    }
    expect(owners.size).toBeGreaterThan(1)
  })

  it('refuses a name whose slot the guard cannot share', async () => {
    const sink = new RedisStreamSink(
      { kind: 'redis-stream', redis: cluster.url, stream: 'a}b', maxlen: null },
      fast,
    )
    const err = (await sink.open().catch((e: unknown) => e)) as ShoalError
    expect(err.code).toBe(ErrorCodes.SINK_SCHEMA)
    expect(err.message).toContain('a}b')
  })
})
