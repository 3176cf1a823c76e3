/**
 * SinkRunner logic against a scripted in-test sink (no real system behind it: it fails on
 * demand). Backoff is tiny so retries are quick; nothing asserts on durations.
 */
import { Packr } from 'msgpackr'
import { Registry } from 'prom-client'
import { describe, expect, it, onTestFinished } from 'vitest'
import { registerSinkMetrics } from '../../../src/connectors/metrics.ts'
import { SinkRunner, type SinkRunnerOptions } from '../../../src/connectors/runner.ts'
import type {
  DeadLetterRecord,
  EmittedBatch,
  EmittedRecord,
  PackedEmittedBatch,
  Sink,
  StateBatch,
} from '../../../src/connectors/sink.ts'
import { ErrorCodes, ShoalError } from '../../../src/errors.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const packr = new Packr({ useRecords: true, moreTypes: true })

const unavailable = (): ShoalError => new ShoalError(ErrorCodes.SINK_UNAVAILABLE, 'down', { retryable: true })
const rejected = (what: string): ShoalError => new ShoalError(ErrorCodes.SINK_REJECTED, `refused ${what}`)

interface Written {
  partition: number
  offset: number | null
  index: number
  event: unknown
}

/** A sink that fails on demand: the runner's logic is what is under test. */
class ScriptedSink implements Sink {
  readonly name = 'test'
  readonly accepts = { events: true, state: true }
  readonly written: Written[] = []
  readonly chunks: EmittedBatch[][] = []
  readonly states: StateBatch[][] = []
  readonly dead: DeadLetterRecord[] = []
  /** Errors thrown by the next calls, one per call (writes and opens alike). */
  failures: Error[] = []
  /** Thrown by every write while set. */
  down: (() => Error) | undefined
  /** A record matching this makes its whole chunk fail. */
  poison: ((event: unknown) => Error | undefined) | undefined
  deadLetterFailures = 0
  stateFailures: Error[] = []
  openFailures: Error[] = []
  /** While set, each write waits for release(). */
  gated = false
  #waiting: (() => void)[] = []
  opened = 0
  closed = 0

  release(): void {
    this.#waiting.shift()?.()
  }
  get blocked(): number {
    return this.#waiting.length
  }

  open(): Promise<void> {
    const f = this.openFailures.shift()
    if (f !== undefined) return Promise.reject(f)
    this.opened++
    return Promise.resolve()
  }

