/**
 * A partition's engine tasks must run in the order they were submitted, even when its thread
 * has a queue (docs/reliability.md, "Leader partitions"). piscina's default (stricterFIFO
 * false) sends a queued task that finds the thread busy to the back of the queue, so a fence's
 * drop queued behind other work ran after the next restore's load of the same partition and
 * emptied the restored state under a runtime that went on serving.
 *
 * The thread is held busy deterministically: the job blocks on an event flagged `block` until
 * the test creates a file, so the queue's content is known when the thread resumes.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Packr } from 'msgpackr'
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { Engine } from '../../../src/processing/engine.ts'
import { openPartitionStore, type PartitionStore } from '../../../src/state/checkpoint/partition-store.ts'
import { createStateBackend } from '../../../src/state/index.ts'
import { DataPlane } from '../../../src/worker/data-plane.ts'
import { ErrorCodes } from '../../../src/errors.ts'
import type { Envelope } from '../../../src/protocol/messages.ts'
import { fakeConnection } from '../../helpers/fake-connection.ts'
import { waitFor } from '../../helpers/wait-for.ts'
import { packStates, statePackr } from '../../helpers/packed-states.ts'

const logger = pino({ level: process.env.DEBUG_LOG ?? 'silent' })
/** Batches: msgpack records, as the client sends them. */
const packr = new Packr({ useRecords: true, moreTypes: true })

const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

/** A count job whose thread blocks on an event `{ block: true }` until `release()`. */
function blockingJob(): { job: string; release: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-order-'))
  const flag = join(dir, 'go')
  const job = join(dir, 'blocking.mjs')
  writeFileSync(
    job,
    `import { existsSync } from 'node:fs'
     const nap = new Int32Array(new SharedArrayBuffer(4))
     export default { name: 'blocking', init: () => ({ n: 0 }),
       process(s, e) { if (e.block) while (!existsSync(${JSON.stringify(flag)})) Atomics.wait(nap, 0, 0, 5); s.n++; return s } }`,
  )
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }))
  return { job, release: () => writeFileSync(flag, '') }
}

function startEngine({ job, release }: { job: string; release: () => void }): Engine {
  const engine = new Engine({ job, threads: 1 })
  cleanup.push(() => {
    release() // a failed test must not leave the thread blocked: close() waits for its task
    return engine.close()
  })
  return engine
}

/** Hold the (only) thread: a batch of partition `p` that blocks, running, with nothing queued. */
async function holdThread(engine: Engine, p: number): Promise<{ held: Promise<unknown> }> {
  await engine.describe() // the thread is up: the next task goes straight to it
  const held = engine.batch(p, packr.pack([['blocker', { block: true }]]))
  await new Promise((r) => setImmediate(r)) // the engine hands waiting batches on in setImmediate
  expect(engine.inFlight).toBe(1)
  expect(engine.queueDepth).toBe(0) // running, not queued
  return { held } // wrapped: an async function returning the promise would wait for it
}

describe('engine task order', () => {
  it('a partition dropped, loaded and read while its thread is busy reads what was loaded', async () => {
    const blocking = blockingJob()
    const engine = startEngine(blocking)
    const p = 0
    await engine.load(p, packStates([['old', { n: 1 }]]), false)
    const { held } = await holdThread(engine, 1)
    // Queued in this order behind the blocked batch: another partition's query, the drop, the
    // load of the new state, then the read.
    const other = engine.get(1, 'blocker')
    const dropped = engine.drop(p)
    const loaded = engine.load(p, packStates([['new', { n: 7 }]]), false)
    const read = engine.dump(p)
    expect(engine.queueDepth).toBe(4)
    blocking.release()
    await Promise.all([held, other, dropped, loaded])
    const dump = packr.unpack((await read).data) as [string, unknown][]
    expect(dump).toEqual([['new', { n: 7 }]])
  })

  it('a snapshot submitted after a batch sees the batch while the thread is busy (a true cut)', async () => {
    const blocking = blockingJob()
    const engine = startEngine(blocking)
    const p = 2
    const { held } = await holdThread(engine, 3)
    const other = engine.get(3, 'blocker')
    const applied = engine.batch(p, packr.pack([['k', {}]]))
    const snap = engine.snapshot(p, true)
    expect(engine.queueDepth).toBe(3)
    blocking.release()
    await Promise.all([held, other, applied])
    expect((await snap).kv.keys).toEqual(['k'])
  })

  it('a drop of a partition with nothing since its last drop resolves only after that drop ran', async () => {
    const blocking = blockingJob()
    const engine = startEngine(blocking)
    const p = 6
    await engine.load(p, packStates([['a', { n: 1 }]]), false)
    const { held } = await holdThread(engine, 7)
    const first = engine.drop(p) // queued behind the blocked batch (a fence does not await it)
    let second = false
    const again = engine.drop(p).then(() => (second = true)) // a restore's drop, no round trip
    for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r))
    expect(second).toBe(false) // the first drop cannot have run: the thread is still held
    blocking.release()
    await Promise.all([held, first, again])
    expect(second).toBe(true)
    expect(await stateOf(engine, p)).toEqual({})
  })
})

