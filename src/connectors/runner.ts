/**
 * SinkRunner: one Sink behind a bounded buffer and a single writer loop (sink.ts explains why a
 * Sink itself only writes one chunk).
 *
 * - `pushEvents` / `pushState` always accept, in order: the caller checks `full` and awaits
 *   `room()` before pushing more (backpressure into processing). One FIFO for everything, so
 *   the order per partition is the order of the pushes.
 * - The writer takes chunks: consecutive batches of one kind, up to `maxChunkRecords` records
 *   (`maxStateChunkRecords` for state) and `maxChunkBatches` batches, one `writeEvents` /
 *   `writeState` call each.
 * - Failures (full-jitter exponential backoff between attempts):
 *   - SINK_UNAVAILABLE (or any ShoalError marked retryable): retried forever and never counted
 *     as an attempt, so a sink that is down for minutes loses nothing and catches up.
 *   - SINK_REJECTED (or SINK_SCHEMA) on emitted records: the chunk is split in halves, left
 *     before right (order kept), down to single records; identities come from `firstIndex`.
 *   - Any other error is transient, but a chunk that fails with such errors `maxAttempts` times
 *     is split as well.
 *   - A single record that fails `maxAttempts` times (rejected or unknown errors) goes to
 *     `sink.deadLetter` with its last error and attempt count. Dead-lettering is retried with
 *     backoff until it succeeds: nothing is dropped.
 *   - State batches are never dead-lettered (a dead letter holds emitted records, and skipping a
 *     version would leave a row behind): they are retried forever, every failure counted in
 *     `errors` and shown in `lastError`.
 * - `close()` stops intake, flushes until its deadline, then closes the sink; records still
 *   unwritten are named in the rejection and the log, never dropped silently.
 */
import type { Logger } from 'pino'
import { ErrorCodes, ShoalError } from '../errors.ts'
import { exponentialBackoff, type RetryDelay } from '../util/backoff.ts'
import {
  LazyEmittedBatch,
  type DeadLetterRecord,
  type EmittedBatch,
  type PackedEmittedBatch,
  type Sink,
  type StateBatch,
} from './sink.ts'

export interface SinkRunnerOptions {
  /** Records (state: upserts + deletes) buffered before `full` turns true. @default 100_000 */
  maxBufferedRecords?: number
  /** Records per write call; larger emitted batches are split. @default 5000 */
  maxChunkRecords?: number
  /**
   * Records per writeState call: state batches (one partition's checkpoint each) are only
   * merged up to this. A state write is a transaction with fixed costs (Postgres: a staging
   * table, a lock, version checks: ~40 ms here), so 5000 made a 1M-key checkpoint 256
   * transactions of ~3.9k rows and took 6.3 s to land (docs/benchmarks.md). @default 100_000
   */
  maxStateChunkRecords?: number
  /** Batches per write call. @default 100 */
  maxChunkBatches?: number
  /** First retry delay (full jitter: a random delay up to this). @default 100 */
  initialDelayMs?: number
  /** Cap of the retry delay. @default 30_000 */
  maxDelayMs?: number
  /** Failed attempts (not counting SINK_UNAVAILABLE) before splitting a chunk or dead-lettering a record. @default 8 */
  maxAttempts?: number
  /** Open attempts are retried forever on SINK_UNAVAILABLE; this logger hears about them. */
  logger?: Logger
  /** Random source for the jitter, in [0, 1). @default Math.random */
  random?: () => number
}

export const DEFAULT_SINK_RUNNER_OPTIONS = Object.freeze({
  maxBufferedRecords: 100_000,
  maxChunkRecords: 5000,
  maxStateChunkRecords: 100_000,
  maxChunkBatches: 100,
  initialDelayMs: 100,
  maxDelayMs: 30_000,
  maxAttempts: 8,
})

export type SinkRunnerState = 'starting' | 'ok' | 'retrying' | 'closed'

export interface SinkStatus {
  readonly name: string
  readonly accepts: { readonly events: boolean; readonly state: boolean }
  readonly state: SinkRunnerState
  /** Records buffered and not yet written (or dead-lettered), including the chunk in flight. */
  readonly lag: number
  /** Records (state: upserts + deletes) written. */
  readonly written: number
  /** Failed write, dead-letter and open attempts, in total. */
  readonly errors: number
  readonly deadLettered: number
  /** The last failure as `CODE: message`, or null. */
  readonly lastError: string | null
  /** When it happened (ms since the epoch), or null. */
  readonly lastErrorAt: number | null
}

