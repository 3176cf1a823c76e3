/**
 * Event-time windows end to end (docs/time.md), with real processes and a real redis-server
 * (AOF on): a coordinator and three workers run a tumbling-window job from a TypeScript file,
 * keep state in Redis and write results to a Redis stream sink (effectively once).
 *
 * - kill -9 a worker while events spread over 20 windows flow, and another after input stopped:
 *   every window result exact (count and sum of exactly the events that belong to it) and in the
 *   output stream once; late events (some mid-stream, then one per key after the second crash,
 *   late only by the restored watermark) on stream `late`, unchanged, once; the last window of
 *   every key closes by idleness after input stops.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../src/client/client.ts'
import { createTransport } from '../../src/transport/index.ts'
import { killAll, startShoal, statusOf, waitSettled, type ShoalProcess } from '../helpers/processes.ts'
import { startRedis, type RedisServer } from '../helpers/redis.ts'
import { waitFor } from '../helpers/wait-for.ts'

const HEARTBEAT_MS = 200
const SIZE = 1000
const WINDOWS = 20
const KEYS = 200
const PER_KEY_PER_WINDOW = 25
const BASE = 1_767_225_600_000

let redis: RedisServer
let r: Redis
const dir = mkdtempSync(join(tmpdir(), 'shoal-windows-'))
const JOB = join(dir, 'per-second.ts')
writeFileSync(
  JOB,
  `import { defineJob, windows } from 'shoal'

export default defineJob({
  name: 'per-second',
  eventTime: (e: { ts: number }) => e.ts,
  watermark: { outOfOrdernessMs: 500, idleMs: 1000 },
  window: windows.tumbling({ sizeMs: ${SIZE} }),
  init: () => ({ count: 0, sum: 0 }),
  process(acc: { count: number; sum: number }, e: { value: number }) {
    acc.count++
    acc.sum += e.value
  },
})
`,
)

beforeAll(async () => {
  redis = await startRedis({ aof: true })
  r = new Redis(redis.port, redis.host)
})
afterAll(async () => {
  r.disconnect()
  await redis.dispose()
  rmSync(dir, { recursive: true, force: true })
})
afterEach(killAll)

type Expected = Map<string, { count: number; sum: number }>

/** Events in event-time order (adjacent pairs swapped: out of order well within 500 ms). */
interface Ev {
  key: string
  ts: number
  value: number
  late?: true
}

function events(): Ev[] {
  const list: Ev[] = []
  const perWindow = KEYS * PER_KEY_PER_WINDOW
  for (let w = 0; w < WINDOWS; w++) {
    for (let j = 0; j < perWindow; j++) {
      const ts = BASE + w * SIZE + Math.floor((j * SIZE) / perWindow)
      list.push({ key: `k${(j * 7) % KEYS}`, ts, value: (j % 13) - 4 })
    }
  }
  for (let i = 0; i + 1 < list.length; i += 5) [list[i], list[i + 1]] = [list[i + 1]!, list[i]!]
  // Every 997th event from window 3 on is 3 s behind: its window closed long ago (late).
  for (let i = 3 * KEYS * PER_KEY_PER_WINDOW; i < list.length; i += 997) {
    const e = list[i]!
    list[i] = { ...e, ts: e.ts - 3 * SIZE, late: true }
  }
  return list
}

function expectedOf(list: Ev[]): Expected {
  const m: Expected = new Map()
  for (const e of list) {
    if (e.late) continue
    const start = Math.floor(e.ts / SIZE) * SIZE
    const id = `${e.key}@${start}`
    const x = m.get(id) ?? { count: 0, sum: 0 }
    x.count++
    x.sum += e.value
    m.set(id, x)
  }
  return m
}

interface SinkRecord {
  stream: string
  key: string
  event: { key: string; start: number; end: number; state: { count: number; sum: number } } | Ev
}
type WindowRecord = SinkRecord & {
  event: { start: number; end: number; state: { count: number; sum: number } }
}

