/**
 * A memory-state worker hands the new batches of one message to its engine together
 * (DataPlane.#takeFast / #applyRound, Engine.batches): each must still be accepted, applied
 * and acknowledged exactly as if it had come alone, in order with the batches of the same
 * partition that take the per-batch path (duplicates, refusals) in the same message.
 */
import { Packr } from 'msgpackr'
import { pino } from 'pino'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { ErrorCodes } from '../../../src/errors.ts'
import { Engine } from '../../../src/processing/engine.ts'
import { type Envelope, type EventAckBody, type EventBatchBody } from '../../../src/protocol/messages.ts'
import { DataPlane } from '../../../src/worker/data-plane.ts'
import { fakeConnection, type FakeConnection } from '../../helpers/fake-connection.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: process.env.DEBUG_LOG ?? 'silent' })
const packr = new Packr({ useRecords: true, moreTypes: true })
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

async function setup(served: (p: number) => boolean): Promise<{
  engine: Engine
  dp: DataPlane
  link: FakeConnection
}> {
  const engine = new Engine({ job: 'count', threads: 1 })
  cleanup.push(() => engine.close())
  const dp = new DataPlane({ engine, logger })
  dp.bind({ serves: served, partitionCount: 16 })
  cleanup.push(() => dp.close())
  for (const p of [0, 1, 2, 3]) await dp.restore(p, 1)
  const link = fakeConnection()
  cleanup.push(link.close)
  void dp.serve(link.conn)
  return { engine, dp, link }
}

/** A batch of `n` events of value 1 for key `k<partition>`. */
function batch(
  partition: number,
  sequence: number,
  n = 1,
  extra: Partial<EventBatchBody> = {},
): EventBatchBody {
  const events: [string, unknown][] = []
  for (let i = 0; i < n; i++) events.push([`k${partition}`, { value: 1 }])
  return {
    op: 'batch',
    partition,
    epoch: 1,
    producerId: 'P',
    sequence,
    count: n,
    payload: packr.pack(events),
    ...extra,
  }
}

function round(...batches: EventBatchBody[]): Envelope {
  return { kind: 'event', body: { op: 'batches', batches } } as unknown as Envelope
}

async function countOf(engine: Engine, p: number): Promise<number | undefined> {
  const r = await engine.get(p, `k${p}`)
  return r.found ? (packr.unpack(r.data!) as { count: number }).count : undefined
}

describe('a round of batches on a memory-state worker', () => {
  it('acks each batch as if alone: new ones applied once, duplicates acked unapplied, refusals named', async () => {
    const { engine, link } = await setup((p) => p !== 3)
    const grouped = vi.spyOn(engine, 'batches')
    link.push(round(batch(0, 1, 2), batch(1, 1), batch(2, 1, 3)))
    await waitFor(() => link.acks.length === 3, 'the first round acknowledged')
    expect(link.acks.every((a) => a.ok)).toBe(true)
    expect(grouped).toHaveBeenCalled() // the round took the grouped path
    link.acks.length = 0
    link.push(
      round(
        batch(0, 1, 2), // a duplicate of an applied batch, after nothing else of partition 0
        batch(0, 2), // new, behind the duplicate of the same partition
        batch(1, 2), // two new batches of one partition in one message
        batch(1, 3, 4),
        batch(1, 3, 4), // and the second again, while the first is in flight
        batch(3, 1), // a partition this worker does not serve
        batch(2, 5, 1, { firstSequence: 6 }), // malformed: first above last
        batch(2, 2),
      ),
    )
    await waitFor(() => link.acks.length === 8, 'every batch of the second round acknowledged')
    const ack = (p: number, s: number): EventAckBody[] =>
      link.acks.filter((a) => a.partition === p && a.sequence === s)
    expect(ack(0, 1).map((a) => a.ok)).toEqual([true])
    expect(ack(0, 2).map((a) => a.ok)).toEqual([true])
    expect(ack(1, 2).map((a) => a.ok)).toEqual([true])
    expect(ack(1, 3).map((a) => a.ok)).toEqual([true, true])
    expect(ack(3, 1)[0]?.ok).toBe(false)
    expect(ack(3, 1)[0]?.error?.code).toBe(ErrorCodes.NOT_OWNER)
    expect(ack(2, 5)[0]?.error?.code).toBe(ErrorCodes.BAD_MESSAGE)
    expect(ack(2, 2).map((a) => a.ok)).toEqual([true])
    // Every event once: partition 0 2 + 1, partition 1 1 + 1 + 4, partition 2 3 + 1.
    expect(await countOf(engine, 0)).toBe(3)
    expect(await countOf(engine, 1)).toBe(6)
    expect(await countOf(engine, 2)).toBe(4)
    expect(await countOf(engine, 3)).toBeUndefined()
  })

  it('a batch the engine refuses in a round is acked with the refusal; its retry is applied', async () => {
    const { engine, link } = await setup(() => true)
    const grouped = vi.spyOn(engine, 'batches')
    // A payload that is not msgpack fails in the thread: that batch only.
    const bad = { ...batch(1, 1), payload: Uint8Array.from([0x91, 0x92]) }
    link.push(round(batch(0, 1), bad, batch(2, 1)))
    await waitFor(() => link.acks.length === 3, 'the round acknowledged')
    expect(grouped).toHaveBeenCalled()
    expect(link.acks.find((a) => a.partition === 1)?.error?.code).toBe(ErrorCodes.JOB_FAILED)
    expect(link.acks.filter((a) => a.ok).map((a) => a.partition)).toEqual([0, 2])
    link.push(round(batch(1, 1)))
    await waitFor(() => link.acks.length === 4, 'the retry acknowledged')
    expect(link.acks[3]?.ok).toBe(true)
    expect(await countOf(engine, 1)).toBe(1)
  })
})