export interface SinkCloseOptions {
  /** How long to keep flushing before closing the sink. @default 10_000 */
  timeoutMs?: number
}

type Item =
  | {
      readonly kind: 'events'
      readonly batch: EmittedBatch | PackedEmittedBatch
      readonly weight: number
      readonly seq: number
    }
  | StateItem

/** Mutable until the writer takes it: a newer batch of its partition is merged into it. */
interface StateItem {
  readonly kind: 'state'
  batch: StateBatch
  weight: number
  readonly seq: number
  taken: boolean
}

/**
 * `newer` folded into `older` (same partition): the state at newer's cut. Keys older wrote and
 * newer did not are unchanged at newer's cut, so writing them at newer's version is true.
 */
export function mergeStateBatches(older: StateBatch, newer: StateBatch): StateBatch {
  if (newer.full) return newer
  const upserts = new Map<string, unknown>(older.upserts)
  const deletes = new Set(older.deletes)
  for (const k of newer.deletes) {
    upserts.delete(k)
    deletes.add(k)
  }
  for (const [k, v] of newer.upserts) {
    upserts.set(k, v)
    deletes.delete(k)
  }
  return {
    partition: newer.partition,
    version: Math.max(older.version, newer.version),
    upserts: [...upserts],
    deletes: [...deletes],
    full: older.full,
  }
}

type Failure = 'unavailable' | 'rejected' | 'unknown'

interface Waiter {
  readonly seq: number
  readonly resolve: () => void
  readonly reject: (err: Error) => void
}

function classify(err: unknown): Failure {
  if (err instanceof ShoalError) {
    if (err.code === ErrorCodes.SINK_REJECTED || err.code === ErrorCodes.SINK_SCHEMA) return 'rejected'
    if (err.code === ErrorCodes.SINK_UNAVAILABLE || err.retryable) return 'unavailable'
  }
  return 'unknown'
}

function errorText(err: unknown): string {
  if (err instanceof ShoalError) return `${err.code}: ${err.message}`
  if (err instanceof Error) return `${err.name}: ${err.message}`
  return String(err)
}

function positiveInt(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(`options.${name} must be a positive integer (got ${value})`)
  }
  return value
}

function countRecords(batches: readonly (EmittedBatch | PackedEmittedBatch)[]): number {
  let n = 0
  for (const b of batches) n += 'payload' in b ? b.count : b.records.length
  return n
}

/** A packed batch as a sink takes it (records decoded when read), or the batch itself. */
function unpacked(b: EmittedBatch | PackedEmittedBatch): EmittedBatch {
  return 'payload' in b && !(b instanceof LazyEmittedBatch) ? new LazyEmittedBatch(b) : b
}

/** Split batches into two halves by record count, keeping identities (firstIndex). */
function halve(batches: readonly EmittedBatch[]): [EmittedBatch[], EmittedBatch[]] {
  const half = Math.floor(countRecords(batches) / 2)
  const left: EmittedBatch[] = []
  const right: EmittedBatch[] = []
  let seen = 0
  for (const b of batches) {
    const n = b.records.length
    if (seen + n <= half) left.push(b)
    else if (seen >= half) right.push(b)
    else {
      const cut = half - seen
      // Plain batches (not a spread: a LazyEmittedBatch's payload holds all the records).
      const { partition, offset, firstIndex } = b
      left.push({ partition, offset, firstIndex, records: b.records.slice(0, cut) })
      right.push({ partition, offset, firstIndex: firstIndex + cut, records: b.records.slice(cut) })
    }
    seen += n
  }
  return [left, right]
}

class ClosingError extends Error {}

export class SinkRunner {
  readonly sink: Sink
  readonly #maxBuffered: number
  readonly #maxChunkRecords: number
  readonly #maxStateChunkRecords: number
  readonly #maxChunkBatches: number
  readonly #maxAttempts: number
  readonly #delay: RetryDelay
  readonly #logger: Logger | undefined

