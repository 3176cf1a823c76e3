/**
 * Timers and state TTL through a real in-process cluster (memory transport, real processing
 * threads, an in-memory PartitionStore and a memory state sink): the worker writes ticks into
 * the replay log, processing-time timers fire from them, TTL drops keys from the threads, the
 * checkpoints and the state sink, and a restore after a worker loss replays ticks exactly.
 * docs/time.md has the rules; test/unit/time/ compares the runtime with a reference model.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../../src/client/client.ts'
import { MemorySink } from '../../../src/connectors/memory/sink.ts'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import { openPartitionStore } from '../../../src/state/checkpoint/partition-store.ts'
import { createStateBackend } from '../../../src/state/index.ts'
import { createMemoryTransport } from '../../../src/transport/memory/memory-transport.ts'
import { createWorkerNode, type WorkerNode } from '../../../src/worker/node.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: process.env.DEBUG_LOG ?? 'silent' })
const dir = mkdtempSync(join(tmpdir(), 'shoal-time-'))
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))
let port = 9100
let seq = 0
const HB = 50

function jobFile(name: string, source: string): string {
  const file = join(dir, `${name}.mjs`)
  writeFileSync(file, source)
  return file
}

// Counts per key; each event (re)arms a processing-time timer 200 ms ahead; the timer emits the
// count it saw. Keys idle for 400 ms of processing time are dropped.
const TIMER_TTL_JOB = jobFile(
  'timer-ttl',
  `export default {
  name: 'timer-ttl',
  ttlMs: 400,
  init: () => ({ count: 0, armed: 0 }),
  process(s, e, ctx) {
    s.count++
    if (s.armed !== 0) ctx.timers.deleteProcessingTime(s.armed)
    s.armed = ctx.processingTime + 200
    ctx.timers.atProcessingTime(s.armed)
    return s
  },
  onTimer(s, timer, ctx) {
    ctx.emit('fired', { key: timer.key, count: s.count, kind: timer.kind })
    s.armed = 0
    return s
  },
}
`,
)

// Event-time timers: each event sets a timer at its time + 1000; fired by later events' watermark.
const EVENT_TIMER_JOB = jobFile(
  'event-timer',
  `export default {
  name: 'event-timer',
  eventTime: (e) => e.ts,
  init: () => ({ n: 0 }),
  process(s, e, ctx) {
    s.n++
    ctx.timers.atEventTime(e.ts + 1000)
    return s
  },
  onTimer(s, timer, ctx) {
    ctx.emit('due', { key: timer.key, ts: timer.ts, watermark: ctx.watermark })
  },
}
`,
)

async function cluster(job: string, workers: number) {
  const storeUrl = `memory:time-${process.pid}-${seq++}`
  const c = new Coordinator({
    transport: createMemoryTransport({ nodeId: 'coordinator', role: 'coordinator' }),
    listen: { host: 'time', port: port++ },
    partitions: 8,
    heartbeatIntervalMs: HB,
    heartbeatMisses: 3,
    checkpointIntervalMs: 100,
    logger,
  })
  await c.start()
  cleanup.push(() => c.stop({ timeoutMs: 200 }))
  const sink = new MemorySink({ name: 'rows' })
  const nodes: WorkerNode[] = []
  const start = async (id: string): Promise<WorkerNode> => {
    const backend = await createStateBackend(storeUrl)
    const store = await openPartitionStore(backend)
    const n = createWorkerNode({
      transport: createMemoryTransport({ nodeId: id, role: 'worker' }),
      coordinator: c.address,
      listen: { host: 'time', port: port++ },
      memberId: id,
      version: 'test',
      threads: 1,
      heartbeatIntervalMs: HB,
      logger,
      job,
      store,
      sinks: [sink],
      dataPlane: { tickIntervalMs: 25 },
    })
    await n.start()
    cleanup.push(async () => {
      await n.stop()
      await store.close()
      await backend.close()
    })
    nodes.push(n)
    return n
  }
  for (let i = 0; i < workers; i++) await start(`w${i}`)
  await waitFor(() => {
    const s = c.status()
    return c.readiness().ok && s.members.filter((m) => m.state === 'alive').length === workers
  }, 'workers joined')
  const cl = await ShoalClient.connect({
    coordinator: c.address,
    transport: createMemoryTransport({ nodeId: 'client', role: 'client' }),
    retryDelayMs: 20,
  })
  cleanup.push(() => cl.close())
  return { c, nodes, cl, sink, start }
}

async function dump(cl: ShoalClient): Promise<Map<string, unknown>> {
  const m = new Map<string, unknown>()
  for await (const [k, v] of cl.dumpState()) m.set(k, v)
  return m
}

describe('timers and TTL (in process)', { timeout: 60_000 }, () => {
  it('processing-time timers fire once from logged ticks; a re-armed timer replaces the old one', async () => {
    const { cl, sink } = await cluster(TIMER_TTL_JOB, 2)
    for (let k = 0; k < 20; k++) for (let i = 0; i < 3; i++) cl.send(`key-${k}`, { i })
    await cl.flush()
    await waitFor(() => sink.records.filter((r) => r.stream === 'fired').length >= 20, 'every key fired')
    // Give a wrongly kept first or second timer the chance to fire too.
    await new Promise((resolve) => setTimeout(resolve, 300))
    const fired = sink.records.filter((r) => r.stream === 'fired')
    expect(fired.map((r) => r.key).sort()).toEqual(Array.from({ length: 20 }, (_, k) => `key-${k}`).sort())
    for (const r of fired) expect(r.event).toEqual({ key: r.key, count: 3, kind: 'processing' })
  })

  it('ttlMs drops idle keys from the threads, the checkpoint and the state sink; a new event starts fresh', async () => {
    const { cl, sink } = await cluster(TIMER_TTL_JOB, 2)
    for (let k = 0; k < 30; k++) cl.send(`t-${k}`, {})
    await cl.flush()
    await waitFor(() => sink.rows.size === 30, 'state written behind')
    await waitFor(async () => (await dump(cl)).size === 0, 'every key dropped by TTL')
    // The checkpoints delete them too: the state sink's rows go.
    await waitFor(() => sink.rows.size === 0, 'state sink rows deleted')
    cl.send('t-1', {})
    await cl.flush()
    expect(await cl.getState('t-1')).toMatchObject({ count: 1 })
  })

  it('a worker lost mid-stream: restore + replay of batches and ticks fires every timer exactly once', async () => {
    const { c, nodes, cl, sink } = await cluster(TIMER_TTL_JOB, 2)
    for (let k = 0; k < 40; k++) cl.send(`r-${k}`, {})
    await cl.flush()
    // Wait for some timers, then lose a worker abruptly (no hand-off).
    await waitFor(() => sink.records.some((r) => r.stream === 'fired'), 'some timers fired')
    await nodes[1]!.stop()
    await waitFor(() => {
      const s = c.status()
      return s.assignment.owners.every((o) => o === 'w0')
    }, 'survivor owns every partition')
    await waitFor(
      () => new Set(sink.records.filter((r) => r.stream === 'fired').map((r) => r.key)).size === 40,
      'every key fired',
    )
    await new Promise((resolve) => setTimeout(resolve, 300))
    const fired = sink.records.filter((r) => r.stream === 'fired').map((r) => r.key)
    expect(fired.length).toBe(40)
  })

  it('event-time timers fire when the watermark of later events reaches them, in (ts, key) order', async () => {
    const { cl, sink } = await cluster(EVENT_TIMER_JOB, 1)
    // One key group at a time: all keys of this test hash anywhere, so order is checked per key.
    for (let t = 0; t < 10; t++) for (const key of ['a', 'b', 'c']) cl.send(key, { ts: t * 500 })
    await cl.flush()
    // Watermark reaches 4500: timers at 1000..4500 of every key fired (5500 not yet).
    await waitFor(() => sink.records.filter((r) => r.stream === 'due').length >= 24, 'timers fired')
    const due = sink.records.filter((r) => r.stream === 'due')
    for (const key of ['a', 'b', 'c']) {
      const ts = due.filter((r) => r.key === key).map((r) => (r.event as { ts: number }).ts)
      expect(ts).toEqual([1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500])
    }
    for (const r of due) {
      const e = r.event as { ts: number; watermark: number }
      expect(e.watermark).toBeGreaterThanOrEqual(e.ts)
    }
  })
})
