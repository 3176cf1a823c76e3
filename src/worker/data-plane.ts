/**
 * A worker's data plane: event batches in, acks out, state queries answered. It runs on the
 * main thread but does per-batch work only (ownership check, dedup, hand-off to the engine);
 * job code runs in the engine's threads.
 *
 * Flow control: a connection's messages are read one at a time; when the engine has more than
 * `maxInFlightBytes` of batches (or `maxInFlightBatches` tasks) queued the reader waits, the
 * connection's inbound queue fills,
 * the transport pauses the socket, and TCP (or HTTP/2) flow control slows the sender. Nothing
 * is buffered without bound and nothing is dropped: every batch gets an ack, ok or not.
 *
 * Exactly-once bookkeeping: each batch carries (producerId, sequence) per partition; a batch
 * whose sequence is not above the last accepted one is a duplicate and is acked without being
 * applied again (after the original has finished, so the ack never runs ahead of the state).
 *
 * Durability (with a PartitionStore, docs/state.md "How a worker uses it"): an accepted batch
 * is appended to its partition's replay log, and only once the append resolved is it handed to
 * the engine, in log order; its ack follows its application. A checkpoint takes its cut
 * synchronously: the offset and dedup table of the batches handed to the engine so far, and a
 * snapshot submitted in the same turn, which the engine runs after exactly those batches.
 * Restore loads the last checkpoint and replays the log after it (dropping duplicates by
 * producer sequence) before the partition serves.
 */
import type { Logger } from 'pino'
import { Packr } from 'msgpackr'
import { ErrorCodes, FrameTooLargeError, ShoalError } from '../errors.ts'
import {
  BUNDLES_SINCE_VERSION,
  MAX_BUNDLE,
  type Envelope,
  type EventAckBody,
  type EventBatchBody,
  type HeartbeatLoad,
  type StateBody,
} from '../protocol/messages.ts'
import { partitionForKey } from '../protocol/partition.ts'
import type { Engine } from '../processing/engine.ts'
import type {
  BatchResult,
  DeadLetter,
  JobInfo,
  PackedStates,
  PartitionTimeStatus,
  Tick,
} from '../processing/task-types.ts'
import { TIME_KEY, userView } from '../processing/time/codec.ts'
import type { LogEntry, PartitionStore } from '../state/checkpoint/partition-store.ts'
import type { Connection } from '../transport/transport.ts'
import { isReplyOrError } from '../transport/requests.ts'
import type { PartitionCheckpoint, PartitionHost } from './worker.ts'
import type { StateBatch } from '../connectors/sink.ts'

/** Where emitted records and committed state go (the worker's OutputHub). */
export interface OutputsView {
  /** A sink's buffer is full: stop reading batches until room(). */
  readonly full: boolean
  room(): Promise<void>
  /** Everything emitted so far is written by the sinks. */
  flushed(): Promise<void>
  /** Some sink takes committed state. */
  readonly wantsState: boolean
  deliverState(batch: StateBatch): void
}

export interface OwnershipView {
  serves(partition: number, epoch?: number): boolean
  readonly partitionCount: number
  /** No coordinator reachable (see Worker.coordinatorSilent): batches get NO_COORDINATOR. */
  readonly coordinatorSilent?: boolean
}

export interface DataPlaneOptions {
  engine: Engine
  logger: Logger
  /**
   * Tasks (batches, mostly) queued in the engine before readers stop reading. @default 256 per
   * thread
   */
  maxInFlightBatches?: number
  /**
   * Payload bytes of the batches queued in the engine before readers stop reading: the bound
   * that matters under load. Counting bytes rather than batches lets a thread take every small
   * batch that arrived together in one task (a bound of 4 batches cut light-load traffic, ~85
   * one-to-ten-event batches per round trip, into 20 tasks in a row, each a thread wake-up of
   * ~70 µs here, and was most of the send-to-ack latency; docs/benchmarks.md). 128 KiB holds a
   * few full batches or a round of small ones; 1 MiB was no faster and cost a loaded worker
   * ~24 MiB of RSS. @default 128 KiB per thread
   */
  maxInFlightBytes?: number
  /** Producers remembered per partition for dedup (least recently seen are forgotten). @default 10000 */
  maxProducersPerPartition?: number
  /** Receives dead-lettered events (a job threw). */
  onDeadLetter?: (partition: number, letters: DeadLetter[]) => void
  /**
   * Receives emitted events: msgpack [stream, key, event][] per batch, with the batch's replay-log
   * offset (its identity across replays; null without a log).
   */
  onEmitted?: (partition: number, offset: number | null, emitted: Uint8Array) => void
  /**
   * Sinks: backpressure, and a checkpoint commits only once what the batches before its cut
   * emitted is written (so a replay from it cannot skip records a sink never got).
   */
  outputs?: OutputsView
  /** How long a checkpoint waits for sinks before it is aborted (retried next time). @default 10000 */
  sinkFlushTimeoutMs?: number
  /** Control messages on the data port (e.g. `subscribe`); throw a ShoalError to refuse one. */
  onControl?: (conn: Connection, env: Envelope) => void
  /**
   * Durable state: the replay log and checkpoints. Without one, state lives only in the
   * worker's threads and a partition that moves starts empty.
   */
  store?: PartitionStore
  /**
   * 'log': append every accepted batch to the replay log before acking it (exactly once across
   * crashes). 'none': checkpoints only; a crash loses what was acked since the last checkpoint.
   * @default 'log'
   */
  durability?: 'log' | 'none'
  /**
   * Time-enabled jobs: how often the worker considers writing ticks (docs/time.md).
   * @default min(1000, idleMs / 4), at least 20
   */
  tickIntervalMs?: number
}

/** The replay log's producer of ticks (docs/time.md); refused from clients. */
export const TICK_PRODUCER = 'shoal:time'

