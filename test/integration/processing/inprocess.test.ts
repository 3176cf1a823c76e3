/**
 * The data plane in one process (memory transport, real piscina threads): exact per-key
 * results, per-key order, duplicates dropped, a throwing job dead-letters only its event.
 */
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../../src/client/client.ts'
import { Subscriber, type EmittedEvent } from '../../../src/client/subscriber.ts'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import { MemorySink } from '../../../src/connectors/memory/sink.ts'
import type { Sink } from '../../../src/connectors/sink.ts'
import { ErrorCodes, ShoalError } from '../../../src/errors.ts'
import { createMemoryTransport } from '../../../src/transport/memory/memory-transport.ts'
import type { Transport } from '../../../src/transport/transport.ts'
import { createWorkerNode, type WorkerNode } from '../../../src/worker/node.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: 'silent' })
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})
let port = 5000

async function cluster(
  workers: number,
  job?: string,
  sinks?: () => Sink[],
  dataPlane?: { maxInFlightBatches?: number; maxInFlightBytes?: number },
): Promise<{ c: Coordinator; nodes: WorkerNode[] }> {
  const c = new Coordinator({
    transport: createMemoryTransport({ nodeId: 'coordinator', role: 'coordinator' }),
    listen: { host: 'proc', port: port++ },
    partitions: 32,
    heartbeatIntervalMs: 50,
    logger,
  })
  await c.start()
  cleanup.push(() => c.stop({ timeoutMs: 200 }))
  const nodes: WorkerNode[] = []
  for (let i = 0; i < workers; i++) {
    const n = createWorkerNode({
      transport: createMemoryTransport({ nodeId: `w${i}`, role: 'worker' }),
      coordinator: c.address,
      listen: { host: 'proc', port: port++ },
      memberId: `w${i}`,
      version: 'test',
      job,
      sinks: sinks?.(),
      threads: 1,
      heartbeatIntervalMs: 50,
      logger,
      ...(dataPlane === undefined ? {} : { dataPlane }),
    })
    await n.start()
    cleanup.push(() => n.stop())
    nodes.push(n)
  }
  await waitFor(
    () =>
      c.readiness().ok &&
      c.status().members.every((m) => m.partitions > 0 && m.readyPartitions === m.partitions),
    'cluster ready',
    // Threads start on a shared 2-core CI machine: setup may take a while (not what is tested).
    20_000,
  )
  return { c, nodes }
}

async function client(
  c: Coordinator,
  extra: Partial<Parameters<typeof ShoalClient.connect>[0]> = {},
): Promise<ShoalClient> {
  const cl = await ShoalClient.connect({
    coordinator: c.address,
    transport: createMemoryTransport({ nodeId: 'client', role: 'client' }),
    ...extra,
  })
  cleanup.push(() => cl.close())
  return cl
}