  #state: SinkRunnerState = 'starting'
  /** Items before #head are written (their slots emptied); #head.. wait for the writer. */
  #queue: (Item | undefined)[] = []
  #head = 0
  #buffered = 0
  #pushedSeq = 0
  /** The seq of the last events item pushed (what a checkpoint waits for). */
  #eventsSeq = 0
  #doneSeq = 0
  /** Per partition, its newest state item the writer has not taken yet. */
  readonly #openState = new Map<number, StateItem>()
  #merged = 0
  #written = 0
  #errors = 0
  #deadLettered = 0
  #lastError: string | null = null
  #lastErrorAt: number | null = null

  #accepting = true
  /** Set at close's deadline: backoff sleeps end and the loop stops. */
  readonly #abort = new AbortController()
  #wake: (() => void) | undefined
  #roomWaiters: (() => void)[] = []
  #flushWaiters: Waiter[] = []
  #loop: Promise<void> | undefined
  #starting: Promise<void> | undefined
  #closing: Promise<void> | undefined
  #closeError: ShoalError | undefined

  constructor(sink: Sink, options: SinkRunnerOptions = {}) {
    const d = DEFAULT_SINK_RUNNER_OPTIONS
    this.sink = sink
    this.#maxBuffered = positiveInt(options.maxBufferedRecords ?? d.maxBufferedRecords, 'maxBufferedRecords')
    this.#maxChunkRecords = positiveInt(options.maxChunkRecords ?? d.maxChunkRecords, 'maxChunkRecords')
    this.#maxStateChunkRecords = positiveInt(
      options.maxStateChunkRecords ?? d.maxStateChunkRecords,
      'maxStateChunkRecords',
    )
    this.#maxChunkBatches = positiveInt(options.maxChunkBatches ?? d.maxChunkBatches, 'maxChunkBatches')
    this.#maxAttempts = positiveInt(options.maxAttempts ?? d.maxAttempts, 'maxAttempts')
    // jitter 1: "full jitter", a delay uniformly in [0, base].
    this.#delay = exponentialBackoff(
      {
        initialDelayMs: options.initialDelayMs ?? d.initialDelayMs,
        maxDelayMs: options.maxDelayMs ?? d.maxDelayMs,
        jitter: 1,
      },
      options.random,
    )
    this.#logger = options.logger?.child({ component: 'sink', sink: sink.name })
  }

  get name(): string {
    return this.sink.name
  }

  /** True at or above maxBufferedRecords: await room() before pushing more. */
  get full(): boolean {
    return this.#buffered >= this.#maxBuffered
  }

  /** Resolves when the buffer is below maxBufferedRecords (at once if it is, or once closed). */
  room(): Promise<void> {
    if (!this.full || this.#state === 'closed') return Promise.resolve()
    return new Promise((resolve) => this.#roomWaiters.push(resolve))
  }

  /**
   * Resolves when everything pushed before this call is written or dead-lettered; rejects
   * (SINK_UNAVAILABLE) if the runner is closed with some of it unwritten.
   */
  flushed(): Promise<void> {
    return this.#flushedUpTo(this.#pushedSeq)
  }

  /**
   * Resolves when every emitted record pushed before this call is written or dead-lettered
   * (state pushed before it may still be buffered, unless it is ahead of such a record).
   */
  flushedEvents(): Promise<void> {
    return this.#flushedUpTo(this.#eventsSeq)
  }

  #flushedUpTo(seq: number): Promise<void> {
    if (this.#doneSeq >= seq) return Promise.resolve()
    if (this.#closeError !== undefined) return Promise.reject(this.#closeError)
    return new Promise((resolve, reject) => this.#flushWaiters.push({ seq, resolve, reject }))
  }

  status(): SinkStatus {
    return {
      name: this.sink.name,
      accepts: this.sink.accepts,
      state: this.#state,
      lag: this.#buffered,
      written: this.#written,
      errors: this.#errors,
      deadLettered: this.#deadLettered,
      lastError: this.#lastError,
      lastErrorAt: this.#lastErrorAt,
    }
  }

  /**
   * Buffer the records of one applied batch. Empty batches are ignored. A packed batch is held
   * packed and decoded when written.
   */
  pushEvents(batch: EmittedBatch | PackedEmittedBatch): void {
    this.#checkOpen('pushEvents')
    if (!this.sink.accepts.events || this.sink.writeEvents === undefined) {
      throw new ShoalError(ErrorCodes.INVALID_OPTION, `sink ${this.sink.name} does not take emitted records`)
    }
    if ('payload' in batch) {
      if (batch.count === 0) return
      if (batch.count <= this.#maxChunkRecords) {
        this.#enqueue({ kind: 'events', batch, weight: batch.count, seq: ++this.#pushedSeq })
        this.#eventsSeq = this.#pushedSeq
        return
      }
      batch = unpacked(batch)
    }
    // Split large batches now so a chunk never exceeds maxChunkRecords.
    for (let i = 0; i < batch.records.length; i += this.#maxChunkRecords) {
      const part =
        i === 0 && batch.records.length <= this.#maxChunkRecords
          ? batch
          : {
              partition: batch.partition,
              offset: batch.offset,
              firstIndex: batch.firstIndex + i,
              records: batch.records.slice(i, i + this.#maxChunkRecords),
            }
      this.#enqueue({ kind: 'events', batch: part, weight: part.records.length, seq: ++this.#pushedSeq })
      this.#eventsSeq = this.#pushedSeq
    }
  }

  /**
   * Buffer one checkpoint's committed state. A `full` batch is kept whole. While the sink is
   * behind, a partition's batches not yet taken by the writer are merged into one (a key
   * changed by ten checkpoints is written once, at the newest version): a slow sink then
   * writes less, not later, and the buffer holds at most one row per key.
   */
  pushState(batch: StateBatch): void {
    this.#checkOpen('pushState')
    if (!this.sink.accepts.state || this.sink.writeState === undefined) {
      throw new ShoalError(ErrorCodes.INVALID_OPTION, `sink ${this.sink.name} does not take state`)
    }
    const n = batch.upserts.length + batch.deletes.length
    if (n === 0 && !batch.full) return
    const open = this.#openState.get(batch.partition)
    if (open !== undefined && !open.taken) {
      // Same seq: whoever awaits flushed() after this push waits for this item, or a later one.
      open.batch = mergeStateBatches(open.batch, batch)
      const weight = Math.max(1, open.batch.upserts.length + open.batch.deletes.length)
      this.#buffered += weight - open.weight
      open.weight = weight
      this.#merged++
      return
    }
    // A full batch with no upserts still deletes rows: it weighs 1 so it is never free.
    const item: StateItem = {
      kind: 'state',
      batch,
      weight: Math.max(1, n),
      seq: ++this.#pushedSeq,
      taken: false,
    }
    this.#openState.set(batch.partition, item)
    this.#enqueue(item)
  }

  /** State batches folded into an earlier one of their partition (the sink was behind). */
  get mergedStateBatches(): number {
    return this.#merged
  }

  #checkOpen(what: string): void {
    if (!this.#accepting) {
      throw new ShoalError(ErrorCodes.CLOSED, `sink ${this.sink.name} is closing; ${what} refused`)
    }
  }

  #enqueue(item: Item): void {
    this.#queue.push(item)
    this.#buffered += item.weight
    this.#wake?.()
  }

  /**
   * Open the sink (retrying SINK_UNAVAILABLE and unknown errors forever, with backoff) and start
   * the writer. SINK_SCHEMA and SINK_REJECTED reject: a target that does not fit is a startup error.
   * Records may be pushed before start; they are written once the sink is open.
   */
  start(): Promise<void> {
    this.#starting ??= this.#start()
    return this.#starting
  }

  async #start(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      if (this.#abort.signal.aborted) throw this.#closedError('start')
      try {
        await this.sink.open()
        break
      } catch (err) {
        this.#failed(err)
        if (classify(err) === 'rejected') {
          this.#logger?.error({ err }, 'sink cannot be opened')
          throw err
        }
        this.#logger?.warn({ err, attempt }, 'sink open failed; retrying')
        try {
          await this.#sleep(attempt)
        } catch {
          throw this.#closedError('start')
        }
      }
    }
    if (this.#state === 'starting') this.#state = 'ok'
    // #run handles every sink failure itself; anything else is a bug, reported, never unhandled.
    this.#loop = this.#run().catch((err: unknown) => {
      this.#failed(err)
      this.#logger?.error({ err }, 'sink writer stopped')
    })
  }

  #closedError(what: string): ShoalError {
    return new ShoalError(ErrorCodes.CLOSED, `sink ${this.sink.name} was closed during ${what}`)
  }

  async #run(): Promise<void> {
    for (;;) {
      if (this.#abort.signal.aborted) return
      if (this.#head >= this.#queue.length) {
        if (!this.#accepting) return
        await new Promise<void>((resolve) => {
          this.#wake = resolve
        })
        this.#wake = undefined
        continue
      }
      const chunk = this.#take()
      try {
        const first = chunk[0]!
        if (first.kind === 'events') {
          await this.#writeEvents(chunk.map((i) => i.batch as EmittedBatch | PackedEmittedBatch))
        } else {
          await this.#writeState(chunk.map((i) => i.batch as StateBatch))
        }
      } catch (err) {
        if (err instanceof ClosingError) return
        throw err
      }
      this.#complete(chunk)
    }
  }

  /** Consecutive items of one kind, within the chunk limits; stays in the queue until written. */
  #take(): Item[] {
    const first = this.#queue[this.#head]!
    const chunk: Item[] = [first]
    let records = first.weight
    const limit = first.kind === 'state' ? this.#maxStateChunkRecords : this.#maxChunkRecords
    for (let i = this.#head + 1; i < this.#queue.length; i++) {
      const item = this.#queue[i]!
      if (item.kind !== first.kind || chunk.length >= this.#maxChunkBatches) break
      if (records + item.weight > limit) break
      chunk.push(item)
      records += item.weight
    }
    for (const item of chunk) {
      if (item.kind !== 'state') continue
      // Being written: later state of its partition goes into a new item.
      item.taken = true
      if (this.#openState.get(item.batch.partition) === item) this.#openState.delete(item.batch.partition)
    }
    return chunk
  }

  #complete(chunk: Item[]): void {
    // Let written records go now: the array is compacted only once most of it is written, and
    // behind a backlog that can take a while (a burst of window results held ~100k of them).
    this.#queue.fill(undefined, this.#head, this.#head + chunk.length)
    this.#head += chunk.length
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head)
      this.#head = 0
    }
    for (const item of chunk) this.#buffered -= item.weight
    this.#doneSeq = chunk[chunk.length - 1]!.seq
    if (this.#state === 'retrying') this.#state = 'ok'
    if (!this.full && this.#roomWaiters.length > 0) {
      const waiters = this.#roomWaiters
      this.#roomWaiters = []
      for (const w of waiters) w()
    }
    if (this.#flushWaiters.length > 0) {
      const ready = this.#flushWaiters.filter((w) => w.seq <= this.#doneSeq)
      this.#flushWaiters = this.#flushWaiters.filter((w) => w.seq > this.#doneSeq)
      for (const w of ready) w.resolve()
    }
  }

  #failed(err: unknown): void {
    this.#errors++
    this.#lastError = errorText(err)
    this.#lastErrorAt = Date.now()
    if (this.#state === 'ok') this.#state = 'retrying'
  }

  /** Backoff before retry number `attempt`; rejects with ClosingError at close's deadline. */
  #sleep(attempt: number): Promise<void> {
    const signal = this.#abort.signal
    if (signal.aborted) return Promise.reject(new ClosingError())
    const ms = this.#delay(attempt) ?? 0
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        clearTimeout(timer)
        reject(new ClosingError())
      }
      const timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort)
        resolve()
      }, ms)
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  /**
   * Write emitted records; returns once every record is written or dead-lettered. Packed batches
   * are decoded for each attempt and not kept meanwhile: while a write is in flight the runner
   * holds them packed.
   */
  async #writeEvents(batches: readonly (EmittedBatch | PackedEmittedBatch)[]): Promise<void> {
    const records = countRecords(batches)
    let counted = 0
    let lastErr: unknown
    for (let retry = 1; ; retry++) {
      if (this.#abort.signal.aborted) throw new ClosingError()
      try {
        await this.sink.writeEvents!(batches.map(unpacked))
        this.#written += records
        return
      } catch (err) {
        this.#failed(err)
        lastErr = err
        const kind = classify(err)
        if (kind !== 'unavailable') counted++
        if (kind === 'rejected' || counted >= this.#maxAttempts) break
        this.#logger?.warn({ err, retry, records }, 'sink write failed; retrying')
        await this.#sleep(retry)
      }
    }
    const decoded = batches.map(unpacked)
    if (records === 1) {
      const b = decoded.find((x) => x.records.length === 1)!
      await this.#retryRecord(b, lastErr, counted)
      return
    }
    this.#logger?.warn({ err: lastErr, records }, 'sink refused a chunk; writing it record by record')
    const [left, right] = halve(decoded)
    await this.#writeEvents(left)
    await this.#writeEvents(right)
  }

  /** One record: up to maxAttempts counted failures in all, then the dead letter. */
  async #retryRecord(batch: EmittedBatch, firstErr: unknown, counted: number): Promise<void> {
    let lastErr = firstErr
    let attempts = counted
    for (let retry = 1; attempts < this.#maxAttempts; retry++) {
      await this.#sleep(retry)
      try {
        await this.sink.writeEvents!([batch])
        this.#written += 1
        return
      } catch (err) {
        this.#failed(err)
        lastErr = err
        if (classify(err) !== 'unavailable') attempts++
      }
    }
    const record = batch.records[0]!
    const letter: DeadLetterRecord = {
      partition: batch.partition,
      offset: batch.offset,
      index: batch.firstIndex,
      record,
      error: errorText(lastErr),
      attempts,
    }
    this.#logger?.error(
      {
        partition: letter.partition,
        offset: letter.offset,
        index: letter.index,
        error: letter.error,
        attempts,
      },
      'record dead-lettered',
    )
    for (let retry = 1; ; retry++) {
      try {
        await this.sink.deadLetter([letter])
        this.#deadLettered++
        return
      } catch (err) {
        this.#failed(err)
        this.#logger?.warn({ err, retry }, 'sink dead letter failed; retrying')
        await this.#sleep(retry)
      }
    }
  }

  /** State is retried until written: never dead-lettered (see the file comment). */
  async #writeState(batches: readonly StateBatch[]): Promise<void> {
    let records = 0
    for (const b of batches) records += b.upserts.length + b.deletes.length
    for (let retry = 1; ; retry++) {
      if (this.#abort.signal.aborted) throw new ClosingError()
      try {
        await this.sink.writeState!(batches)
        this.#written += records
        return
      } catch (err) {
        this.#failed(err)
        const log = classify(err) === 'rejected' ? 'error' : 'warn'
        this.#logger?.[log]({ err, retry, records }, 'sink state write failed; retrying')
        await this.#sleep(retry)
      }
    }
  }

  /**
   * Stop intake, flush until `timeoutMs`, then close the sink. Rejects (CLOSED, data.unwritten)
   * when records were left unwritten at the deadline; idempotent.
   */
  close(options: SinkCloseOptions = {}): Promise<void> {
    this.#closing ??= this.#close(options.timeoutMs ?? 10_000)
    return this.#closing
  }

  async #close(timeoutMs: number): Promise<void> {
    this.#accepting = false
    this.#wake?.()
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs)
    })
    if (this.#starting !== undefined) {
      const drained = this.#starting.then(
        () => this.#idle(),
        () => undefined,
      )
      await Promise.race([drained, deadline])
    }
    clearTimeout(timer)
    // Ends backoff sleeps (and an open still retrying) so the loop stops.
    this.#abort.abort()
    this.#state = 'closed'
    for (const w of this.#roomWaiters.splice(0)) w()
    try {
      await this.sink.close()
    } catch (err) {
      this.#logger?.warn({ err }, 'sink close failed')
    }
    // A write in flight at the deadline should end with the sink's connection; a sink that
    // hangs anyway is not waited for long.
    if (this.#loop !== undefined) {
      let grace: NodeJS.Timeout | undefined
      await Promise.race([
        this.#loop.catch(() => {}),
        new Promise<void>((resolve) => {
          grace = setTimeout(resolve, Math.min(1000, timeoutMs))
        }),
      ])
      clearTimeout(grace)
    }
    const unwritten = this.#buffered
    if (unwritten === 0) return
    const err = new ShoalError(
      ErrorCodes.SINK_UNAVAILABLE,
      `sink ${this.sink.name} closed with ${unwritten} record(s) not written after ${timeoutMs} ms` +
        (this.#lastError === null ? '' : ` (last error: ${this.#lastError})`),
      { data: { sink: this.sink.name, unwritten, lastError: this.#lastError } },
    )
    this.#closeError = err
    for (const w of this.#flushWaiters.splice(0)) w.reject(err)
    this.#logger?.error({ unwritten, lastError: this.#lastError }, 'sink closed with records not written')
    throw err
  }

  /** Resolves when the buffer is empty (after close() stopped intake). */
  #idle(): Promise<void> {
    if (this.#buffered === 0) return Promise.resolve()
    return new Promise((resolve) => {
      this.#flushWaiters.push({ seq: this.#pushedSeq, resolve, reject: () => resolve() })
    })
  }
}
