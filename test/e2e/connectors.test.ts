/**
 * Connectors end to end, with real processes, a real redis-server (AOF on) and a real
 * PostgreSQL server: a coordinator and three workers read a Redis stream through a consumer
 * group (--source), keep keyed state durable in Redis, and write emitted records to a Redis
 * stream (--sink redis://) and committed state behind to Postgres (--sink postgres://).
 *
 * - kill -9 a worker while entries flow: state exact, the group's pending list at 0, malformed
 *   entries in the dead-letter stream, every emitted record once in the output stream, Postgres
 *   rows equal to the state;
 * - Postgres down for 20 s in the middle of a run: rows exact once it is back, nothing lost;
 * - `shoal up --source ... --sink ...` (the file store default) does the same on one host.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../src/client/client.ts'
import { createTransport } from '../../src/transport/index.ts'
import { killAll, startShoal, statusOf, waitSettled, type ShoalProcess } from '../helpers/processes.ts'
import { startPostgres, type PostgresServer } from '../helpers/postgres.ts'
import { startRedis, type RedisServer } from '../helpers/redis.ts'
import { expectExactState, type Totals } from '../helpers/totals.ts'
import { groupDrained, produceCounted } from '../helpers/streams.ts'
import { waitFor } from '../helpers/wait-for.ts'

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
const HEARTBEAT_MS = 200

let redis: RedisServer
let pg: PostgresServer
let r: Redis
const dir = mkdtempSync(join(tmpdir(), 'shoal-connectors-'))
// Counts like the built-in job and emits one record per event: (key, n-th event of the key).
const JOB = join(dir, 'emit.mjs')
writeFileSync(
  JOB,
  `export default {
  name: 'emit-counts',
  init: () => ({ count: 0, sum: 0 }),
  process(s, e, ctx) {
    s.count++
    s.sum += e.value
    ctx.emit('counts', { n: s.count })
    return s
  },
}
`,
)

beforeAll(async () => {
  redis = await startRedis({ aof: true })
  pg = await startPostgres()
  r = new Redis(redis.port, redis.host)
})
afterAll(async () => {
  r.disconnect()
  await pg.dispose()
  await redis.dispose()
  rmSync(dir, { recursive: true, force: true })
})
afterEach(killAll)

const produce = (stream: string, from: number, to: number, expected: Totals, keys = 500) =>
  produceCounted(r, stream, from, to, expected, keys)
const drained = (stream: string, group: string) => groupDrained(r, stream, group)

/** Every key's emitted n values are exactly 1..count, each once. */
async function expectEmittedOnce(stream: string, expected: Totals): Promise<void> {
  const seen = new Map<string, number[]>()
  let last = '-'
  for (;;) {
    const page = await r.xrange(stream, last === '-' ? '-' : `(${last}`, '+', 'COUNT', 10_000)
    if (page.length === 0) break
    for (const [id, fields] of page) {
      last = id
      const rec = JSON.parse(fields[fields.indexOf('data') + 1]!) as { key: string; event: { n: number } }
      const list = seen.get(rec.key) ?? []
      list.push(rec.event.n)
      seen.set(rec.key, list)
    }
  }
  const wrong: string[] = []
  for (const [key, e] of expected) {
    const ns = (seen.get(key) ?? []).sort((a, b) => a - b)
    if (ns.length !== e.count || ns.some((n, i) => n !== i + 1))
      wrong.push(`${key}: ${ns.length} of ${e.count}`)
  }
  expect(wrong.slice(0, 5), `${wrong.length} keys wrong`).toEqual([])
  expect(seen.size).toBe(expected.size)
}

/** Postgres rows equal to the expected state (waits for the write-behind). */
async function expectRows(
  table: string,
  expected: Totals,
  timeoutMs = 30_000,
  nodes: ShoalProcess[] = [],
): Promise<void> {
  let wrong: string[] = []
  try {
    await waitFor(
      async () => {
        const rows = await pg.query<{ key: string; state: { count: number; sum: number } }>(
          `select key, state from ${table}`,
        )
        const got = new Map(rows.map((x) => [x.key, x.state]))
        wrong = [...expected]
          .filter(([k, e]) => got.get(k)?.count !== e.count || got.get(k)?.sum !== e.sum)
          .map(([k, e]) => `${k}: ${JSON.stringify(got.get(k))} != ${JSON.stringify(e)}`)
        return wrong.length === 0 && got.size === expected.size
      },
      `${table} rows equal to the state`,
      timeoutMs,
    )
  } catch (err) {
    const sinks = await Promise.all(
      nodes.map((n) =>
        n
          .http<{ sinks?: unknown }>('/status')
          .then((r) => JSON.stringify(r.body.sinks))
          .catch((e: unknown) => String(e)),
      ),
    )
    throw new Error(
      `${(err as Error).message}; e.g. ${wrong.slice(0, 3).join('; ')}; sinks: ${sinks.join(' | ')}`,
    )
  }
}