describe('processing (in process)', () => {
  it('exact per-key count and sum for 200k events over 5k keys, read back with a state dump', async () => {
    const { c } = await cluster(3)
    const cl = await client(c)
    const expected = new Map<string, { count: number; sum: number }>()
    for (let i = 0; i < 200_000; i++) {
      const key = `k${(i * 7919) % 5000}`
      const value = (i % 13) - 3
      await cl.write(key, { value })
      const e = expected.get(key) ?? { count: 0, sum: 0 }
      e.count++
      e.sum += value
      expected.set(key, e)
    }
    await cl.flush()
    expect(cl.stats.acked).toBe(200_000)
    const got = new Map<string, unknown>()
    for await (const [k, v] of cl.dumpState()) got.set(k, v)
    expect(got.size).toBe(5000)
    for (const [k, e] of expected) expect(got.get(k), k).toEqual(e)
    expect(await cl.getState('k42')).toEqual(expected.get('k42'))
    expect(await cl.getState('never-sent')).toBeUndefined()
  })

  it('keeps per-key order', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-job-'))
    const jobPath = join(dir, 'order.mjs')
    writeFileSync(
      jobPath,
      `export default { name: 'order', init: () => ({ last: -1, outOfOrder: 0, n: 0 }),
        process(s, e) { if (e.i <= s.last) s.outOfOrder++; s.last = e.i; s.n++; return s } }`,
    )
    const { c } = await cluster(2, jobPath)
    const cl = await client(c, { batchSize: 37, lingerMs: 1 })
    for (let i = 0; i < 20_000; i++) await cl.write(`key-${i % 50}`, { i })
    await cl.flush()
    let n = 0
    for await (const [, v] of cl.dumpState()) {
      expect((v as { outOfOrder: number }).outOfOrder).toBe(0)
      n += (v as { n: number }).n
    }
    expect(n).toBe(20_000)
  })

  it.each([
    { bound: 'tasks', dataPlane: { maxInFlightBatches: 4 } },
    { bound: 'bytes', dataPlane: { maxInFlightBytes: 2048 } },
  ])(
    'backpressure: a slow job bounds what the client buffers and what the worker queues ($bound)',
    async ({ dataPlane }) => {
      const dir = mkdtempSync(join(tmpdir(), 'shoal-job-'))
      const jobPath = join(dir, 'slow.mjs')
      writeFileSync(
        jobPath,
        `const pause = new Int32Array(new SharedArrayBuffer(4))
       export default { name: 'slow', init: () => ({ n: 0 }),
        process(s, e) { if (e.i % 50 === 0) Atomics.wait(pause, 0, 0, 2); s.n++; return s } }`,
      )
      const { c, nodes } = await cluster(1, jobPath, undefined, dataPlane)
      const cl = await client(c, { maxBufferedEvents: 2000, batchSize: 100 })
      let maxUnacked = 0
      let maxInFlight = 0
      let maxBytes = 0
      let waited = 0
      for (let i = 0; i < 30_000; i++) {
        if (!cl.send(`k${i % 300}`, { i })) {
          waited++
          await cl.drain()
        }
        maxUnacked = Math.max(maxUnacked, cl.unacked)
        maxInFlight = Math.max(maxInFlight, nodes[0]!.engine.inFlight)
        maxBytes = Math.max(maxBytes, nodes[0]!.dataPlane.inFlightBytes)
      }
      await cl.flush()
      // The producer was made to wait, and neither side ever held more than its bound (the
      // worker admits a batch while below its bound: at most one batch, < 1 KiB here, above).
      expect(waited).toBeGreaterThan(0)
      expect(maxUnacked).toBeLessThanOrEqual(2000)
      if (dataPlane.maxInFlightBatches !== undefined)
        expect(maxInFlight).toBeLessThanOrEqual(dataPlane.maxInFlightBatches)
      if (dataPlane.maxInFlightBytes !== undefined) {
        expect(maxBytes).toBeGreaterThan(0)
        expect(maxBytes).toBeLessThan(dataPlane.maxInFlightBytes + 1024)
      }
      let n = 0
      for await (const [, v] of cl.dumpState()) n += (v as { n: number }).n
      expect(n).toBe(30_000)
    },
  )

  it('a job that throws dead-letters only that event and the worker keeps going', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-job-'))
    const jobPath = join(dir, 'throws.mjs')
    writeFileSync(
      jobPath,
      `export default { name: 'throws', init: () => ({ n: 0 }),
        process(s, e) { if (e.bad) throw new Error('bad event ' + e.i); s.n++; return s } }`,
    )
    const { c, nodes } = await cluster(1, jobPath)
    const cl = await client(c)
    for (let i = 0; i < 1000; i++) cl.send('only-key', { i, bad: i % 100 === 0 })
    await cl.flush()
    expect(await cl.getState('only-key')).toEqual({ n: 990 })
    expect(nodes[0]!.dataPlane.deadLettered).toBe(10)
  })

  it('emitted events reach live subscribers (filtered by stream) and every worker sink', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-job-'))
    const jobPath = join(dir, 'emit.mjs')
    writeFileSync(
      jobPath,
      `export default { name: 'emit', init: () => ({ n: 0 }),
        process(s, e, ctx) { s.n++; ctx.emit(e.v % 2 === 0 ? 'even' : 'odd', { v: e.v, n: s.n }); return s } }`,
    )
    const memSinks: MemorySink[] = []
    const { c } = await cluster(3, jobPath, () => {
      const m = new MemorySink({ accepts: { events: true, state: false } })
      memSinks.push(m)
      return [m]
    })
    const all: EmittedEvent[] = []
    const even: EmittedEvent[] = []
    for (const [into, streams] of [
      [all, undefined],
      [even, ['even']],
    ] as const) {
      const sub = await Subscriber.connect({
        coordinator: c.address,
        transport: createMemoryTransport({ nodeId: `sub-${into.length}`, role: 'client' }),
        streams: streams === undefined ? undefined : [...streams],
        onEvent: (e) => into.push(e),
      })
      cleanup.push(() => sub.close())
      await waitFor(() => sub.workers === 3, 'subscribed to every worker')
    }
    const cl = await client(c)
    for (let v = 0; v < 1000; v++) await cl.write(`k${v % 10}`, { v })
    await cl.flush()
    await waitFor(() => all.length === 1000 && even.length === 500, 'every emitted event delivered')
    expect(new Set(even.map((e) => e.stream))).toEqual(new Set(['even']))
    expect(all.filter((e) => e.stream === 'odd')).toHaveLength(500)
    // Per key, emitted in processing order: n counts up 1..100 for each of the 10 keys.
    for (let k = 0; k < 10; k++) {
      const ns = all.filter((e) => e.key === `k${k}`).map((e) => (e.event as { n: number }).n)
      expect(ns).toEqual(Array.from({ length: 100 }, (_, i) => i + 1))
    }
    const sunk = memSinks.flatMap((m) => m.records)
    expect(sunk).toHaveLength(1000)
    expect(sunk.filter((r) => r.key === 'k3').map((r) => (r.event as { v: number }).v)).toEqual(
      Array.from({ length: 100 }, (_, i) => 3 + 10 * i),
    )
  })

  it('through the coordinator gateway: always, and in auto mode for workers the client cannot dial', async () => {
    const { c } = await cluster(3)
    const inner = createMemoryTransport({ nodeId: 'isolated-client', role: 'client' })
    // A client on a network where only the coordinator is reachable (like a host outside a
    // compose network): dialing a worker's advertised address fails.
    const isolated: Transport = {
      name: inner.name,
      listen: (a, h) => inner.listen(a, h),
      connect: (address, options) =>
        address === c.address
          ? inner.connect(address, options)
          : Promise.reject(new ShoalError(ErrorCodes.CONNECT_FAILED, `cannot reach ${address}`)),
    }
    for (const gateway of ['auto', 'always'] as const) {
      const cl = await ShoalClient.connect({ coordinator: c.address, transport: isolated, gateway })
      cleanup.push(() => cl.close())
      const expected = new Map<string, { count: number; sum: number }>()
      for (let i = 0; i < 20_000; i++) {
        const key = `${gateway}-${i % 700}`
        cl.send(key, { value: i % 5 })
        const e = expected.get(key) ?? { count: 0, sum: 0 }
        e.count++
        e.sum += i % 5
        expected.set(key, e)
      }
      await cl.flush()
      expect(cl.stats.failed).toBe(0)
      expect(await cl.getState(`${gateway}-7`)).toEqual(expected.get(`${gateway}-7`))
      const got = new Map<string, unknown>()
      for await (const [k, v] of cl.dumpState()) if (k.startsWith(`${gateway}-`)) got.set(k, v)
      expect(got).toEqual(expected)
    }
    // 'never' does not fall back: the batch cannot be delivered and flush says so.
    const direct = await ShoalClient.connect({
      coordinator: c.address,
      transport: isolated,
      gateway: 'never',
      deliveryTimeoutMs: 300,
    })
    cleanup.push(() => direct.close())
    direct.send('k', { value: 1 })
    await expect(direct.flush()).rejects.toMatchObject({ code: ErrorCodes.CONNECT_FAILED })
  })
})
