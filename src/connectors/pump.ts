/**
 * SourcePump: reads a Source, routes each record by key to its partition's owner through a
 * client (like any producer), and acknowledges records to the source once their batch is
 * acked, i.e. applied and durable on the owner.
 *
 * - Batches: a read is split per partition and per producer identity, keeping read order; a
 *   batch carries every record's sequence, so an owner that already applied part of it (a
 *   re-delivery by another reader raced this one) applies only the rest.
 * - Backpressure: at most `maxInFlightRecords` records read and not yet acked; reading waits
 *   below that, so a slow cluster (or a paused partition) stops the reading, not memory.
 * - Failures: reads and acks are retried with jittered backoff. A batch is retried by the
 *   client until it is acked (no delivery timeout: giving up on one batch and sending the next
 *   of the same producer would make the first look like a duplicate). A batch refused for good
 *   (the job cannot apply it at all) is dead-lettered in the source with the reason.
 */
import type { Logger } from 'pino'
import { Packr } from 'msgpackr'
import { ErrorCodes, ShoalError } from '../errors.ts'
import { exponentialBackoff, type RetryDelay } from '../util/backoff.ts'
import type { ShoalClient } from '../client/client.ts'
import { appendEvent, newBatchBuffer, sealBatch } from '../client/encode.ts'
import { PreparedEvent } from '../ingest/json-event.ts'
import type { Source, SourceRecord, SourceStatus } from './source.ts'

/** What the pump sends through: a ShoalClient. */
export type PumpTarget = Pick<ShoalClient, 'sendBatch'>

export interface SourcePumpOptions {
  source: Source
  target: PumpTarget
  partitionOf: (key: string) => number
  logger?: Logger
  /** Records read and not yet acked before reading waits. @default max(20000, 2 x readCount) */
  maxInFlightRecords?: number
  /**
   * Records per read (at most the room left under maxInFlightRecords). Reads are split per
   * partition, so this bounds the batch sizes: 1000 over 256 partitions made batches of ~4
   * records, whose per-batch costs (a message, a replay-log append) dominated; 10k records
   * per read more than halved the CPU per record (docs/benchmarks.md, "Connectors"). @default 10000
   */
  readCount?: number
  /** How long a read waits for new records. @default 1000 */
  blockMs?: number
  /** Acks are sent in groups of up to this many, or after ackDelayMs. @default 1000 */
  ackBatch?: number
  /** @default 5 */
  ackDelayMs?: number
  retryDelay?: RetryDelay
}

export interface PumpStatus extends SourceStatus {
  inFlight: number
}

const packr = new Packr({ useRecords: true, moreTypes: true })
const prepared = new PreparedEvent()

/**
 * A batch in flight keeps only what its ack needs and its packed events, not the decoded
 * records: those would stay alive (and reach the old generation) until the owner's ack.
 */
interface PumpBatch {
  producerId: string
  sequences: number[]
  acks: string[]
  payload: Uint8Array
}

/** Written with the client's batch encoder: several times faster than msgpackr's generic pack. */
function toBatch(run: readonly SourceRecord[]): PumpBatch {
  const n = run.length
  const sequences = new Array<number>(n)
  const acks = new Array<string>(n)
  const f = newBatchBuffer(64 * n + 64)
  for (let i = 0; i < n; i++) {
    const r = run[i]!
    sequences[i] = r.sequence
    acks[i] = r.ack
    const e = r.encoded
    if (e === undefined || !prepared.set(e.values, e.from, e.to, e.names, r.key).writeKeyedEvent(f)) {
      appendEvent(f, r.key, r.event)
    }
  }
  return { producerId: run[0]!.producerId, sequences, acks, payload: sealBatch(f, n) }
}

/** The records of a batch again, to dead-letter them (rare: unpacking is fine here). */
function fromBatch(b: PumpBatch): SourceRecord[] {
  const pairs = packr.unpack(b.payload) as [string, unknown][]
  return pairs.map(([key, event], i) => ({
    key,
    event,
    producerId: b.producerId,
    sequence: b.sequences[i]!,
    ack: b.acks[i]!,
  }))
}