interface PartitionRuntime {
  epoch: number
  /** Last accepted sequence per producer (insertion order doubles as recency for eviction). */
  producers: Map<string, number>
  /** Last sequence per producer whose batch succeeded (acked ok or found in the log on restore). */
  committed: Map<string, number>
  /** Batches per producer accepted and not settled yet. */
  pending: Map<string, number>
  /** Settles when every batch accepted so far has been applied. */
  tail: Promise<void>
  inFlight: number
  paused: boolean
  // Durable mode only:
  /** Appended batches reach the engine through this chain, in log order. */
  chain: Promise<void>
  /** Last sequence per producer among the batches handed to the engine (the checkpoint's). */
  applied: Map<string, number>
  /** Log offset of the last batch handed to the engine. */
  appliedOffset: number
  /** Checkpoints and the final release of this partition, one at a time. */
  checkpoints: Promise<unknown>
  /** Offset of the last committed checkpoint. */
  checkpointedOffset: number
  /** The last snapshot's keys never reached the store: the next checkpoint must be full. */
  needFull: boolean
  // Time-enabled jobs (docs/time.md):
  /** performance.now() of the last batch handed on (or of the restore): silence is measured from it. */
  lastEventAt: number
  /** performance.now() of the last tick written, and batches handed on since. */
  lastTickAt: number
  batchesSinceTick: number
  /** A tick is on its way to the engine. */
  ticking: boolean
  /** Sequence of the last tick (a producer sequence in the log). */
  tickSeq: number
  /** The partition's time after the last batch or tick applied. */
  time: PartitionTimeStatus | null
  /** Fenced or released: its engine state is being dropped, nothing may be written for it. */
  gone: boolean
}

function gone(partition: number): ShoalError {
  return new ShoalError(ErrorCodes.CHECKPOINT_ABORTED, `partition ${partition} is no longer served here`, {
    data: { partition },
  })
}

function newRuntime(epoch: number): PartitionRuntime {
  return {
    epoch,
    producers: new Map(),
    committed: new Map(),
    pending: new Map(),
    tail: Promise.resolve(),
    inFlight: 0,
    paused: false,
    chain: Promise.resolve(),
    applied: new Map(),
    appliedOffset: 0,
    checkpoints: Promise.resolve(),
    checkpointedOffset: 0,
    needFull: false,
    lastEventAt: performance.now(),
    lastTickAt: 0,
    batchesSinceTick: 0,
    ticking: false,
    tickSeq: 0,
    time: null,
    gone: false,
  }
}

/** Batches one partition's replay has in the engine before it waits for them. */
const REPLAY_WINDOW = 64
/**
 * Replayed batches in the engine at once across all partitions being restored: a survivor may
 * restore dozens of partitions together, and their windows must not fill the engine's queues
 * (a refused replay batch would be a lost batch).
 */
const REPLAY_SLOTS = 256

const packr = new Packr({ useRecords: true, moreTypes: true })
/** Checkpointed state values: plain msgpack (no records), see PackedStates. */
const stateUnpackr = new Packr({ useRecords: false, moreTypes: true })

function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(onTimeout()), ms)
    }),
  ])
}

export class DataPlane implements PartitionHost {
  readonly #engine: Engine
  readonly #log: Logger
  readonly #opts: DataPlaneOptions
  readonly #partitions = new Map<number, PartitionRuntime>()
  readonly #roomWaiters: (() => void)[] = []
  readonly #maxInFlight: number
  readonly #maxInFlightBytes: number
  /** Payload bytes of the batches handed to the engine and not finished. */
  #inFlightBytes = 0
  #ownership: OwnershipView | null = null
  /** Fences per partition: a restore that sees the count change stops (see restore()). */
  readonly #fences = new Map<number, number>()
  #pausedAll = false
  #rateAt = performance.now()
  #eventsPerSec = 0
  #lastEvents = 0
  #acked = 0
  #lastAcked = 0
  #ackedPerSec = 0
  #lastBackpressuredMs = 0
  #backpressure = 0
  #backpressuredMs = 0
  #deadLettered = 0
  /** At most half an engine thread's queue, so replays never make a batch refused for room. */
  #replaySlotsFree: number
  readonly #replaySlotWaiters: (() => void)[] = []
  #checkpointsDone = 0
  #checkpointsFailed = 0
  #restoredBatches = 0
  /** The job's use of time, learnt from the engine at the first restore. */
  #info: JobInfo | null = null
  #ticker: NodeJS.Timeout | null = null

  constructor(options: DataPlaneOptions) {
    this.#opts = options
    this.#engine = options.engine
    this.#log = options.logger
    this.#maxInFlight = options.maxInFlightBatches ?? 256 * options.engine.threads
    this.#maxInFlightBytes = options.maxInFlightBytes ?? 2 ** 17 * options.engine.threads
    // Readers blocked on engine room are woken by any task's end (drops, snapshots, queries
    // count toward inFlight too): found as a reader that waited for ever after a rebalance.
    options.engine.onTaskEnd(() => this.#room())
    this.#replaySlotsFree = Math.max(
      1,
      Math.min(REPLAY_SLOTS, Math.floor(options.engine.maxQueuePerThread / 2)),
    )
  }

  /** Wire the ownership source (the Worker) after both exist. */
  bind(ownership: OwnershipView): void {
    this.#ownership = ownership
  }