describe('connectors with real processes', { timeout: 240_000 }, () => {
  async function startCoordinator(db: number): Promise<ShoalProcess> {
    return startShoal(
      [
        'coordinator',
        '--listen',
        '127.0.0.1:0',
        '--http',
        '127.0.0.1:0',
        '--partitions',
        '32',
        '--heartbeat-interval',
        String(HEARTBEAT_MS),
        '--checkpoint-interval',
        '500',
        '--state',
        `${redis.url}/${db}`,
      ],
      { SHOAL_LOG_LEVEL: 'info' },
    )
  }
  function startWorker(c: ShoalProcess, db: number, id: string, stream: string, table: string) {
    return startShoal(
      [
        'worker',
        '--coordinator',
        c.info.address,
        '--node-id',
        id,
        '--listen',
        '127.0.0.1:0',
        '--http',
        '127.0.0.1:0',
        '--threads',
        '1',
        '--heartbeat-interval',
        String(HEARTBEAT_MS),
        '--state',
        `${redis.url}/${db}`,
        '--job',
        JOB,
        '--source',
        `${redis.url}?stream=${stream}&group=shoal`,
        '--sink',
        `${redis.url}?stream=${stream}-out`,
        '--sink',
        `${pg.url}?table=${table}&mode=state`,
      ],
      { SHOAL_LOG_LEVEL: 'info' },
    )
  }
  async function settled(c: ShoalProcess, workers: number): Promise<void> {
    await waitSettled(() => statusOf(c), workers)
  }
  async function client(c: ShoalProcess): Promise<ShoalClient> {
    return ShoalClient.connect({
      coordinator: c.info.address,
      transport: createTransport('tcp', { nodeId: `test-client-${process.pid}`, role: 'client' }),
      retryDelayMs: 20,
    })
  }

  it('kill -9 a worker while entries flow: state, pending list, dead letters, output stream and Postgres rows exact', async () => {
    const stream = 'events'
    const table = 'counts_state'
    const expected: Totals = new Map()
    await produce(stream, 0, 20_000, expected)
    for (const bad of ['{"key":', '{"value":1}', '"text"']) await r.xadd(stream, '*', 'data', bad)
    const c = await startCoordinator(1)
    const workers = [0, 1, 2].map((i) => startWorker(c, 1, `w${i}`, stream, table))
    const started = await Promise.all(workers)
    await settled(c, 3)
    const more = produce(stream, 20_000, 80_000, expected)
    await waitFor(async () => (await r.xlen(`${stream}-out`)) > 25_000, 'entries flowing', 60_000)
    started[1]!.signal('SIGKILL')
    await more
    // A new worker (another consumer name): survivors take over w1's pending entries.
    started.push(await startWorker(c, 1, 'w3', stream, table))
    await waitFor(async () => await drained(stream, 'shoal'), 'group drained', 90_000)
    await settled(c, 3)
    const cl = await client(c)
    await expectExactState(cl, expected)
    await cl.close()
    expect(await r.xlen(`${stream}:dlq`)).toBe(3)
    await waitFor(
      async () => (await r.xlen(`${stream}-out`)) >= 80_000,
      'every emitted record in the output stream',
      30_000,
    )
    await expectEmittedOnce(`${stream}-out`, expected)
    await expectRows(
      table,
      expected,
      30_000,
      started.filter((_, i) => i !== 1),
    )
  })

  it('Postgres down for 20 s mid-run: rows exact once it is back, nothing lost', async () => {
    const stream = 'pgdown'
    const table = 'pgdown_state'
    const expected: Totals = new Map()
    const c = await startCoordinator(2)
    await Promise.all([0, 1, 2].map((i) => startWorker(c, 2, `p${i}`, stream, table)))
    await settled(c, 3)
    await produce(stream, 0, 10_000, expected)
    await expectRows(table, expected)
    await pg.kill()
    await produce(stream, 10_000, 40_000, expected)
    await new Promise((resolve) => setTimeout(resolve, 20_000))
    await pg.restart()
    await waitFor(async () => await drained(stream, 'shoal'), 'group drained', 60_000)
    await expectRows(table, expected, 60_000)
  })

  it('shoal up --source --sink: a local cluster reads the stream and writes behind to Postgres', async () => {
    const stream = 'up-in'
    const table = 'up_state'
    const expected: Totals = new Map()
    await produce(stream, 0, 5000, expected, 100)
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        MAIN,
        'up',
        '--workers',
        '2',
        '--listen',
        '127.0.0.1:0',
        '--http',
        '127.0.0.1:0',
        '--source',
        `${redis.url}?stream=${stream}&group=up`,
        '--sink',
        `${pg.url}?table=${table}&mode=state`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SHOAL_LOG_LEVEL: 'warn' } },
    )
    const logs: string[] = []
    child.stderr.setEncoding('utf8').on('data', (d: string) => logs.push(d))
    try {
      await new Promise<void>((resolve, reject) => {
        // shoal up prints one line {"shoal":"up",...} once every node listens.
        let out = ''
        child.stdout.setEncoding('utf8').on('data', (d: string) => {
          out += d
          if (out.includes('"shoal":"up"')) resolve()
        })
        child.once('exit', (code) => reject(new Error(`shoal up exited ${code}: ${logs.join('')}`)))
      })
      await waitFor(async () => await drained(stream, 'up'), 'group drained', 60_000)
      await expectRows(table, expected)
    } finally {
      child.kill('SIGINT')
      await new Promise((resolve) => child.once('exit', resolve))
    }
  })
})