  async writeEvents(batches: readonly EmittedBatch[]): Promise<void> {
    if (this.gated) await new Promise<void>((resolve) => this.#waiting.push(resolve))
    this.chunks.push([...batches])
    const f = this.failures.shift()
    if (f !== undefined) throw f
    if (this.down !== undefined) throw this.down()
    for (const b of batches) {
      for (const [, , event] of b.records) {
        const err = this.poison?.(event)
        if (err !== undefined) throw err
      }
    }
    for (const b of batches) {
      b.records.forEach(([, , event], i) =>
        this.written.push({ partition: b.partition, offset: b.offset, index: b.firstIndex + i, event }),
      )
    }
  }

  async writeState(batches: readonly StateBatch[]): Promise<void> {
    if (this.gated) await new Promise<void>((resolve) => this.#waiting.push(resolve))
    const f = this.stateFailures.shift()
    if (f !== undefined) throw f
    this.states.push([...batches])
  }

  deadLetter(records: readonly DeadLetterRecord[]): Promise<void> {
    if (this.deadLetterFailures > 0) {
      this.deadLetterFailures--
      return Promise.reject(unavailable())
    }
    this.dead.push(...records)
    return Promise.resolve()
  }

  close(): Promise<void> {
    this.closed++
    return Promise.resolve()
  }
}

const fast: SinkRunnerOptions = { initialDelayMs: 1, maxDelayMs: 4, random: () => 0.5 }

function runner(sink: Sink, options: SinkRunnerOptions = {}): SinkRunner {
  const r = new SinkRunner(sink, { ...fast, ...options })
  onTestFinished(() => r.close({ timeoutMs: 100 }).catch(() => {}))
  return r
}

const records = (partition: number, n: number, from = 0): EmittedRecord[] =>
  Array.from({ length: n }, (_, i) => ['out', `k${i}`, { p: partition, n: from + i }] as const)

const batch = (
  partition: number,
  offset: number | null,
  recs: EmittedRecord[],
  firstIndex = 0,
): EmittedBatch => ({
  partition,
  offset,
  firstIndex,
  records: recs,
})

const byPartition = (w: Written[], p: number): unknown[] =>
  w.filter((x) => x.partition === p).map((x) => x.event)

describe('SinkRunner', () => {
  it('retries an unavailable sink with backoff and then writes everything once, in order', async () => {
    const sink = new ScriptedSink()
    const r = runner(sink, { maxAttempts: 2, maxChunkBatches: 2 })
    sink.down = unavailable
    await r.start()
    r.pushEvents(batch(0, 1, records(0, 3)))
    r.pushEvents(batch(1, 1, records(1, 2)))
    r.pushEvents(batch(0, 2, records(0, 2, 3)))
    await waitFor(() => sink.chunks.length >= 10, 'ten failed attempts')
    expect(r.status().state).toBe('retrying')
    expect(r.status().lag).toBe(7)
    // Far more failures than maxAttempts: an outage never splits or dead-letters.
    sink.down = undefined
    await r.flushed()
    expect(byPartition(sink.written, 0)).toEqual(records(0, 5).map((x) => x[2]))
    expect(byPartition(sink.written, 1)).toEqual(records(1, 2).map((x) => x[2]))
    expect(sink.dead).toEqual([])
    const s = r.status()
    expect(s).toMatchObject({ name: 'test', state: 'ok', lag: 0, written: 7, deadLettered: 0 })
    expect(s.errors).toBeGreaterThanOrEqual(10)
    expect(s.lastError).toMatch(/^SHOAL_ERR_SINK_UNAVAILABLE: down/)
    expect(s.lastErrorAt).toBeTypeOf('number')
    expect(
      sink.chunks.every((c) => c.reduce((n, b) => n + b.records.length, 0) === 5 || c.length === 1),
    ).toBe(true)
  })

  it('retries unknown errors without splitting below maxAttempts', async () => {
    const sink = new ScriptedSink()
    const r = runner(sink, { maxAttempts: 4 })
    sink.failures = [new Error('boom'), new TypeError('bang'), new Error('boom')]
    await r.start()
    r.pushEvents(batch(0, 1, records(0, 6)))
    await r.flushed()
    expect(sink.chunks.map((c) => c[0]!.records.length)).toEqual([6, 6, 6, 6])
    expect(sink.written).toHaveLength(6)
    expect(r.status().errors).toBe(3)
  })

  it('coalesces batches into chunks and splits large batches by firstIndex', async () => {
    const sink = new ScriptedSink()
    const r = runner(sink, { maxChunkRecords: 5 })
    r.pushEvents(batch(0, 1, records(0, 2)))
    r.pushEvents(batch(1, 1, records(1, 3)))
    r.pushEvents(batch(2, 9, records(2, 12), 100))
    r.pushEvents(batch(3, 1, []))
    await r.start()
    await r.flushed()
    expect(sink.chunks.map((c) => c.map((b) => [b.partition, b.firstIndex, b.records.length]))).toEqual([
      [
        [0, 0, 2],
        [1, 0, 3],
      ],
      [[2, 100, 5]],
      [[2, 105, 5]],
      [[2, 110, 2]],
    ])
    expect(sink.written.filter((w) => w.partition === 2).map((w) => w.index)).toEqual(
      Array.from({ length: 12 }, (_, i) => 100 + i),
    )
  })

  it('takes state in larger chunks than events (maxStateChunkRecords): one write per many partitions', async () => {
    // A state write is a transaction with fixed costs: one per partition made a 1M-key
    // checkpoint 256 Postgres transactions. Events stay within maxChunkRecords.
    const sink = new ScriptedSink()
    const r = runner(sink, { maxChunkRecords: 5, maxStateChunkRecords: 12 })
    const keys = (p: number, n: number): [string, unknown][] =>
      Array.from({ length: n }, (_, i) => [`p${p}k${i}`, i])
    for (let p = 0; p < 5; p++)
      r.pushState({ partition: p, version: 1, upserts: keys(p, 4), deletes: [], full: false })
    r.pushEvents(batch(9, 1, records(9, 4)))
    r.pushEvents(batch(8, 1, records(8, 4)))
    await r.start()
    await r.flushed()
    expect(sink.states.map((c) => c.map((b) => b.partition))).toEqual([
      [0, 1, 2],
      [3, 4],
    ])
    expect(sink.chunks.map((c) => c.map((b) => b.partition))).toEqual([[9], [8]])
  })

  it('pushes back: full at the limit, room() resolves once writes drain', async () => {
    const sink = new ScriptedSink()
    sink.gated = true
    const r = runner(sink, { maxBufferedRecords: 10, maxChunkBatches: 1 })
    await r.start()
    r.pushEvents(batch(0, 1, records(0, 4)))
    r.pushEvents(batch(0, 2, records(0, 4)))
    expect(r.full).toBe(false)
    await expect(r.room()).resolves.toBeUndefined()
    r.pushEvents(batch(0, 3, records(0, 4)))
    // Always accepted, even beyond the limit: the caller is the one that waits.
    r.pushEvents(batch(0, 4, records(0, 4)))
    expect(r.full).toBe(true)
    expect(r.status().lag).toBe(16)
    let roomy = false
    const room = r.room().then(() => {
      roomy = true
    })
    await waitFor(() => sink.blocked === 1, 'the first write to block')
    sink.release()
    await waitFor(() => sink.blocked === 1, 'the second write to block')
    expect(roomy).toBe(false)
    expect(r.full).toBe(true)
    sink.release()
    await room
    expect(r.full).toBe(false)
    expect(r.status().lag).toBe(8)
    sink.gated = false
    sink.release()
    await r.flushed()
    expect(sink.written).toHaveLength(16)
  })

  it('writes a rejected chunk record by record and dead-letters the record that keeps failing', async () => {
    const sink = new ScriptedSink()
    const r = runner(sink, { maxAttempts: 3 })
    sink.poison = (e) => ((e as { n: number }).n === 5 ? rejected('n=5') : undefined)
    await r.start()
    r.pushEvents(batch(0, 7, records(0, 4)))
    r.pushEvents(batch(0, 8, records(0, 4, 4)))
    r.pushEvents(batch(1, 3, records(1, 3)))
    await r.flushed()
    // Everything else is written, in order; n=5 (offset 8, index 1) went to the dead letter.
    expect(byPartition(sink.written, 0)).toEqual([0, 1, 2, 3, 4, 6, 7].map((n) => ({ p: 0, n })))
    expect(byPartition(sink.written, 1)).toEqual(records(1, 3).map((x) => x[2]))
    expect(sink.dead).toEqual([
      {
        partition: 0,
        offset: 8,
        index: 1,
        record: ['out', 'k1', { p: 0, n: 5 }],
        error: 'SHOAL_ERR_SINK_REJECTED: refused n=5',
        attempts: 3,
      },
    ])
    // The single record was tried exactly maxAttempts times.
    const alone = sink.chunks.filter(
      (c) => c.length === 1 && c[0]!.records.length === 1 && c[0]!.offset === 8,
    )
    expect(alone.filter((c) => c[0]!.firstIndex === 1)).toHaveLength(3)
    expect(r.status()).toMatchObject({ deadLettered: 1, written: 10, lag: 0, state: 'ok' })
  })

  it('takes packed batches (as the processing thread packs them): written, split and dead-lettered as decoded ones', async () => {
    const sink = new ScriptedSink()
    const r = runner(sink, { maxAttempts: 3, maxChunkRecords: 5 })
    sink.poison = (e) => {
      const { p, n } = e as { p: number; n: number }
      return p === 0 && n === 5 ? rejected('n=5') : undefined
    }
    await r.start()
    const packed = (partition: number, offset: number, recs: EmittedRecord[]): PackedEmittedBatch => ({
      partition,
      offset,
      firstIndex: 0,
      count: recs.length,
      payload: packr.pack(recs),
    })
    r.pushEvents(packed(0, 7, records(0, 4)))
    r.pushEvents(packed(0, 8, records(0, 4, 4)))
    // More than maxChunkRecords: decoded and split at once.
    r.pushEvents(packed(1, 3, records(1, 7)))
    r.pushEvents(packed(2, 1, []))
    expect(r.status().lag).toBe(15)
    await r.flushed()
    expect(byPartition(sink.written, 0)).toEqual([0, 1, 2, 3, 4, 6, 7].map((n) => ({ p: 0, n })))
    expect(byPartition(sink.written, 1)).toEqual(records(1, 7).map((x) => x[2]))
    expect(sink.written.filter((w) => w.partition === 1).map((w) => w.index)).toEqual([0, 1, 2, 3, 4, 5, 6])
    expect(sink.dead).toEqual([
      {
        partition: 0,
        offset: 8,
        index: 1,
        record: ['out', 'k1', { p: 0, n: 5 }],
        error: 'SHOAL_ERR_SINK_REJECTED: refused n=5',
        attempts: 3,
      },
    ])
    expect(r.status()).toMatchObject({ deadLettered: 1, written: 14, lag: 0, state: 'ok' })
  })

  it('splits a chunk that fails maxAttempts times with unknown errors, and dead-letters the culprit', async () => {
    const sink = new ScriptedSink()
    const r = runner(sink, { maxAttempts: 2 })
    sink.poison = (e) => ((e as { n: number }).n === 0 ? new TypeError('cannot serialize') : undefined)
    await r.start()
    r.pushEvents(batch(2, null, records(2, 3)))
    await r.flushed()
    expect(byPartition(sink.written, 2)).toEqual([1, 2].map((n) => ({ p: 2, n })))
    expect(sink.dead).toMatchObject([{ partition: 2, offset: null, index: 0, attempts: 2 }])
    expect(sink.dead[0]!.error).toBe('TypeError: cannot serialize')
  })

  it('never counts outages against a record: an unavailable sink only delays the dead letter', async () => {
    const sink = new ScriptedSink()
    const r = runner(sink, { maxAttempts: 2 })
    let calls = 0
    sink.poison = () => (++calls % 2 === 0 ? unavailable() : rejected('x'))
    sink.deadLetterFailures = 3
    await r.start()
    r.pushEvents(batch(0, 1, records(0, 1)))
    await r.flushed()
    expect(sink.dead).toMatchObject([{ index: 0, attempts: 2 }])
    expect(sink.dead[0]!.error).toMatch(/SINK_REJECTED/)
    expect(r.status().deadLettered).toBe(1)
  })

  it('retries state forever, even when rejected, and never dead-letters it', async () => {
    const sink = new ScriptedSink()
    const r = runner(sink, { maxAttempts: 2 })
    sink.stateFailures = [rejected('row'), rejected('row'), rejected('row'), unavailable()]
    await r.start()
    const s1: StateBatch = { partition: 0, version: 1, upserts: [['a', 1]], deletes: ['b'], full: false }
    const s2: StateBatch = { partition: 1, version: 2, upserts: [], deletes: [], full: true }
    r.pushState(s1)
    r.pushState({ partition: 0, version: 2, upserts: [], deletes: [], full: false })
    r.pushState(s2)
    await r.flushed()
    expect(sink.states).toEqual([[s1, s2]])
    expect(sink.dead).toEqual([])
    expect(r.status()).toMatchObject({ errors: 4, written: 2, deadLettered: 0 })
  })

  it('keeps order between emitted records and state in one queue', async () => {
    const sink = new ScriptedSink()
    const order: string[] = []
    const r = runner(sink)
    const origEvents = sink.writeEvents.bind(sink)
    sink.writeEvents = async (b) => {
      order.push(`e${b.length}`)
      await origEvents(b)
    }
    const origState = sink.writeState.bind(sink)
    sink.writeState = async (b) => {
      order.push(`s${b.length}`)
      await origState(b)
    }
    r.pushEvents(batch(0, 1, records(0, 1)))
    r.pushEvents(batch(0, 2, records(0, 1)))
    r.pushState({ partition: 0, version: 1, upserts: [['k', 1]], deletes: [], full: false })
    r.pushEvents(batch(0, 3, records(0, 1)))
    await r.start()
    await r.flushed()
    expect(order).toEqual(['e2', 's1', 'e1'])
  })

  it("merges a partition's state batches while the sink is behind: one write per key, at the newest version", async () => {
    const sink = new ScriptedSink()
    sink.gated = true
    const r = runner(sink)
    await r.start()
    r.pushState({
      partition: 0,
      version: 1,
      upserts: [
        ['a', 1],
        ['b', 1],
      ],
      deletes: [],
      full: false,
    })
    await waitFor(() => sink.blocked === 1, 'the first write to start')
    // The writer holds version 1; these arrive meanwhile and become one batch per partition.
    r.pushState({ partition: 0, version: 2, upserts: [['a', 2]], deletes: ['b'], full: false })
    r.pushState({ partition: 1, version: 5, upserts: [['x', 5]], deletes: [], full: false })
    r.pushState({ partition: 0, version: 3, upserts: [['c', 3]], deletes: [], full: false })
    r.pushState({ partition: 1, version: 6, upserts: [['x', 6]], deletes: [], full: false })
    r.pushState({ partition: 0, version: 4, upserts: [['b', 4]], deletes: ['c'], full: false })
    expect(r.mergedStateBatches).toBe(3)
    expect(r.status().lag).toBe(2 + 3 + 1) // v1 (a, b) in flight; p0: a, b, and c deleted; p1: x
    let flushed = false
    const f = r.flushed().then(() => (flushed = true))
    sink.release()
    await waitFor(() => sink.blocked === 1, 'the second write')
    expect(flushed).toBe(false)
    sink.release()
    await f
    expect(sink.states).toEqual([
      [
        {
          partition: 0,
          version: 1,
          upserts: [
            ['a', 1],
            ['b', 1],
          ],
          deletes: [],
          full: false,
        },
      ],
      [
        {
          partition: 0,
          version: 4,
          upserts: [
            ['a', 2],
            ['b', 4],
          ],
          deletes: ['c'],
          full: false,
        },
        { partition: 1, version: 6, upserts: [['x', 6]], deletes: [], full: false },
      ],
    ])
    expect(r.status().lag).toBe(0)
  })

  it('a full batch replaces what its partition had pending; later deltas merge into it and keep it full', async () => {
    const sink = new ScriptedSink()
    sink.gated = true
    const r = runner(sink)
    await r.start()
    r.pushState({ partition: 2, version: 1, upserts: [['a', 1]], deletes: [], full: false })
    await waitFor(() => sink.blocked === 1, 'the first write')
    r.pushState({ partition: 2, version: 2, upserts: [['z', 0]], deletes: ['q'], full: false })
    r.pushState({
      partition: 2,
      version: 7,
      upserts: [
        ['a', 7],
        ['b', 7],
      ],
      deletes: [],
      full: true,
    })
    r.pushState({ partition: 2, version: 8, upserts: [['c', 8]], deletes: ['a'], full: false })
    sink.release()
    await waitFor(() => sink.blocked === 1, 'the second write')
    sink.release()
    await r.flushed()
    expect(sink.states[1]).toEqual([
      {
        partition: 2,
        version: 8,
        upserts: [
          ['b', 7],
          ['c', 8],
        ],
        deletes: ['a'],
        full: true,
      },
    ])
  })

  it('flushedEvents() waits for emitted records only, not for state written behind', async () => {
    const sink = new ScriptedSink()
    sink.gated = true
    const r = runner(sink)
    await r.start()
    r.pushEvents(batch(0, 1, records(0, 1)))
    const events = r.flushedEvents()
    await waitFor(() => sink.blocked === 1, 'the events write')
    sink.release()
    await events
    r.pushState({ partition: 0, version: 1, upserts: [['k', 1]], deletes: [], full: false })
    await waitFor(() => sink.blocked === 1, 'the state write')
    // The state write is held: events are flushed, everything is not.
    await expect(r.flushedEvents()).resolves.toBeUndefined()
    let all = false
    const f = r.flushed().then(() => (all = true))
    await new Promise((res) => setTimeout(res, 5))
    expect(all).toBe(false)
    sink.release()
    await f
  })

  it('flushed() waits for what was pushed before the call only', async () => {
    const sink = new ScriptedSink()
    sink.gated = true
    const r = runner(sink, { maxChunkBatches: 1 })
    await expect(r.flushed()).resolves.toBeUndefined()
    await r.start()
    r.pushEvents(batch(0, 1, records(0, 1)))
    let first = false
    let second = false
    const f1 = r.flushed().then(() => {
      first = true
    })
    r.pushEvents(batch(0, 2, records(0, 1)))
    const f2 = r.flushed().then(() => {
      second = true
    })
    await waitFor(() => sink.blocked === 1, 'the first write')
    sink.release()
    await f1
    expect(sink.written).toHaveLength(1)
    expect(second).toBe(false)
    await waitFor(() => sink.blocked === 1, 'the second write')
    sink.release()
    await f2
    expect(first && second).toBe(true)
    expect(sink.written).toHaveLength(2)
  })

  it('opens with retries; SINK_SCHEMA fails start', async () => {
    const sink = new ScriptedSink()
    sink.openFailures = [unavailable(), new Error('econnreset')]
    const r = runner(sink)
    await r.start()
    expect(sink.opened).toBe(1)
    expect(r.status()).toMatchObject({ state: 'ok', errors: 2 })

    const bad = new ScriptedSink()
    bad.openFailures = [new ShoalError(ErrorCodes.SINK_SCHEMA, 'table has no key column')]
    const r2 = runner(bad)
    await expect(r2.start()).rejects.toMatchObject({ code: ErrorCodes.SINK_SCHEMA })
    expect(r2.status().state).toBe('starting')
  })

  it('close flushes, closes the sink and refuses more records', async () => {
    const sink = new ScriptedSink()
    const r = runner(sink)
    await r.start()
    r.pushEvents(batch(0, 1, records(0, 3)))
    await r.close({ timeoutMs: 5000 })
    expect(sink.written).toHaveLength(3)
    expect(sink.closed).toBe(1)
    expect(r.status().state).toBe('closed')
    expect(() => r.pushEvents(batch(0, 2, records(0, 1)))).toThrow(
      expect.objectContaining({ code: ErrorCodes.CLOSED }),
    )
    // Idempotent.
    await r.close()
    expect(sink.closed).toBe(1)
  })

  it('close at its deadline reports what was not written', async () => {
    const sink = new ScriptedSink()
    sink.down = unavailable
    const r = runner(sink)
    await r.start()
    r.pushEvents(batch(0, 1, records(0, 3)))
    r.pushEvents(batch(1, 1, records(1, 2)))
    const pending = r.flushed()
    const err = (await r.close({ timeoutMs: 50 }).catch((e: unknown) => e)) as ShoalError
    expect(err).toBeInstanceOf(ShoalError)
    expect(err.code).toBe(ErrorCodes.SINK_UNAVAILABLE)
    expect(err.data).toMatchObject({ sink: 'test', unwritten: 5 })
    expect(err.message).toMatch(/5 record\(s\) not written.*SINK_UNAVAILABLE: down/)
    await expect(pending).rejects.toBe(err)
    expect(sink.closed).toBe(1)
    expect(r.status()).toMatchObject({ state: 'closed', lag: 5 })
  })

  it('close ends a start that is still retrying', async () => {
    const sink = new ScriptedSink()
    sink.openFailures = Array.from({ length: 1000 }, unavailable)
    const r = runner(sink)
    const started = r.start()
    await waitFor(() => r.status().errors >= 3, 'open retries')
    await r.close({ timeoutMs: 20 })
    await expect(started).rejects.toMatchObject({ code: ErrorCodes.CLOSED })
  })

  it('exports lag, written, errors and dead letters as metrics', async () => {
    const sink = new ScriptedSink()
    const r = runner(sink, { maxAttempts: 1 })
    const registry = new Registry()
    registerSinkMetrics(registry, () => [r])
    sink.failures = [unavailable()]
    sink.poison = (e) => ((e as { n: number }).n === 1 ? rejected('one') : undefined)
    await r.start()
    r.pushEvents(batch(0, 1, records(0, 3)))
    await r.flushed()
    const text = await registry.metrics()
    expect(text).toMatch(/^shoal_sink_lag\{sink="test"\} 0$/m)
    expect(text).toMatch(/^shoal_sink_written_total\{sink="test"\} 2$/m)
    expect(text).toMatch(/^shoal_sink_dead_letters_total\{sink="test"\} 1$/m)
    expect(Number(/^shoal_sink_errors_total\{sink="test"\} (\d+)$/m.exec(text)?.[1])).toBeGreaterThanOrEqual(
      3,
    )
  })
})