  get deadLettered(): number {
    return this.#deadLettered
  }
  get backpressuredMs(): number {
    return this.#backpressuredMs
  }
  get durable(): boolean {
    return this.#opts.store !== undefined
  }
  /** Per served partition: batches accepted and not yet acked, last log offset handed on. */
  partitionsInFlight(): { partition: number; inFlight: number; appliedOffset: number }[] {
    return [...this.#partitions].map(([partition, rt]) => ({
      partition,
      inFlight: rt.inFlight,
      appliedOffset: rt.appliedOffset,
    }))
  }

  /** Checkpoints of single partitions committed and failed; log batches replayed on restore. */
  get checkpointStats(): { done: number; failed: number; replayedBatches: number } {
    return {
      done: this.#checkpointsDone,
      failed: this.#checkpointsFailed,
      replayedBatches: this.#restoredBatches,
    }
  }

  // --- PartitionHost -------------------------------------------------------------------------------

  async restore(partition: number, epoch: number, leader?: number): Promise<void> {
    // A fence while this runs drops the partition's engine state under it: what the restore
    // built afterwards would be a checkpoint's tail without its head. Stop instead.
    const fences = this.#fences.get(partition) ?? 0
    const fencedMeanwhile = (): void => {
      if ((this.#fences.get(partition) ?? 0) === fences) return
      throw new ShoalError(ErrorCodes.FENCED, `partition ${partition} was fenced while it was restoring`, {
        data: { partition, epoch },
      })
    }
    const info = (this.#info ??= await this.#engine.describe())
    if (info.timed) this.#startTicker(info)
    const store = this.#opts.store
    if (store === undefined) {
      fencedMeanwhile()
      const rt = newRuntime(epoch)
      this.#partitions.set(partition, rt)
      if (info.timed) this.#tick(partition, rt)
      return
    }
    const t0 = performance.now()
    const rt = newRuntime(epoch)
    // Fence the previous owner first: from here on its appends and checkpoints are refused.
    await store.claim(partition, epoch, leader)
    const cp = await store.loadCheckpoint(partition)
    await this.#engine.drop(partition)
    let keys = 0
    const outputs = this.#opts.outputs
    const whole: (readonly [string, unknown])[] | null =
      outputs?.wantsState === true && cp.checkpointId !== undefined ? [] : null
    for await (const chunk of cp.entries()) {
      keys += chunk.length
      await this.#engine.load(partition, packEntries(chunk), false)
      if (whole !== null) {
        for (const [k, v] of chunk) if (k !== TIME_KEY) whole.push([k, userView(k, stateUnpackr.unpack(v))])
      }
    }
    if (whole !== null) {
      // The previous owner may have died between committing this checkpoint and writing it
      // behind: write it whole again (sinks skip what they have by version).
      outputs!.deliverState({ partition, version: cp.logOffset, upserts: whole, deletes: [], full: true })
    }
    for (const [producer, seq] of Object.entries(cp.dedup)) {
      if (producer === TICK_PRODUCER) {
        rt.tickSeq = seq
        rt.applied.set(producer, seq)
        continue
      }
      rt.applied.set(producer, seq)
      rt.producers.set(producer, seq)
      rt.committed.set(producer, seq)
    }
    rt.appliedOffset = cp.logOffset
    rt.checkpointedOffset = cp.logOffset
    // Replay what was accepted after the checkpoint, in order, a window at a time.
    let window: Promise<void>[] = []
    let replayed = 0
    fencedMeanwhile()
    try {
      for await (const e of store.replay(partition, cp.logOffset, { dedup: cp.dedup })) {
        fencedMeanwhile()
        await this.#replaySlot()
        window.push(this.#replayOne(partition, rt, e))
        replayed++
        if (window.length >= REPLAY_WINDOW) {
          await Promise.all(window)
          window = []
        }
      }
      await Promise.all(window)
    } finally {
      // Leaving early (fenced, a replayed batch failed): nothing in flight rejects unobserved.
      await Promise.allSettled(window)
    }
    fencedMeanwhile()
    this.#restoredBatches += replayed
    rt.lastEventAt = performance.now()
    this.#partitions.set(partition, rt)
    // The processing clock starts at the restore (a job with processing time needs one).
    if (info.timed) this.#tick(partition, rt)
    this.#room()
    this.#log.info(
      {
        partition,
        epoch,
        keys,
        checkpoint: cp.checkpointId ?? null,
        replayed,
        ms: Math.round(performance.now() - t0),
      },
      'partition restored',
    )
  }

  #replayOne(partition: number, rt: PartitionRuntime, e: LogEntry): Promise<void> {
    const isTick = e.producerId === TICK_PRODUCER
    if (isTick) rt.tickSeq = Math.max(rt.tickSeq, e.sequence)
    else {
      rt.producers.set(e.producerId, e.sequence)
      rt.committed.set(e.producerId, e.sequence)
    }
    rt.applied.set(e.producerId, e.sequence)
    rt.appliedOffset = e.offset
    return (
      isTick ? this.#engine.tick(partition, decodeTick(e.payload)) : this.#engine.batch(partition, e.payload)
    )
      .then(
        (res) => this.#afterBatch(partition, res, e.offset, rt),
        (err: unknown) => {
          // A batch the job could not apply at all (not msgpack, init threw) failed the same way
          // when it was first accepted and was never acked: skipping it reproduces that. Any
          // other failure (queue full, engine closed) fails the restore, which is retried from
          // the checkpoint: a replayed batch is never silently lost.
          if (err instanceof ShoalError && err.data?.batchRejected === true) {
            this.#log.warn({ err, partition, offset: e.offset }, 'replayed batch failed in the job; skipped')
            return
          }
          throw err
        },
      )
      .finally(() => {
        this.#releaseReplaySlot()
        this.#room() // readers may wait for the engine room replays took
      })
  }

  #replaySlot(): Promise<void> {
    if (this.#replaySlotsFree > 0) {
      this.#replaySlotsFree--
      return Promise.resolve()
    }
    return new Promise((resolve) => this.#replaySlotWaiters.push(resolve))
  }

  #releaseReplaySlot(): void {
    const next = this.#replaySlotWaiters.shift()
    if (next !== undefined) next()
    else this.#replaySlotsFree++
  }

  // --- time (docs/time.md) -------------------------------------------------------------------------

  #startTicker(info: JobInfo): void {
    if (this.#ticker !== null) return
    const every =
      this.#opts.tickIntervalMs ??
      Math.max(20, Math.min(1000, info.idleMs === null ? 1000 : Math.floor(info.idleMs / 4)))
    this.#ticker = setInterval(() => this.#onTicker(info, every), every)
    this.#ticker.unref()
  }

  /**
   * Write a tick where one is useful: a processing timer or TTL deadline is due, an idle
   * partition's watermark would reach its next window end or timer, or (jobs with processing
   * time) events flowed since the last tick, so the partition's processing clock stays within
   * about one interval of the wall clock. Ticks are cheap log records, but never written for a
   * partition that has nothing that could fire.
   */
  #onTicker(info: JobInfo, every: number): void {
    const mono = performance.now()
    const now = Date.now()
    for (const [p, rt] of this.#partitions) {
      if (rt.ticking || rt.paused || this.#pausedAll) continue
      const t = rt.time
      const silence = mono - rt.lastEventAt
      let due = info.processingTime && rt.batchesSinceTick > 0 && mono - rt.lastTickAt >= every
      if (t !== null && t.nextProcessing <= now) due = true
      if (
        info.idleMs !== null &&
        t !== null &&
        silence > info.idleMs &&
        t.base !== -Infinity &&
        t.base + (silence - info.idleMs) >= t.nextEvent
      ) {
        due = true
      }
      if (due) this.#tick(p, rt, silence)
    }
  }

  /**
   * Append a tick to the partition's log and apply it, in order with its batches (the same path
   * as a batch, without dedup or ack). Replayed, it does exactly what it did the first time.
   */
  #tick(partition: number, rt: PartitionRuntime, silence = 0): void {
    const tick: Tick = { now: Date.now(), idle: Math.floor(silence) }
    rt.ticking = true
    rt.lastTickAt = performance.now()
    rt.batchesSinceTick = 0
    const store = this.#opts.store
    let offset: number | null = null
    let processed: Promise<BatchResult>
    if (store === undefined) {
      processed = this.#engine.tick(partition, tick)
    } else {
      const seq = ++rt.tickSeq
      const logged =
        this.#opts.durability === 'none'
          ? null
          : store.appendBatch(partition, rt.epoch, {
              producerId: TICK_PRODUCER,
              sequence: seq,
              payload: packr.pack([tick.now, tick.idle]),
              count: 0,
            })
      // Handled where the chain reaches it; until then a rejection must not be "unhandled" (Node
      // would end the process when Redis goes away).
      logged?.catch(() => {})
      const handed = rt.chain.then(async () => {
        const off = logged === null ? rt.appliedOffset : await logged
        if (this.#partitions.get(partition) !== rt) {
          throw new ShoalError(ErrorCodes.NOT_OWNER, `partition ${partition} moved`, { retryable: true })
        }
        rt.applied.delete(TICK_PRODUCER)
        rt.applied.set(TICK_PRODUCER, seq)
        rt.appliedOffset = off
        if (logged !== null) offset = off
        return { res: this.#engine.tick(partition, tick) }
      })
      rt.chain = handed.then(
        () => undefined,
        () => undefined,
      )
      processed = handed.then((h) => h.res)
    }
    const done = processed.then(
      (res) => this.#afterBatch(partition, res, offset, rt),
      (err: unknown) => this.#log.debug({ err, partition }, 'tick not applied (the next one retries)'),
    )
    rt.tail = rt.tail.then(() => done)
    void done.finally(() => {
      rt.ticking = false
    })
  }

  /**
   * Event-time jobs: the watermark of each served partition that has seen an event time (an idle
   * partition's advancing with the wall clock, as its next tick will make it).
   */
  watermarks(): { partition: number; watermark: number | null; lagMs: number | null }[] {
    const idleMs = this.#info?.idleMs ?? null
    if (this.#info?.eventTime !== true) return []
    const mono = performance.now()
    const now = Date.now()
    const out: { partition: number; watermark: number | null; lagMs: number | null }[] = []
    for (const [partition, rt] of this.#partitions) {
      const t = rt.time
      let wm = t === null || t.watermark === -Infinity ? null : t.watermark
      if (wm !== null && idleMs !== null && t !== null) {
        const silence = mono - rt.lastEventAt
        if (silence > idleMs) wm = Math.max(wm, t.base + (silence - idleMs))
      }
      if (wm !== null) out.push({ partition, watermark: wm, lagMs: Math.max(0, now - wm) })
    }
    return out.sort((a, b) => a.partition - b.partition)
  }

  /** Stop the tick timer (the node is closing). */
  close(): void {
    if (this.#ticker !== null) clearInterval(this.#ticker)
    this.#ticker = null
  }

  async release(partition: number): Promise<void> {
    const rt = this.#partitions.get(partition)
    if (rt === undefined) return
    await rt.tail
    if (this.#opts.store !== undefined) {
      // A last checkpoint makes the next owner's replay short; fenced or failing, the log has it.
      await this.#checkpointOne(partition, rt, `release-${Date.now()}`).catch((err: unknown) =>
        this.#log.warn({ err, partition }, 'final checkpoint before release failed'),
      )
    }
    rt.gone = true
    // Only this incarnation: had it been fenced and the partition restored here again while the
    // awaits above ran, the engine's state and the runtime are the new owner's.
    if (this.#partitions.get(partition) !== rt) return
    this.#partitions.delete(partition)
    await this.#engine.drop(partition)
    await this.#opts.store?.release?.(partition)
  }

  /**
   * Checkpoint every partition served at the moment of the call (or those listed). Resolves
   * with what was committed; partitions that failed are logged and left out.
   */
  async checkpoint(
    checkpointId: string,
    partitions?: readonly number[],
    full = false,
  ): Promise<PartitionCheckpoint[]> {
    if (this.#opts.store === undefined) return []
    const targets = (partitions ?? [...this.#partitions.keys()]).flatMap((p) => {
      const rt = this.#partitions.get(p)
      return rt === undefined ? [] : [[p, rt] as const]
    })
    const results = await Promise.all(
      targets.map(([p, rt]) =>
        this.#checkpointOne(p, rt, checkpointId, full).catch((err: unknown) => {
          this.#log.warn({ err, partition: p, checkpointId }, 'checkpoint failed')
          return null
        }),
      ),
    )
    return results.filter((r): r is PartitionCheckpoint => r !== null)
  }

  /** The coordinator recorded `checkpointId`: drop the log entries it covers. */
  async checkpointComplete(partitions?: readonly number[]): Promise<void> {
    const store = this.#opts.store
    if (store === undefined) return
    await Promise.all(
      (partitions ?? [...this.#partitions.keys()]).map(async (p) => {
        const rt = this.#partitions.get(p)
        if (rt === undefined || rt.checkpointedOffset === 0) return
        try {
          await store.trim(p, rt.checkpointedOffset)
        } catch (err) {
          this.#log.debug({ err, partition: p }, 'log trim failed (the next checkpoint retries)')
        }
      }),
    )
  }

  #checkpointOne(
    partition: number,
    rt: PartitionRuntime,
    checkpointId: string,
    savepoint = false,
  ): Promise<PartitionCheckpoint> {
    const store = this.#opts.store!
    const outputs = this.#opts.outputs
    const flushTimeoutMs = this.#opts.sinkFlushTimeoutMs ?? 10_000
    const sinksBehind = (): ShoalError =>
      new ShoalError(ErrorCodes.CHECKPOINT_ABORTED, 'sinks are behind: checkpoint postponed', {
        retryable: true,
      })
    const run = rt.checkpoints.then(async () => {
      // Let the sinks catch up before the cut, so the wait after it is short; a sink that is
      // down postpones the checkpoint here, before any snapshot work is thrown away.
      if (outputs !== undefined) await withTimeout(outputs.flushed(), flushTimeoutMs, sinksBehind)
      // A fence dropped the engine's state (the snapshot would be empty, and a full one would
      // overwrite the checkpoint with nothing while this owner's epoch is still the stored one).
      if (rt.gone) throw gone(partition)
      // The cut, all in this turn: what has been handed to the engine, and a snapshot after it.
      const full = rt.needFull || savepoint
      const logOffset = rt.appliedOffset
      const dedup = Object.fromEntries(rt.applied)
      const snap = this.#engine.snapshot(partition, full)
      let kv: PackedStates
      let deleted: string[]
      try {
        ;({ kv, deleted } = await snap)
      } catch (err) {
        rt.needFull = true
        throw err
      }
      try {
        // Records emitted before the cut must be in the sinks before the log can be replayed
        // from after it.
        if (outputs !== undefined) await withTimeout(outputs.flushed(), flushTimeoutMs, sinksBehind)
        // The snapshot was taken before any fence's drop (same thread, in order): still a true
        // cut, but the partition is no longer ours to write.
        if (rt.gone) throw gone(partition)
        await store.writeCheckpoint(partition, rt.epoch, {
          checkpointId,
          // Packed as the thread sent it: no [key, value view] object per key (PackedChanges).
          changed: kv,
          ...(deleted.length === 0 ? {} : { deleted }),
          logOffset,
          dedup,
          full,
        })
      } catch (err) {
        // The snapshot cleared the threads' dirty flags; keep those keys by writing all next time.
        rt.needFull = true
        this.#checkpointsFailed++
        throw err
      }
      rt.needFull = false
      rt.checkpointedOffset = logOffset
      this.#checkpointsDone++
      const keys = kv.keys.reduce((n, k) => (k === TIME_KEY ? n : n + 1), 0)
      if (outputs?.wantsState === true && (keys > 0 || deleted.length > 0)) {
        const upserts: (readonly [string, unknown])[] = []
        for (let i = 0; i < kv.keys.length; i++) {
          const k = kv.keys[i]!
          if (k === TIME_KEY) continue
          const v = kv.data.subarray(i === 0 ? 0 : kv.ends[i - 1], kv.ends[i])
          upserts.push([k, userView(k, stateUnpackr.unpack(v))])
        }
        // Committed: write it behind. The log offset is the version: the state at a cut is a
        // function of the log up to it, and offsets only grow, across owners too.
        outputs.deliverState({
          partition,
          version: logOffset,
          upserts,
          deletes: deleted,
          full,
        })
      }
      return { partition, epoch: rt.epoch, logOffset, keys }
    })
    rt.checkpoints = run.catch(() => undefined)
    void rt.checkpoints.then(() => this.#room())
    return run
  }

  async claim(partition: number, epoch: number, leader: number): Promise<void> {
    await this.#opts.store?.claim(partition, epoch, leader)
  }

  fence(partition: number): void {
    this.#fences.set(partition, (this.#fences.get(partition) ?? 0) + 1)
    const rt = this.#partitions.get(partition)
    if (rt !== undefined) rt.gone = true
    this.#partitions.delete(partition)
    void this.#engine.drop(partition).catch(() => {})
    // Free per-partition store resources (a locked directory) for the new owner.
    void this.#opts.store?.release?.(partition).catch(() => {})
  }

  pause(partitions: number[] | null): void {
    if (partitions === null) this.#pausedAll = true
    else this.#setPaused(partitions, true)
  }

  resume(partitions: number[] | null): void {
    if (partitions === null) {
      this.#pausedAll = false
      for (const rt of this.#partitions.values()) rt.paused = false
    } else {
      this.#setPaused(partitions, false)
    }
  }

  #acceptedNotApplied(): number {
    let n = 0
    for (const rt of this.#partitions.values()) n += rt.inFlight
    return n
  }

  #setPaused(partitions: number[], paused: boolean): void {
    for (const p of partitions) {
      const rt = this.#partitions.get(p)
      if (rt !== undefined) rt.paused = paused
    }
  }

  load(): HeartbeatLoad {
    const now = performance.now()
    if (now - this.#rateAt >= 1000) {
      const events = this.#engine.eventsProcessed
      const span = now - this.#rateAt
      this.#eventsPerSec = ((events - this.#lastEvents) * 1000) / span
      this.#lastEvents = events
      this.#ackedPerSec = ((this.#acked - this.#lastAcked) * 1000) / span
      this.#lastAcked = this.#acked
      this.#backpressure = Math.min(1, (this.#backpressuredMs - this.#lastBackpressuredMs) / span)
      this.#lastBackpressuredMs = this.#backpressuredMs
      this.#rateAt = now
    }
    return {
      queueDepth: this.#engine.queueDepth,
      inFlight: this.#engine.inFlight,
      eventsPerSec: Math.round(this.#eventsPerSec),
      rssBytes: process.memoryUsage.rss(),
      // Batches accepted (appended, when durable) and not yet applied and acked.
      lag: this.#acceptedNotApplied(),
      ackedPerSec: Math.round(this.#ackedPerSec),
      backpressure: Math.round(this.#backpressure * 1000) / 1000,
    }
  }

  // --- connections ---------------------------------------------------------------------------------

  async serve(conn: Connection): Promise<void> {
    try {
      const acks = new AckOut(conn)
      for await (const env of conn) {
        try {
          if (env.kind === 'event' && (env.body.op === 'batch' || env.body.op === 'batches')) {
            // A round of batches in one message: each handled exactly as if it came alone. The
            // new batches of a memory-state worker go to the engine together (#takeFast), sent
            // before anything else of the message can reach it, so a partition's order holds.
            const batches = env.body.op === 'batch' ? [env.body] : env.body.batches
            const round = new Round(this.#grouped(batches))
            try {
              for (const b of batches) {
                if (this.#full(round.batches.length) || this.#opts.outputs?.full === true) {
                  this.#applyRound(acks, round)
                  if (this.#full()) await this.#waitForRoom()
                  if (this.#opts.outputs?.full === true) await this.#waitForSinks()
                }
                if (!this.#takeFast(round, b)) {
                  this.#applyRound(acks, round)
                  this.#onBatch(acks, b)
                }
              }
            } finally {
              // Accepted batches are applied and acked whatever happened to the rest.
              this.#applyRound(acks, round)
            }
          } else if (env.kind === 'state') {
            await this.#onState(conn, env, env.body)
          } else if (env.kind === 'control' && this.#opts.onControl !== undefined) {
            if (isReplyOrError(env)) continue
            this.#opts.onControl(conn, env)
          } else {
            throw new ShoalError(
              ErrorCodes.BAD_MESSAGE,
              `a worker's data port does not take ${env.kind} messages`,
            )
          }
        } catch (err) {
          if (!(err instanceof ShoalError)) throw err
          trySend(conn, {
            kind: 'control',
            body: { op: 'error', code: err.code, message: err.message, fatal: false },
            corr: env.corr ?? undefined,
          })
        }
      }
    } catch (err) {
      this.#log.debug({ err, peer: conn.peer.nodeId }, 'data connection ended with an error')
    }
  }

  #waitForRoom(): Promise<void> {
    const since = performance.now()
    return new Promise<void>((resolve) =>
      this.#roomWaiters.push(() => {
        this.#backpressuredMs += performance.now() - since
        resolve()
      }),
    )
  }

  async #waitForSinks(): Promise<void> {
    const since = performance.now()
    await this.#opts.outputs!.room()
    this.#backpressuredMs += performance.now() - since
  }

  /** Payload bytes of the batches handed to the engine and not finished (maxInFlightBytes). */
  get inFlightBytes(): number {
    return this.#inFlightBytes
  }

  /** `taken`: batches of the current round not handed to the engine yet (they count too). */
  #full(taken = 0): boolean {
    return this.#engine.inFlight + taken >= this.#maxInFlight || this.#inFlightBytes >= this.#maxInFlightBytes
  }

  /** engine.batch, with the batch's bytes counted against maxInFlightBytes until it finished. */
  #apply(partition: number, payload: Uint8Array): Promise<BatchResult> {
    const bytes = payload.byteLength
    this.#inFlightBytes += bytes
    const done = this.#engine.batch(partition, payload)
    const release = (): void => {
      this.#inFlightBytes -= bytes
    }
    done.then(release, release)
    return done
  }

  #room(): void {
    while (this.#roomWaiters.length > 0 && !this.#full()) this.#roomWaiters.shift()!()
  }

  /**
   * Dedup, in two steps. Fast path: a batch above everything accepted from its producer is new.
   * Otherwise it may be a retry or overlap batches still in flight, possibly from another
   * sender of the same producer (a source re-delivery beside the reader that first read the
   * records): wait until everything accepted before it has settled, then decide against what
   * *succeeded*. Covered entirely: a duplicate, acked without applying. Covered in part (a
   * batch numbered per event, firstSequence..sequence): the covered events are dropped and the
   * rest applied. A batch whose covering batch failed is applied, never acked as a duplicate.
   */
  #onBatch(acks: AckOut, b: EventBatchBody, settled = false): void {
    const ack = (ok: boolean, error?: ShoalError): void => {
      acks.push(ackOf(b, ok, error))
    }
    const rt = this.#partitions.get(b.partition)
    if (rt !== undefined && this.#ownership?.coordinatorSilent === true) {
      // The partition is ours, but without a coordinator we cannot know it still is (its lease
      // ran out): refuse, retryably, and say why.
      ack(
        false,
        new ShoalError(
          ErrorCodes.NO_COORDINATOR,
          `no coordinator reachable: partition ${b.partition} is not served until one leads again`,
          { retryable: true },
        ),
      )
      return
    }
    if (rt === undefined || this.#ownership === null || !this.#ownership.serves(b.partition, b.epoch)) {
      ack(
        false,
        new ShoalError(
          ErrorCodes.NOT_OWNER,
          `this worker does not serve partition ${b.partition} at epoch ${b.epoch}`,
          {
            retryable: true,
          },
        ),
      )
      return
    }
    if (rt.paused || this.#pausedAll) {
      ack(false, new ShoalError(ErrorCodes.PAUSED, `partition ${b.partition} is paused`, { retryable: true }))
      return
    }
    if (b.producerId === TICK_PRODUCER) {
      ack(false, new ShoalError(ErrorCodes.BAD_MESSAGE, `producer id ${TICK_PRODUCER} is reserved by Shoal`))
      return
    }
    const first = b.firstSequence ?? b.sequence
    if (first > b.sequence) {
      ack(
        false,
        new ShoalError(ErrorCodes.BAD_MESSAGE, `firstSequence ${first} is above sequence ${b.sequence}`),
      )
      return
    }
    const last = rt.producers.get(b.producerId)
    if (last !== undefined && first <= last) {
      if (!settled || (rt.pending.get(b.producerId) ?? 0) > 0) {
        void rt.tail.then(() => this.#onBatch(acks, b, true))
        return
      }
      const done = rt.committed.get(b.producerId)
      if (done !== undefined && b.sequence <= done) {
        ack(true) // a duplicate: everything in it succeeded before
        return
      }
      if (done !== undefined && first <= done) {
        const rest = trimCovered(b, done)
        if (rest === null) {
          ack(
            false,
            new ShoalError(
              ErrorCodes.SEQUENCE_OVERLAP,
              `batch ${first}..${b.sequence} of ${b.producerId} overlaps what partition ${b.partition} applied (up to ${done}) and does not number its events`,
            ),
          )
          return
        }
        b = rest
      }
    }
    rt.producers.delete(b.producerId)
    rt.producers.set(b.producerId, b.sequence)
    const maxProducers = this.#opts.maxProducersPerPartition ?? 10_000
    if (rt.producers.size > maxProducers) rt.producers.delete(rt.producers.keys().next().value!)
    rt.inFlight++
    rt.pending.set(b.producerId, (rt.pending.get(b.producerId) ?? 0) + 1)
    const settle = (ok: boolean): void => this.#settle(rt, b, ok)
    const store = this.#opts.store
    let processed: Promise<BatchResult>
    let batchOffset: number | null = null
    if (store === undefined) {
      rt.lastEventAt = performance.now()
      rt.batchesSinceTick++
      processed = this.#apply(b.partition, b.payload)
    } else {
      const logged =
        this.#opts.durability === 'none'
          ? null
          : store.appendBatch(b.partition, rt.epoch, {
              producerId: b.producerId,
              sequence: b.sequence,
              payload: b.payload,
              count: b.count,
            })
      // Handled where the chain reaches it; until then a rejection must not be "unhandled" (Node
      // would end the process when Redis goes away: found by the chaos suite).
      logged?.catch(() => {})
      // Hand batches to the engine in log order, each once its append resolved.
      const handed = rt.chain.then(async () => {
        const offset = logged === null ? rt.appliedOffset : await logged
        if (this.#partitions.get(b.partition) !== rt) {
          throw new ShoalError(ErrorCodes.NOT_OWNER, `partition ${b.partition} moved`, { retryable: true })
        }
        // Refused by the engine: not handed on, so not in the checkpoint cut either. Recorded as
        // applied, a checkpoint would cover it without it, and the sender's retry (appended
        // again) would be skipped as a duplicate when the log is replayed after a restore.
        if (!this.#engine.accepts(b.partition)) throw refusedByEngine(b.partition)
        rt.applied.delete(b.producerId)
        rt.applied.set(b.producerId, b.sequence)
        if (rt.applied.size > maxProducers) rt.applied.delete(rt.applied.keys().next().value!)
        rt.appliedOffset = offset
        if (logged !== null) batchOffset = offset
        rt.lastEventAt = performance.now()
        rt.batchesSinceTick++
        return { res: this.#apply(b.partition, b.payload) }
      })
      rt.chain = handed.then(
        () => undefined,
        () => undefined,
      )
      processed = handed.then((h) => h.res)
    }
    const done = processed.then(
      (res) => {
        settle(true)
        this.#afterBatch(b.partition, res, batchOffset, rt)
        this.#acked += b.count
        ack(true)
      },
      (err: unknown) => {
        settle(false)
        ack(false, toAckError(err))
      },
    )
    rt.tail = rt.tail.then(() => done)
    void done.finally(() => {
      rt.inFlight--
      this.#room()
    })
  }

  /** A batch accepted by #onBatch or #takeFast has finished: its producer's bookkeeping. */
  #settle(rt: PartitionRuntime, b: EventBatchBody, ok: boolean): void {
    if (ok && b.sequence > (rt.committed.get(b.producerId) ?? -1)) {
      rt.committed.delete(b.producerId)
      rt.committed.set(b.producerId, b.sequence)
      if (rt.committed.size > (this.#opts.maxProducersPerPartition ?? 10_000))
        rt.committed.delete(rt.committed.keys().next().value!)
    }
    const n = (rt.pending.get(b.producerId) ?? 1) - 1
    if (n > 0) {
      rt.pending.set(b.producerId, n)
      return
    }
    rt.pending.delete(b.producerId)
    // Nothing of this producer in flight: what was accepted is what succeeded, so a retry of
    // a batch that did not run is applied.
    const c = rt.committed.get(b.producerId)
    if (c === undefined) rt.producers.delete(b.producerId)
    else rt.producers.set(b.producerId, c)
  }

  /**
   * The fast path of #onBatch, for the usual batch of a memory-state worker: owned, not paused,
   * above everything accepted from its producer. Accepts it exactly as #onBatch does and adds it
   * to the round (applied by #applyRound); false, touching nothing, for any other batch.
   */
  #takeFast(round: Round, b: EventBatchBody): boolean {
    if (!round.grouped || this.#opts.store !== undefined || this.#pausedAll) return false
    const own = this.#ownership
    const rt = this.#partitions.get(b.partition)
    if (rt === undefined || own === null || own.coordinatorSilent || !own.serves(b.partition, b.epoch))
      return false
    if (rt.paused || b.producerId === TICK_PRODUCER) return false
    const first = b.firstSequence ?? b.sequence
    const last = rt.producers.get(b.producerId)
    if (first > b.sequence || (last !== undefined && first <= last)) return false
    rt.producers.delete(b.producerId)
    rt.producers.set(b.producerId, b.sequence)
    if (rt.producers.size > (this.#opts.maxProducersPerPartition ?? 10_000))
      rt.producers.delete(rt.producers.keys().next().value!)
    // Nothing else of the partition pending: the round's end is its tail, no chained promise.
    round.chain.push(rt.inFlight > 0 || rt.ticking)
    rt.inFlight++
    rt.pending.set(b.producerId, (rt.pending.get(b.producerId) ?? 0) + 1)
    rt.lastEventAt = performance.now()
    rt.batchesSinceTick++
    this.#inFlightBytes += b.payload.byteLength
    round.batches.push(b)
    round.rts.push(rt)
    return true
  }

  /**
   * Whether a message's batches go to the engine as a group: only a round of small batches that
   * fits the room, the case the group is for (many partitions, a few events each: the per-batch
   * cost is most of it). Big batches go one by one, each acked as soon as its task ran: a group
   * is acked when its last batch ran, and at full load (batches of 1000 events) grouping held
   * every partition's next batch back (max -16%, docs/benchmarks.md).
   */
  #grouped(batches: EventBatchBody[]): boolean {
    if (batches.length < 2) return false
    let bytes = 0
    for (const b of batches) bytes += b.payload.byteLength
    return bytes <= this.#maxInFlightBytes && bytes <= batches.length * GROUPED_BATCH_BYTES
  }

  /** Hand the round's batches to the engine as one group; each is acked as #onBatch would. */
  #applyRound(acks: AckOut, round: Round): void {
    const n = round.batches.length
    if (n === 0) return
    const { batches, rts, chain } = round
    round.batches = []
    round.rts = []
    round.chain = []
    // A batch body is an engine item as it is (partition, payload).
    const done = this.#engine.batches(batches).then((results) => {
      for (let i = 0; i < n; i++) {
        const b = batches[i]!
        const rt = rts[i]!
        const r = results[i]!
        this.#inFlightBytes -= b.payload.byteLength
        rt.inFlight--
        if (r instanceof ShoalError) {
          this.#settle(rt, b, false)
          acks.push(ackOf(b, false, toAckError(r)))
          continue
        }
        this.#settle(rt, b, true)
        try {
          this.#afterBatch(b.partition, r, null, rt)
        } catch (err) {
          // Applied and settled: the sender's retry is acked as a duplicate. The rest of the
          // round is still acked.
          acks.push(ackOf(b, false, toAckError(err)))
          continue
        }
        this.#acked += b.count
        acks.push(ackOf(b, true))
      }
      this.#room()
    })
    for (let i = 0; i < n; i++) {
      const rt = rts[i]!
      rt.tail = chain[i] === true ? rt.tail.then(() => done) : done
    }
  }

  #afterBatch(partition: number, res: BatchResult, offset: number | null, rt: PartitionRuntime): void {
    if (res.time !== undefined) rt.time = res.time
    if (res.deadLetters !== null) {
      this.#deadLettered += res.deadLetters.length
      for (const d of res.deadLetters.slice(0, 3)) {
        this.#log.warn({ partition, key: d.key, error: d.error }, 'job threw; event dead-lettered')
      }
      this.#opts.onDeadLetter?.(partition, res.deadLetters)
    }
    if (res.emitted !== null) this.#opts.onEmitted?.(partition, offset, res.emitted)
  }

  async #onState(conn: Connection, env: Envelope, body: StateBody): Promise<void> {
    const own = this.#ownership
    switch (body.op) {
      case 'get': {
        if (typeof body.key !== 'string')
          throw new ShoalError(ErrorCodes.BAD_MESSAGE, 'state get needs a key')
        const p = body.partition ?? partitionForKey(body.key, own?.partitionCount ?? 256)
        const rt = this.#partitions.get(p)
        if (rt === undefined || own === null || !own.serves(p)) {
          throw new ShoalError(ErrorCodes.NOT_OWNER, `this worker does not serve partition ${p}`, {
            retryable: true,
          })
        }
        await rt.tail
        const r = await this.#engine.get(p, body.key)
        trySend(conn, {
          kind: 'state',
          body: { op: 'result', key: body.key, partition: p, found: r.found, data: r.data ?? undefined },
          corr: env.corr ?? undefined,
        })
        return
      }
      case 'dump': {
        // Every partition this worker serves, one chunk each, then an end marker.
        const parts = [...this.#partitions.keys()]
          .filter((p) => own?.serves(p) === true)
          .sort((a, b) => a - b)
        for (const p of parts) {
          await this.#partitions.get(p)?.tail
          const r = await this.#engine.dump(p)
          await conn.write({
            kind: 'state',
            body: { op: 'chunk', partition: p, data: r.data },
            corr: env.corr ?? undefined,
          })
        }
        trySend(conn, {
          kind: 'state',
          body: { op: 'end', data: packr.pack(parts) },
          corr: env.corr ?? undefined,
        })
        return
      }
      default:
        throw new ShoalError(ErrorCodes.BAD_MESSAGE, `a worker does not take state ${body.op}`)
    }
  }
}

/** A round is grouped when its batches average at most this many payload bytes (~100 events). */
const GROUPED_BATCH_BYTES = 4096

/** Batches of one message on their way to the engine together (DataPlane.#takeFast). */
class Round {
  constructor(readonly grouped: boolean) {}
  batches: EventBatchBody[] = []
  rts: PartitionRuntime[] = []
  /** Per batch: its partition had something else pending, so its tail chains. */
  chain: boolean[] = []
}

function ackOf(b: EventBatchBody, ok: boolean, error?: ShoalError): EventAckBody {
  return {
    op: 'ack',
    partition: b.partition,
    producerId: b.producerId,
    sequence: b.sequence,
    ok,
    error: error === undefined ? undefined : error.toJSON(),
  }
}

function refusedByEngine(partition: number): ShoalError {
  return new ShoalError(ErrorCodes.QUEUE_FULL, `processing queue of partition ${partition} is full`, {
    retryable: true,
  })
}

/** A failed append or batch as the sender sees it: moved partitions are NOT_OWNER (retry). */
function toAckError(err: unknown): ShoalError {
  if (!(err instanceof ShoalError)) return new ShoalError(ErrorCodes.JOB_FAILED, String(err))
  if (err.code === ErrorCodes.FENCED) {
    return new ShoalError(ErrorCodes.NOT_OWNER, `partition moved: ${err.message}`, { retryable: true })
  }
  return err
}

/**
 * The part of a batch numbered per event (eventSequences) above `done`; null when the batch
 * does not number its events. Decoding and re-encoding is fine here: this happens only when a
 * source re-delivery raced the original reader.
 */
function trimCovered(b: EventBatchBody, done: number): EventBatchBody | null {
  const seqs = b.eventSequences
  if (seqs === undefined || seqs.length !== b.count) return null
  const events = packr.unpack(b.payload) as unknown[]
  if (!Array.isArray(events) || events.length !== seqs.length) return null
  const keep: unknown[] = []
  const kept: number[] = []
  for (let i = 0; i < seqs.length; i++) {
    if (seqs[i]! > done) {
      keep.push(events[i])
      kept.push(seqs[i]!)
    }
  }
  return {
    ...b,
    firstSequence: kept[0] ?? b.sequence,
    eventSequences: kept,
    count: keep.length,
    payload: packr.pack(keep),
  }
}

/** A tick record of the log (payload msgpack [now, idle]). */
function decodeTick(payload: Uint8Array): Tick {
  const v = packr.unpack(payload) as unknown
  if (!Array.isArray(v) || typeof v[0] !== 'number' || typeof v[1] !== 'number') {
    throw new ShoalError(ErrorCodes.BAD_MESSAGE, 'a tick record of the replay log is not [now, idle]')
  }
  return { now: v[0], idle: v[1] }
}

/** Checkpointed [key, value bytes] pairs as one PackedStates buffer for the engine. */
function packEntries(chunk: readonly (readonly [string, Uint8Array])[]): PackedStates {
  let total = 0
  for (const [, v] of chunk) total += v.length
  const data = new Uint8Array(total)
  const ends = new Uint32Array(chunk.length)
  const keys = new Array<string>(chunk.length)
  let at = 0
  for (let i = 0; i < chunk.length; i++) {
    const [k, v] = chunk[i]!
    data.set(v, at)
    at += v.length
    ends[i] = at
    keys[i] = k
  }
  return { keys, data, ends }
}

/**
 * The acks to one connection, coalesced: the acks produced in one run of microtasks (a task's
 * worth of batches finishing together) leave as one `acks` message to a peer that speaks it
 * (protocol version 2), one `ack` each otherwise.
 */
class AckOut {
  readonly #conn: Connection
  #pending: EventAckBody[] = []

  constructor(conn: Connection) {
    this.#conn = conn
  }

  push(ack: EventAckBody): void {
    if (this.#pending.push(ack) === 1) queueMicrotask(this.#flush)
  }

  readonly #flush = (): void => {
    const acks = this.#pending
    this.#pending = []
    if (acks.length === 1 || this.#conn.peer.version < BUNDLES_SINCE_VERSION) {
      this.#each(acks)
      return
    }
    for (let i = 0; i < acks.length; i += MAX_BUNDLE) {
      const part = i === 0 && acks.length <= MAX_BUNDLE ? acks : acks.slice(i, i + MAX_BUNDLE)
      try {
        this.#conn.send({ kind: 'event', body: { op: 'acks', acks: part } })
      } catch (err) {
        // Over a small maxFrameBytes: one ack per message. Otherwise the connection is gone and
        // the sender retries what it did not hear about.
        if (err instanceof FrameTooLargeError) this.#each(part)
      }
    }
  }

  #each(acks: readonly EventAckBody[]): void {
    for (const body of acks) trySend(this.#conn, { kind: 'event', body })
  }
}

function trySend(conn: Connection, message: Parameters<Connection['send']>[0]): void {
  try {
    conn.send(message)
  } catch {
    // The connection closed; the sender retries un-acked batches elsewhere.
  }
}