export class SourcePump {
  readonly #o: Required<Omit<SourcePumpOptions, 'logger'>> & { logger: Logger | undefined }
  #inFlight = 0
  /** Room (records) the loop waits for before the next read. */
  readonly #wantRoom: number
  #roomWaiters: (() => void)[] = []
  #acks: string[] = []
  #ackTimer: NodeJS.Timeout | null = null
  #acking: Promise<void> = Promise.resolve()
  #ackLoopRunning = false
  #running: Promise<void> | null = null
  #closing = false
  #idle: (() => void)[] = []

  constructor(options: SourcePumpOptions) {
    const readCount = options.readCount ?? options.source.readCount ?? 10_000
    this.#o = {
      source: options.source,
      target: options.target,
      partitionOf: options.partitionOf,
      logger: options.logger,
      maxInFlightRecords: options.maxInFlightRecords ?? Math.max(20_000, 2 * readCount),
      readCount,
      blockMs: options.blockMs ?? 1000,
      ackBatch: options.ackBatch ?? 1000,
      ackDelayMs: options.ackDelayMs ?? 5,
      retryDelay: options.retryDelay ?? exponentialBackoff({ initialDelayMs: 100, maxDelayMs: 5000 }),
    }
    this.#wantRoom = Math.max(1, Math.min(this.#o.readCount, Math.ceil(this.#o.maxInFlightRecords / 2)))
  }

  get source(): Source {
    return this.#o.source
  }

  /** Open the source and start reading in the background. */
  async start(): Promise<void> {
    await this.#o.source.open()
    this.#running = this.#loop()
  }

  status(): PumpStatus {
    return { ...this.#o.source.status(), inFlight: this.#inFlight }
  }

  async #loop(): Promise<void> {
    let failures = 0
    // Read only once there is room for a full read (or half the window): reading whatever room
    // one acked batch freed made reads of a few dozen records, batches of one or two records per
    // partition, and per-batch costs of ~40 µs CPU per record (docs/benchmarks.md, "Connectors").
    while (!this.#closing) {
      if (this.#o.maxInFlightRecords - this.#inFlight < this.#wantRoom) {
        await new Promise<void>((resolve) => this.#roomWaiters.push(resolve))
        continue
      }
      const room = this.#o.maxInFlightRecords - this.#inFlight
      let read
      try {
        read = await this.#o.source.read(Math.min(this.#o.readCount, room), this.#o.blockMs)
        failures = 0
      } catch (err) {
        if (this.#closing) break
        failures++
        this.#o.logger?.warn({ err, source: this.#o.source.name }, 'source read failed; retrying')
        await sleep(this.#o.retryDelay(failures) ?? 5000)
        continue
      }
      if (read.records.length > 0) this.#dispatch(read.records)
    }
  }

  #dispatch(records: readonly SourceRecord[]): void {
    // Per partition, in read order; a batch ends where the producer changes.
    const byPartition = new Map<number, SourceRecord[][]>()
    for (const r of records) {
      const p = this.#o.partitionOf(r.key)
      let runs = byPartition.get(p)
      if (runs === undefined) byPartition.set(p, (runs = []))
      const run = runs[runs.length - 1]
      if (run !== undefined && run[0]!.producerId === r.producerId) run.push(r)
      else runs.push([r])
    }
    this.#inFlight += records.length
    for (const [partition, runs] of byPartition) {
      for (const run of runs) void this.#send(partition, toBatch(run))
    }
  }

  async #send(partition: number, b: PumpBatch): Promise<void> {
    try {
      await this.#o.target.sendBatch({
        partition,
        producerId: b.producerId,
        sequence: b.sequences[b.sequences.length - 1]!,
        firstSequence: b.sequences[0]!,
        // Each event's own sequence: an owner that applied part of this batch already (a
        // re-delivery raced the first reader) applies only the rest.
        eventSequences: b.sequences,
        count: b.sequences.length,
        payload: b.payload,
      })
      this.#ack(b.acks)
    } catch (err) {
      const code = err instanceof ShoalError ? err.code : undefined
      if (code === ErrorCodes.CLOSED || this.#closing) {
        // Left pending in the source: re-delivered after a restart, deduplicated then.
      } else {
        await this.#deadLetter(fromBatch(b), err)
      }
    } finally {
      this.#done(b.acks.length)
    }
  }

  async #deadLetter(run: SourceRecord[], err: unknown): Promise<void> {
    const reason = err instanceof ShoalError ? `${err.code}: ${err.message}` : String(err)
    for (let attempt = 1; !this.#closing; attempt++) {
      try {
        await this.#o.source.deadLetter(run, reason)
        return
      } catch (e) {
        this.#o.logger?.warn({ err: e }, 'source dead letter failed; retrying')
        await sleep(this.#o.retryDelay(attempt) ?? 5000)
      }
    }
  }

  #ack(acks: readonly string[]): void {
    for (const a of acks) this.#acks.push(a)
    if (this.#acks.length >= this.#o.ackBatch) this.#flushAcks()
    else this.#ackTimer ??= setTimeout(() => this.#flushAcks(), this.#o.ackDelayMs)
  }

  #flushAcks(): void {
    if (this.#ackTimer !== null) clearTimeout(this.#ackTimer)
    this.#ackTimer = null
    if (this.#acks.length === 0 || this.#ackLoopRunning) return
    this.#ackLoopRunning = true
    this.#acking = this.#ackLoop().finally(() => {
      this.#ackLoopRunning = false
      // Acks that came in between the loop's last check and here.
      if (this.#acks.length > 0 && !this.#closing) this.#flushAcks()
    })
  }

  /**
   * One ack call at a time, each taking everything acked meanwhile (a source splits
   * what is too big for one command, e.g. Redis at 10k ids):
   * when the source is slower than the cluster, calls grow instead of queueing one per
   * `ackBatch` (a chain of 1000-id XACKs fell 300k entries behind in the connectors benchmark).
   */
  async #ackLoop(): Promise<void> {
    while (this.#acks.length > 0) {
      const acks = this.#acks
      this.#acks = []
      for (let attempt = 1; ; attempt++) {
        try {
          await this.#o.source.ack(acks)
          break
        } catch (err) {
          // Unacked records stay pending and are re-delivered (and deduplicated) later.
          if (this.#closing && attempt >= 3) return
          this.#o.logger?.warn({ err, source: this.#o.source.name }, 'source ack failed; retrying')
          await sleep(this.#o.retryDelay(attempt) ?? 5000)
        }
      }
    }
  }

  #done(n: number): void {
    this.#inFlight -= n
    if (this.#o.maxInFlightRecords - this.#inFlight >= this.#wantRoom) {
      const w = this.#roomWaiters
      this.#roomWaiters = []
      for (const r of w) r()
    }
    if (this.#inFlight === 0) {
      const w = this.#idle
      this.#idle = []
      for (const r of w) r()
    }
  }

  /** Resolves when nothing read is waiting for its ack (for tests and shutdown). */
  idle(): Promise<void> {
    if (this.#inFlight === 0) return Promise.resolve()
    return new Promise((resolve) => this.#idle.push(resolve))
  }

  /** Stop reading, wait up to `timeoutMs` for in-flight records, send their acks, close the source. */
  async close(timeoutMs = 5000): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    for (const r of this.#roomWaiters) r()
    this.#roomWaiters = []
    await Promise.race([this.idle(), sleep(timeoutMs)])
    this.#flushAcks()
    await Promise.race([this.#acking, sleep(timeoutMs)])
    await this.#o.source.close()
    await this.#running?.catch(() => {})
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref?.())
}