describe('event-time windows with real processes', { timeout: 240_000 }, () => {
  function startCoordinator(): Promise<ShoalProcess> {
    return startShoal([
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
      `${redis.url}/3`,
    ])
  }
  function startWorker(c: ShoalProcess, id: string): Promise<ShoalProcess> {
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
        `${redis.url}/3`,
        '--job',
        JOB,
        '--sink',
        `${redis.url}/3?stream=windows-out`,
      ],
      { SHOAL_LOG_LEVEL: 'info' },
    )
  }

  it('kill -9 a worker mid-stream: every window result exact and once; idle partitions close their last window', async () => {
    const c = await startCoordinator()
    const workers = await Promise.all(['w0', 'w1', 'w2'].map((id) => startWorker(c, id)))
    await waitSettled(() => statusOf(c), 3)
    const cl = await ShoalClient.connect({
      coordinator: c.info.address,
      transport: createTransport('tcp', { nodeId: `test-client-${process.pid}`, role: 'client' }),
      retryDelayMs: 20,
    })
    const r3 = new Redis(redis.port, redis.host, { db: 3 })
    const list = events()
    const expected = expectedOf(list)
    const half = Math.floor(list.length / 2)
    const sendRange = async (from: number, to: number): Promise<void> => {
      for (let i = from; i < to; i++) {
        const e = list[i]!
        if (!cl.send(e.key, e)) await cl.drain()
      }
      await cl.flush()
    }
    await sendRange(0, half)
    // Windows of the first half have fired: some results are out before the crash.
    await waitFor(async () => (await r3.xlen('windows-out')) > 500, 'window results flowing', 60_000)
    const rest = sendRange(half, list.length)
    workers[1]!.signal('SIGKILL')
    await rest
    workers.push(await startWorker(c, 'w3'))
    await waitSettled(() => statusOf(c), 3)
    // Every window closes, the last ones (no event after them) by idleness.
    await waitFor(
      async () => (await r3.xlen('windows-out')) >= expected.size,
      `${expected.size} window results in the output stream`,
      60_000,
    )
    // Input has stopped and every window closed. Kill another worker: its partitions restore
    // their watermark from checkpoints (no new event raises it), so old events stay late.
    await new Promise((resolve) => setTimeout(resolve, 1500)) // a checkpoint after the last window
    workers[0]!.signal('SIGKILL')
    workers.push(await startWorker(c, 'w4'))
    await waitSettled(() => statusOf(c), 3)
    for (let k = 0; k < KEYS; k++) {
      const e: Ev = { key: `k${k}`, ts: BASE + 10, value: 1, late: true }
      list.push(e)
      cl.send(e.key, e)
    }
    await cl.flush()
    await cl.close()
    const late = list.filter((e) => e.late)
    await waitFor(
      async () => (await r3.xlen('windows-out')) >= expected.size + late.length,
      'late events in the output stream',
      30_000,
    )
    const all = await readStream(r3, 'windows-out')
    r3.disconnect()
    // Late events: on stream 'late', unchanged, each once.
    const lateGot = all.filter((x) => x.stream === 'late').map((x) => JSON.stringify(x.event))
    expect(lateGot.sort()).toEqual(late.map((e) => JSON.stringify(e)).sort())
    const got = all.filter((x): x is WindowRecord => x.stream === 'windows')
    expect(got.length + lateGot.length).toBe(all.length)
    const seen = new Map<string, number>()
    const wrong: string[] = []
    for (const rec of got) {
      const id = `${rec.event.key}@${rec.event.start}`
      seen.set(id, (seen.get(id) ?? 0) + 1)
      const e = expected.get(id)
      if (e === undefined || e.count !== rec.event.state.count || e.sum !== rec.event.state.sum) {
        wrong.push(`${id}: ${JSON.stringify(rec.event.state)} != ${JSON.stringify(e)}`)
      }
      if (rec.event.end - rec.event.start !== SIZE) wrong.push(`${id}: end ${rec.event.end}`)
    }
    const twice = [...seen].filter(([, n]) => n > 1).map(([id, n]) => `${id} x${n}`)
    expect(wrong.slice(0, 5), `${wrong.length} results wrong`).toEqual([])
    expect(twice.slice(0, 5), `${twice.length} results more than once`).toEqual([])
    expect(seen.size).toBe(expected.size)
    const w = await workers[2]!.http<{ watermarks?: { watermark: number }[] }>('/status')
    expect((w.body.watermarks ?? []).length).toBeGreaterThan(0)
    const metrics = await workers[2]!.http<string>('/metrics')
    expect(metrics.body).toMatch(/^shoal_watermark_lag_ms\{partition="\d+"/m)
  })
})

async function readStream(client: Redis, stream: string): Promise<SinkRecord[]> {
  const out: SinkRecord[] = []
  let last = '-'
  for (;;) {
    const page = await client.xrange(stream, last === '-' ? '-' : `(${last}`, '+', 'COUNT', 10_000)
    if (page.length === 0) break
    for (const [id, fields] of page) {
      last = id
      out.push(JSON.parse(fields[fields.indexOf('data') + 1]!) as SinkRecord)
    }
  }
  return out
}
