/**
 * A SinkRunner writing through a RedisStreamSink while its redis-server (AOF, appendfsync
 * always) is killed with SIGKILL and restarted on the same port: every record ends up in the
 * stream exactly once (batches replayed after the restart included), and the outage shows in
 * shoal_sink_errors_total.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, expect, it, onTestFinished } from 'vitest'
import { registerSinkMetrics } from '../../../src/connectors/metrics.ts'
import { RedisStreamSink } from '../../../src/connectors/redis-stream/sink.ts'
import { SinkRunner } from '../../../src/connectors/runner.ts'
import type { EmittedBatch } from '../../../src/connectors/sink.ts'
import { exponentialBackoff } from '../../../src/util/backoff.ts'
import { startRedis, type RedisServer } from '../../helpers/redis.ts'
import { waitFor } from '../../helpers/wait-for.ts'

let server: RedisServer
beforeAll(async () => {
  server = await startRedis({ aof: true })
})
afterAll(() => server?.dispose())

const PARTITIONS = 4
const BATCHES = 240 // per run, spread over the partitions
const PER_BATCH = 5

function makeBatch(i: number): EmittedBatch {
  const partition = i % PARTITIONS
  const offset = Math.floor(i / PARTITIONS) + 1
  return {
    partition,
    offset,
    firstIndex: 0,
    records: Array.from({ length: PER_BATCH }, (_, j) => ['out', `k${j}`, { i, j }] as const),
  }
}

async function errorsTotal(registry: Registry): Promise<number> {
  const text = await registry.metrics()
  return Number(/^shoal_sink_errors_total\{sink="[^"]+"\} (\d+)$/m.exec(text)?.[1] ?? NaN)
}

it('loses nothing and duplicates nothing across a SIGKILL and restart of redis', async () => {
  const stream = `killed-${process.pid}`
  const sink = new RedisStreamSink(
    { kind: 'redis-stream', redis: server.url, stream, maxlen: null },
    {
      connectTimeoutMs: 1000,
      commandTimeoutMs: 1000,
      retryDelay: exponentialBackoff({ initialDelayMs: 20, maxDelayMs: 200 }),
    },
  )
  const runner = new SinkRunner(sink, {
    initialDelayMs: 10,
    maxDelayMs: 200,
    maxBufferedRecords: 200,
    maxChunkRecords: 50,
  })
  onTestFinished(() => runner.close({ timeoutMs: 1000 }).catch(() => {}))
  const registry = new Registry()
  registerSinkMetrics(registry, [runner])
  await runner.start()

  const push = async (from: number, to: number): Promise<void> => {
    for (let i = from; i < to; i++) {
      if (runner.full) await runner.room()
      runner.pushEvents(makeBatch(i))
      if (i % 8 === 0) await sleep(1)
    }
  }

  // A third goes in while redis is up.
  await push(0, BATCHES / 3)
  await waitFor(() => runner.status().written > 0, 'some records written')
  await server.stop('SIGKILL')
  // The rest is pushed during the outage (the buffer pushes back) and after the restart.
  const producing = push(BATCHES / 3, BATCHES)
  await waitFor(async () => (await errorsTotal(registry)) > 0, 'shoal_sink_errors_total > 0', 10_000)
  expect(runner.status().state).toBe('retrying')
  expect(runner.status().lastError).toMatch(/SHOAL_ERR_SINK_UNAVAILABLE/)
  await sleep(300)
  await server.restart()
  await producing
  // A new owner replays batches after a crash: the guard keeps them out.
  await push(0, BATCHES / 2)
  await runner.flushed()
  expect(await errorsTotal(registry)).toBeGreaterThan(0)

  const reader = new Redis({ host: server.host, port: server.port, lazyConnect: true })
  onTestFinished(() => reader.disconnect())
  await reader.connect()
  const entries = await reader.xrange(stream, '-', '+')
  const seen = new Map<string, number>()
  const lastPerPartition = new Map<number, string>()
  for (const [, flat] of entries) {
    const f: Record<string, string> = {}
    for (let i = 0; i + 1 < flat.length; i += 2) f[flat[i]!] = flat[i + 1]!
    const id = `${f.partition}:${f.offset}:${f.index}`
    seen.set(id, (seen.get(id) ?? 0) + 1)
    // In order per partition.
    const key = `${f.offset!.padStart(8, '0')}:${f.index}`
    const p = Number(f.partition)
    expect(key > (lastPerPartition.get(p) ?? '')).toBe(true)
    lastPerPartition.set(p, key)
  }
  expect(entries).toHaveLength(BATCHES * PER_BATCH)
  expect([...seen.values()].every((n) => n === 1)).toBe(true)
  for (let i = 0; i < BATCHES; i++) {
    const b = makeBatch(i)
    for (let j = 0; j < PER_BATCH; j++) expect(seen.has(`${b.partition}:${b.offset}:${j}`)).toBe(true)
  }
  expect(runner.status()).toMatchObject({
    lag: 0,
    deadLettered: 0,
    written: BATCHES * PER_BATCH + (BATCHES / 2) * PER_BATCH,
  })
  await runner.close({ timeoutMs: 1000 })
}, 30_000)