describe('data plane: fence, then restore while the thread is busy', () => {
  it('the restored state stays: the fence drop queued before the restore runs before its load', async () => {
    const blocking = blockingJob()
    const engine = startEngine(blocking)
    const backend = await createStateBackend(`memory:engine-order-${process.pid}`)
    const store: PartitionStore = await openPartitionStore(backend)
    cleanup.push(async () => {
      await store.close()
      await backend.close()
    })
    // Seen from the store: a restore reads the checkpoint's entries once its engine drop resolved.
    let loaded = false
    let entriesRead = false
    const loadCheckpoint: PartitionStore['loadCheckpoint'] = async (partition) => {
      const cp = await store.loadCheckpoint(partition)
      loaded = true
      return {
        ...cp,
        entries: () => {
          entriesRead = true
          return cp.entries()
        },
      }
    }
    const watched = new Proxy(store, {
      get: (target, key): unknown => {
        if (key === 'loadCheckpoint') return loadCheckpoint
        const v: unknown = Reflect.get(target, key)
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v
      },
    })
    const dp = new DataPlane({ engine, logger, store: watched })
    dp.bind({ serves: () => true, partitionCount: 16 })
    cleanup.push(() => dp.close())
    const p = 4
    // What the previous owner committed (its release checkpoint): 3 keys, nothing to replay.
    const keys = { c6: { n: 18 }, c7: { n: 3 }, c8: { n: 9 } }
    await store.claim(p, 8)
    await store.writeCheckpoint(p, 8, {
      checkpointId: 'release-8',
      changed: Object.entries(keys).map(([k, v]) => [k, statePackr.pack(v)] as const),
      logOffset: 0,
      dedup: {},
      full: true,
    })
    // This worker held the partition before (an old incarnation), then is fenced for it.
    await dp.restore(p, 9)
    expect(await stateOf(engine, p)).toEqual(keys) // not vacuous: the state is there
    const { held } = await holdThread(engine, p + 1) // another partition on the same thread
    const other = engine.get(p + 1, 'blocker')
    dp.fence(p)
    // Assigned back at a newer epoch and restored from the same checkpoint, while the thread
    // still holds the fence's drop in its queue.
    loaded = false
    entriesRead = false
    const restoring = dp.restore(p, 10)
    await waitFor(() => loaded, 'the restore has loaded the checkpoint record')
    for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r))
    // Either its load is queued behind the fence's drop (what went wrong), or the restore waits
    // for that drop before reading the state (Engine.drop now resolves after a pending drop).
    expect(engine.queueDepth === 3 || !entriesRead).toBe(true)
    blocking.release()
    await Promise.all([held, other, restoring])
    expect(dp.partitionsInFlight().map((x) => x.partition)).toContain(p) // served again
    expect(await stateOf(engine, p)).toEqual(keys)
  })
})

describe('data plane: a batch the engine refuses', () => {
  it('is not in the checkpoint cut, so its acknowledged retry is replayed after a restore', async () => {
    // The hand-off advanced the partition's applied offset and dedup table, then handed the
    // batch to the engine, which can refuse it at once (QUEUE_FULL): a checkpoint cut then
    // covered a batch its snapshot lacks, and the sender's retry (acknowledged) was skipped as
    // a duplicate when the log was replayed after a restore.
    const blocking = blockingJob()
    const engine = new Engine({ job: blocking.job, threads: 1, maxQueuePerThread: 2 })
    cleanup.push(() => {
      blocking.release()
      return engine.close()
    })
    const backend = await createStateBackend(`memory:refused-${process.pid}`)
    const store = await openPartitionStore(backend)
    cleanup.push(async () => {
      await store.close()
      await backend.close()
    })
    const dp = new DataPlane({ engine, logger, store, maxInFlightBatches: 100 })
    dp.bind({ serves: () => true, partitionCount: 16 })
    cleanup.push(() => dp.close())
    const p = 0
    await dp.restore(p, 1)
    const { held } = await holdThread(engine, 1) // the thread busy: batches wait in its queue
    const link = fakeConnection()
    cleanup.push(link.close)
    void dp.serve(link.conn)
    const batch = (sequence: number): Envelope =>
      ({
        kind: 'event',
        body: {
          op: 'batch',
          partition: p,
          epoch: 1,
          producerId: 'P',
          sequence,
          count: 1,
          payload: packr.pack([['k', {}]]),
        },
      }) as unknown as Envelope
    // Two batches fill the thread's queue (2); the third is refused.
    for (const s of [1, 2, 3]) link.push(batch(s))
    const refused = await waitFor(
      () => link.acks.find((a) => a.sequence === 3),
      'the third batch refused by the engine',
    )
    expect(refused.ok).toBe(false)
    expect(refused.error?.code).toBe(ErrorCodes.QUEUE_FULL)
    // A checkpoint now, then the thread runs everything.
    const checkpointed = dp.checkpoint('cp-1', [p])
    blocking.release()
    await held
    const [cp] = await checkpointed
    expect(cp?.partition).toBe(p)
    // The sender retries the refused batch; it is applied and acknowledged.
    link.push(batch(3))
    await waitFor(
      () =>
        link.acks
          .filter((a) => a.ok)
          .map((a) => a.sequence)
          .sort()
          .join() === '1,2,3',
      'all three batches acknowledged',
    )
    expect(await stateOf(engine, p)).toEqual({ k: { n: 3 } })
    // Another worker restores the partition from the checkpoint and the log.
    const engine2 = startEngine(blocking)
    const dp2 = new DataPlane({ engine: engine2, logger, store })
    dp2.bind({ serves: () => true, partitionCount: 16 })
    cleanup.push(() => dp2.close())
    await dp2.restore(p, 2)
    expect(await stateOf(engine2, p)).toEqual({ k: { n: 3 } })
  })
})

async function stateOf(engine: Engine, p: number): Promise<Record<string, unknown>> {
  const dump = packr.unpack((await engine.dump(p)).data) as [string, unknown][]
  return Object.fromEntries(dump)
}
