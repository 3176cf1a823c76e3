/**
 * SourcePump against a MemorySource and an in-test target standing in for the client (acks on
 * demand): read sizes under backpressure, acknowledgement only after the owner's ack, retries
 * while the source is down, dead letters for batches refused for good. Nothing asserts on
 * durations.
 */
import { unpack } from 'msgpackr'
import { describe, expect, it, onTestFinished } from 'vitest'
import { MemorySource, MemoryStream } from '../../../src/connectors/memory/source.ts'
import { SourcePump, type PumpTarget } from '../../../src/connectors/pump.ts'
import { ErrorCodes, ShoalError } from '../../../src/errors.ts'
import { waitFor } from '../../helpers/wait-for.ts'

type Batch = Parameters<PumpTarget['sendBatch']>[0]

/** Holds every batch until the test acks (or fails) it. */
class HeldTarget implements PumpTarget {
  readonly held: { batch: Batch; resolve: () => void; reject: (e: Error) => void }[] = []
  readonly applied: { key: string; n: number }[] = []
  autoAck = false
  sendBatch(batch: Batch): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const ok = (): void => {
        for (const [key, event] of unpack(batch.payload) as [string, { n: number }][])
          this.applied.push({ key, n: event.n })
        resolve()
      }
      if (this.autoAck) queueMicrotask(ok)
      else this.held.push({ batch, resolve: ok, reject })
    })
  }
  ackOne(): void {
    this.held.shift()!.resolve()
  }
}

/** Records the `max` of every read. */
class CountingSource extends MemorySource {
  readonly maxes: number[] = []
  override read(max: number, blockMs: number): ReturnType<MemorySource['read']> {
    this.maxes.push(max)
    return super.read(max, blockMs)
  }
}

const partitions = 16
const partitionOf = (key: string): number => Number(key.slice(1)) % partitions
const events = (from: number, n: number): { key: string; n: number }[] =>
  Array.from({ length: n }, (_, i) => ({ key: `k${(from + i) % 1000}`, n: from + i }))

function pump(
  source: MemorySource,
  target: PumpTarget,
  over: Partial<ConstructorParameters<typeof SourcePump>[0]> = {},
) {
  const p = new SourcePump({
    source,
    target,
    partitionOf,
    readCount: 100,
    maxInFlightRecords: 200,
    blockMs: 20,
    ackDelayMs: 1,
    retryDelay: () => 5,
    ...over,
  })
  onTestFinished(() => p.close(100))
  return p
}

describe('SourcePump', () => {
  it('waits for room for a whole read: acks of single batches do not shrink the reads', async () => {
    const stream = new MemoryStream()
    stream.append(events(0, 2000))
    const source = new CountingSource({ stream, consumer: 'w1' })
    const target = new HeldTarget()
    await pump(source, target).start()
    // Two full reads fill the window (200 in flight).
    await waitFor(() => source.maxes.length === 2 && target.held.length > 0, 'the window to fill')
    // Ack batch after batch: reading resumes only once 100 records are acked, with max 100.
    while (target.applied.length < 2000) {
      if (target.held.length > 0) target.ackOne()
      // Let the pump see each ack on its own (as acks arriving one by one from the network).
      await new Promise((r) => setImmediate(r))
    }
    await waitFor(() => stream.pending() === 0, 'every record acknowledged in the source')
    const reads = source.maxes.slice(0, 20)
    expect(reads.length).toBeGreaterThanOrEqual(20)
    for (const m of reads) expect(m).toBe(100)
    expect(target.applied.map((e) => e.n).sort((a, b) => a - b)).toEqual(events(0, 2000).map((e) => e.n))
  })

  it('acknowledges a record in the source only after its batch is acked, and never holds more than the window', async () => {
    const stream = new MemoryStream()
    stream.append(events(0, 500))
    const source = new MemorySource({ stream, consumer: 'w1' })
    const target = new HeldTarget()
    const p = pump(source, target)
    await p.start()
    await waitFor(() => p.status().inFlight === 200, 'the window to fill')
    expect(stream.pending()).toBe(200)
    const held = target.held.reduce((n, h) => n + h.batch.count, 0)
    expect(held).toBe(200)
    // Batches are per partition, each with every record's own sequence.
    for (const h of target.held) {
      expect(h.batch.eventSequences).toHaveLength(h.batch.count)
      for (const [key] of unpack(h.batch.payload) as [string][])
        expect(partitionOf(key)).toBe(h.batch.partition)
    }
    const first = target.held[0]!
    target.ackOne()
    await waitFor(
      () => stream.pending() === 200 - first.batch.count,
      'the acked batch acknowledged in the source',
    )
    target.autoAck = true
    while (target.held.length > 0) target.ackOne()
    await waitFor(() => stream.pending() === 0 && stream.lag() === 0, 'the stream drained')
    expect(target.applied).toHaveLength(500)
  })

  it('retries while the source is down and loses nothing', async () => {
    const stream = new MemoryStream()
    const source = new MemorySource({ stream, consumer: 'w1' })
    const target = new HeldTarget()
    target.autoAck = true
    const p = pump(source, target)
    await p.start()
    stream.append(events(0, 100))
    await waitFor(() => target.applied.length === 100, 'the first events')
    stream.unavailable = true
    stream.append(events(100, 100))
    await waitFor(() => source.status().errors > 2, 'failed reads')
    expect(source.status().state).toBe('retrying')
    stream.unavailable = false
    await waitFor(() => target.applied.length === 200 && stream.pending() === 0, 'the rest after the outage')
    expect(target.applied.map((e) => e.n).sort((a, b) => a - b)).toEqual(events(0, 200).map((e) => e.n))
  })

  it('dead-letters a batch the cluster refuses for good, with the reason, and reads on', async () => {
    const stream = new MemoryStream()
    stream.append(events(0, 50))
    const source = new MemorySource({ stream, consumer: 'w1' })
    const refuse = new ShoalError(ErrorCodes.JOB_FAILED, 'init threw')
    const target: PumpTarget = {
      sendBatch: (b) => (b.partition === 3 ? Promise.reject(refuse) : Promise.resolve()),
    }
    await pump(source, target).start()
    await waitFor(() => stream.pending() === 0 && stream.lag() === 0, 'everything settled')
    const refused = events(0, 50).filter((e) => partitionOf(e.key) === 3)
    expect(stream.deadLetters.map((d) => (d.event as { n: number }).n)).toEqual(refused.map((e) => e.n))
    for (const d of stream.deadLetters) expect(d.reason).toContain('init threw')
  })
})
