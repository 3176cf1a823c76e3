/**
 * The processing engine on a worker's main thread: it never runs job code itself. It owns one
 * single-thread piscina pool per processing thread and routes every task of a partition to the
 * same pool (partition % threads), so a partition's tasks run in submission order against
 * state that lives in that thread. Different partitions run in parallel on different threads.
 *
 * Batches travel in one transferable buffer per task: the payloads of the batches merged into
 * a task are copied once, out of the socket's chunks (which may be shared with other frames),
 * into a single ArrayBuffer that is moved to the thread, not cloned; each batch is a view of
 * it. One buffer per batch cost an allocation and a transfer each (~1 us apiece: a round of 85
 * small batches spent more in postMessage than in the job; docs/benchmarks.md).
 *
 * Batches are merged per thread: while a thread has a task running, the batches submitted for
 * it wait here and then leave together as one task (one message each way and one wake-up of
 * the thread for all of them) instead of one piscina round trip per batch. Every task still
 * enters its pool in submission order (a query, snapshot or drop first sends the batches
 * submitted before it), so a partition's tasks keep their order and snapshots their cut.
 */
import { rmSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker as Thread } from 'node:worker_threads'
import { Piscina } from 'piscina'
import { ErrorCodes, ShoalError } from '../errors.ts'
import type {
  BatchFailure,
  BatchItem,
  BatchResult,
  JobInfo,
  PackedStates,
  Tick,
  TaskRequest,
  TaskResult,
} from './task-types.ts'

export interface EngineOptions {
  /** Built-in job name ('count') or a path/file URL to a job module. @default 'count' */
  job?: string
  /** Processing threads. @default os.availableParallelism() */
  threads?: number
  /** Tasks queued per thread before submit() rejects with QUEUE_FULL. @default 1024 */
  maxQueuePerThread?: number
  /**
   * Each processing thread's young generation (V8's `maxYoungGenerationSizeMb`: two semi-spaces
   * and the new large-object space). @default 12 (4 MiB semi-spaces)
   */
  youngGenerationMb?: number
}

/**
 * 4 MiB semi-spaces instead of V8's 16 MiB (32 MiB on Node 22 and later): a batch's garbage dies
 * young either way, and a smaller nursery stays in the CPU cache. Measured on the e2e benchmark
 * (docs/benchmarks.md, "Worker memory"): ~60 MiB less RSS per worker and no loss of throughput.
 */
export const DEFAULT_YOUNG_GENERATION_MB = 12

type ResultOf<Op extends TaskRequest['op']> = Extract<TaskResult, { op: Op }>

const TASK_FILE = new URL(
  import.meta.url.endsWith('.ts') ? './task-loader.mjs' : './task.js',
  import.meta.url,
).href

/**
 * Bundles of checked job files (job-bundle.ts), by the job reference a node was given: an engine
 * for that job hands its bundle to the processing threads, which load it without loader hooks.
 * The bundle's directory goes when the process exits.
 */
const bundles = new Map<string, string>()
const bundleDirs = new Set<string>()

function keepBundle(job: string, bundle: string): void {
  bundles.set(job, bundle)
  // An engine started before may still use an earlier bundle (a thread restarts): all stay
  // until the process exits.
  if (bundleDirs.size === 0) {
    process.once('exit', () => {
      for (const dir of bundleDirs) rmSync(dir, { recursive: true, force: true })
    })
  }
  bundleDirs.add(dirname(fileURLToPath(bundle)))
}

/**
 * Load a job module once in a short-lived thread, the way the processing threads load it (the
 * task module, the same loader hooks), and check it is a job: a node calls this before it
 * starts, so a job that cannot load is reported at once, with its file and cause, instead of
 * crashing processing threads later. Resolves with the job's name; rejects with a
 * `SHOAL_ERR_JOB_INVALID` ShoalError. The thread is terminated either way (a job module may
 * leave timers or sockets open at import).
 */
export function checkJob(job: string): Promise<{ name: string }> {
  return new Promise((resolve, reject) => {
    let settled = false
    const thread = new Thread(new URL(TASK_FILE), { workerData: { job, check: true } })
    const done = (result: { name: string; bundle?: string | undefined } | ShoalError): void => {
      if (settled) return
      settled = true
      void thread.terminate()
      if (result instanceof ShoalError) reject(result)
      else {
        if (result.bundle !== undefined) keepBundle(job, result.bundle)
        resolve({ name: result.name })
      }
    }
    const invalid = (message: string, cause?: unknown): ShoalError =>
      new ShoalError(ErrorCodes.JOB_INVALID, message, {
        ...(cause === undefined ? {} : { cause }),
        data: { job },
      })
    thread.on('message', (m: { shoal?: string; name?: unknown; bundle?: unknown }) => {
      if (m.shoal === 'job-loaded')
        done({ name: String(m.name), bundle: typeof m.bundle === 'string' ? m.bundle : undefined })
    })
    thread.on('error', (e: unknown) => {
      // The loader's errors name the file and the cause already (an error crossing threads
      // keeps its message and code, not its class).
      const msg = e instanceof Error ? e.message : String(e)
      const ours = (e as { code?: unknown } | null)?.code === ErrorCodes.JOB_INVALID
      done(invalid(ours ? msg : `job ${job}: cannot be loaded: ${msg}`, e))
    })
    thread.on('exit', (code) =>
      done(invalid(`job ${job}: the thread loading it exited (code ${code}) before the job loaded`)),
    )
  })
}

/** Tasks of a thread in its pool (running or queued there) before batches wait to be merged. */
const MAX_TASKS_IN_POOL = 1
/** Upper bound of one merged task. */
const MAX_BATCHES_PER_TASK = 256
const MAX_BYTES_PER_TASK = 8 * 1024 * 1024

interface WaitingBatch {
  item: BatchItem
  /** A batch of `batch()`/`tick()`: its promise's functions (null for a batch of a group). */
  resolve: ((r: BatchResult) => void) | null
  reject: ((e: unknown) => void) | null
  /** A batch of `batches()`: its group and its slot there. */
  group: BatchGroup | null
  index: number
}

/** The batches of one `batches()` call: one promise for all of them. */
interface BatchGroup {
  results: (BatchResult | ShoalError)[]
  left: number
  resolve: (results: (BatchResult | ShoalError)[]) => void
}

/** One processing thread: its pool, its tasks in the pool, the batches waiting to be merged. */
interface Lane {
  pool: Piscina
  inPool: number
  waiting: WaitingBatch[]
  /** A dispatch is scheduled (setImmediate) for the batches waiting. */
  scheduled: boolean
}

export class Engine {
  readonly threads: number
  readonly job: string
  readonly #lanes: Lane[]
  readonly #maxQueue: number
  readonly #youngGenerationMb: number
  /** Tasks one thread queues before submit() rejects with QUEUE_FULL. */
  get maxQueuePerThread(): number {
    return this.#maxQueue
  }
  /** Partitions with tasks submitted since their last drop (the others hold no state anywhere). */
  readonly #touched = new Set<number>()
  /** Per partition, its last drop while it has not run yet. */
  readonly #dropping = new Map<number, Promise<ResultOf<'drop'>>>()
  #inFlight = 0
  #busySince = 0
  #busyMs = 0
  #events = 0
  #closed = false
  #info: Promise<JobInfo> | undefined
  #taskEnded: (() => void) | undefined

  constructor(options: EngineOptions = {}) {
    this.job = options.job ?? 'count'
    this.threads = Math.max(1, options.threads ?? availableParallelism())
    this.#maxQueue = options.maxQueuePerThread ?? 1024
    this.#youngGenerationMb = options.youngGenerationMb ?? DEFAULT_YOUNG_GENERATION_MB
    this.#lanes = Array.from({ length: this.threads }, () => ({
      pool: new Piscina({
        filename: TASK_FILE,
        minThreads: 1,
        maxThreads: 1,
        concurrentTasksPerWorker: 1,
        // Everything here rests on a thread running its tasks in submission order. piscina's
        // default (false) puts a queued task that finds the thread busy back at the *tail* of the
        // queue, so with a queue a drop could run after the next restore's load (the restored
        // partition served empty: docs/reliability.md, "Leader partitions"), or a snapshot
        // before the batches of its cut.
        stricterFIFO: true,
        maxQueue: this.#maxQueue,
        idleTimeout: Infinity,
        workerData: { job: this.job, bundle: bundles.get(this.job) },
        resourceLimits: { maxYoungGenerationSizeMb: this.#youngGenerationMb },
      }),
      inPool: 0,
      waiting: [],
      scheduled: false,
    }))
  }

  /** Tasks submitted and not yet finished, across threads (a batch counts as one). */
  get inFlight(): number {
    return this.#inFlight
  }
  /** Tasks waiting in the queues (not yet running). */
  get queueDepth(): number {
    let n = 0
    for (const l of this.#lanes) n += l.pool.queueSize + l.waiting.length
    return n
  }
  get eventsProcessed(): number {
    return this.#events
  }
  /** Milliseconds with at least one task in flight, since start. */
  get busyMs(): number {
    return this.#busyMs + (this.#inFlight > 0 ? performance.now() - this.#busySince : 0)
  }

  /**
   * Whether a batch or tick of `partition` submitted now would be taken (not refused with
   * QUEUE_FULL or CLOSED). Synchronous, so a caller can decide before it records the batch as
   * handed on (DataPlane: the checkpoint cut must not cover a batch the engine refused).
   */
  accepts(partition: number): boolean {
    if (this.#closed) return false
    const lane = this.#lanes[partition % this.threads]!
    return lane.waiting.length + lane.pool.queueSize < this.#maxQueue
  }

  /**
   * Process one batch of partition's events (msgpack [key, event][]). The payload is read when
   * the batch leaves for its thread (copied then): the caller must not change it before the
   * returned promise settles.
   */
  batch(partition: number, payload: Uint8Array): Promise<BatchResult> {
    return this.#submit({ partition, payload })
  }

  /** Apply a tick (time-enabled jobs, docs/time.md), in order with the partition's batches. */
  tick(partition: number, tick: Tick): Promise<BatchResult> {
    return this.#submit({ partition, payload: new Uint8Array(0), tick })
  }

  /** The job's name and use of time, from a processing thread (loaded once per engine). */
  describe(): Promise<JobInfo> {
    this.#info ??= this.#run<ResultOf<'describe'>>({ op: 'describe', partition: 0 }).then((r) => r.info)
    return this.#info
  }

  async #submit(item: BatchItem): Promise<BatchResult> {
    if (this.#closed) throw new ShoalError(ErrorCodes.CLOSED, 'the processing engine is closed')
    const partition = item.partition
    const lane = this.#lanes[partition % this.threads]!
    if (lane.waiting.length + lane.pool.queueSize >= this.#maxQueue) {
      throw new ShoalError(ErrorCodes.QUEUE_FULL, `processing queue of partition ${partition} is full`, {
        retryable: true,
      })
    }
    this.#touched.add(partition)
    this.#begin()
    try {
      const res = await new Promise<BatchResult>((resolve, reject) => {
        lane.waiting.push({ item, resolve, reject, group: null, index: 0 })
        this.#schedule(lane)
      })
      this.#events += res.count
      return res
    } finally {
      this.#end()
    }
  }
  /**
   * Several batches, each applied exactly as `batch()` would (in order with what was submitted
   * before, per partition), with one promise for all of them: slot i holds batch i's result, or
   * the error `batch()` would have rejected with. Never rejects. A worker's round of ~85 small
   * batches took a promise, an async function and two closures per batch through `batch()`.
   */
  batches(items: BatchItem[]): Promise<(BatchResult | ShoalError)[]> {
    const results = new Array<BatchResult | ShoalError>(items.length)
    return new Promise((resolve) => {
      const group: BatchGroup = { results, left: items.length, resolve }
      for (let i = 0; i < items.length; i++) {
        const item = items[i]!
        const lane = this.#lanes[item.partition % this.threads]!
        if (this.#closed) {
          results[i] = new ShoalError(ErrorCodes.CLOSED, 'the processing engine is closed')
          group.left--
        } else if (lane.waiting.length + lane.pool.queueSize >= this.#maxQueue) {
          results[i] = new ShoalError(
            ErrorCodes.QUEUE_FULL,
            `processing queue of partition ${item.partition} is full`,
            { retryable: true },
          )
          group.left--
        } else {
          this.#touched.add(item.partition)
          this.#begin()
          lane.waiting.push({ item, resolve: null, reject: null, group, index: i })
          this.#schedule(lane)
        }
      }
      if (group.left === 0) resolve(results)
    })
  }

  /**
   * An idle thread gets the batches of this turn of the event loop (e.g. every frame of one
   * socket read) together, just after it: one task, one wake-up.
   */
  #schedule(lane: Lane): void {
    if (lane.inPool < MAX_TASKS_IN_POOL && !lane.scheduled) {
      lane.scheduled = true
      setImmediate(() => {
        lane.scheduled = false
        if (lane.waiting.length > 0 && lane.inPool < MAX_TASKS_IN_POOL && !this.#closed) this.#dispatch(lane)
      })
    }
  }

  /** A waiting batch's result reaches its promise, or its group's slot. */
  #fulfil(w: WaitingBatch, r: BatchResult): void {
    const g = w.group
    if (g === null) {
      w.resolve!(r)
      return
    }
    this.#events += r.count
    this.#end()
    g.results[w.index] = r
    if (--g.left === 0) g.resolve(g.results)
  }

  #fail(w: WaitingBatch, e: ShoalError): void {
    const g = w.group
    if (g === null) {
      w.reject!(e)
      return
    }
    this.#end()
    g.results[w.index] = e
    if (--g.left === 0) g.resolve(g.results)
  }

  get(partition: number, key: string): Promise<ResultOf<'get'>> {
    return this.#run<ResultOf<'get'>>({ op: 'get', partition, key })
  }
  dump(partition: number): Promise<ResultOf<'dump'>> {
    return this.#run<ResultOf<'dump'>>({ op: 'dump', partition })
  }
  snapshot(partition: number, full: boolean): Promise<ResultOf<'snapshot'>> {
    return this.#run<ResultOf<'snapshot'>>({ op: 'snapshot', partition, full })
  }
  /**
   * Snapshot and load are ordered with the partition's batches: a snapshot submitted after
   * batch N (synchronously, in the same turn) sees exactly batches ..N.
   */
  load(partition: number, kv: PackedStates, replace: boolean): Promise<ResultOf<'load'>> {
    return this.#run<ResultOf<'load'>>({ op: 'load', partition, kv, replace }, [
      kv.data.buffer as ArrayBuffer,
    ])
  }
  /**
   * Forget a partition's state in its thread. A partition that never had a task (since its last
   * drop) has no state and nothing queued to wait for, so this resolves at once without a round
   * trip: revoking a worker's fresh partitions does not wait for its threads to start.
   */
  drop(partition: number): Promise<ResultOf<'drop'>> {
    if (!this.#touched.delete(partition)) {
      if (this.#closed)
        return Promise.reject(new ShoalError(ErrorCodes.CLOSED, 'the processing engine is closed'))
      // The previous drop may still be queued in the thread (a fence does not wait for its
      // drop): resolve only once it ran, so "dropped" holds when this resolves.
      const pending = this.#dropping.get(partition)
      return pending === undefined ? Promise.resolve({ op: 'drop' }) : pending
    }
    const run = this.#run<ResultOf<'drop'>>({ op: 'drop', partition })
    this.#dropping.set(partition, run)
    const forget = (): void => {
      if (this.#dropping.get(partition) === run) this.#dropping.delete(partition)
    }
    run.then(forget, forget)
    return run
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    const closed = new ShoalError(ErrorCodes.CLOSED, 'the processing engine is closed')
    for (const l of this.#lanes) for (const w of l.waiting.splice(0)) this.#fail(w, closed)
    await Promise.all(this.#lanes.map((l) => l.pool.close()))
  }

  #begin(): void {
    if (this.#inFlight++ === 0) this.#busySince = performance.now()
  }
  #end(): void {
    if (--this.#inFlight === 0) this.#busyMs += performance.now() - this.#busySince
    this.#taskEnded?.()
  }

  /**
   * Called after every task (batch, snapshot, load, drop, query) finished: a reader waiting for
   * the engine to have room (DataPlane) must hear about each, not only about batches, or it
   * can wait for ever once the last tasks in flight were not batches.
   */
  onTaskEnd(listener: () => void): void {
    this.#taskEnded = listener
  }

  /** Send the lane's waiting batches (up to the task bounds) as one task. */
  #dispatch(lane: Lane): void {
    const w = lane.waiting
    let n = 0
    let bytes = 0
    while (n < w.length && n < MAX_BATCHES_PER_TASK && (n === 0 || bytes < MAX_BYTES_PER_TASK)) {
      bytes += w[n]!.item.payload.byteLength
      n++
    }
    const taken = n === w.length ? w.splice(0) : w.splice(0, n)
    const all = new Uint8Array(bytes)
    let at = 0
    let req: TaskRequest
    if (taken.every((t) => t.item.tick === undefined)) {
      // The usual task: payloads and an index, two arrays to clone (see 'packed').
      const index = new Int32Array(2 * taken.length)
      for (let i = 0; i < taken.length; i++) {
        const { item } = taken[i]!
        all.set(item.payload, at)
        at += item.payload.byteLength
        index[2 * i] = item.partition
        index[2 * i + 1] = at
      }
      req = { op: 'packed', partition: taken[0]!.item.partition, data: all, index }
    } else {
      const batches = taken.map(({ item }): BatchItem => {
        const p = item.payload
        all.set(p, at)
        const payload = all.subarray(at, (at += p.byteLength))
        return item.tick === undefined ? { partition: item.partition, payload } : { ...item, payload }
      })
      req = { op: 'batches', partition: batches[0]!.partition, batches }
    }
    lane.inPool++
    lane.pool.run(req, { transferList: [all.buffer] }).then(
      (res: Extract<TaskResult, { op: 'batches' | 'counts' }>) => {
        this.#taskDone(lane)
        if (res.op === 'counts') {
          const counts = res.counts
          for (let i = 0; i < taken.length; i++) {
            this.#fulfil(taken[i]!, { op: 'batch', count: counts[i]!, emitted: null, deadLetters: null })
          }
          return
        }
        res.results.forEach((r: BatchResult | BatchFailure, i) => {
          if (r.op === 'batch') this.#fulfil(taken[i]!, r)
          else
            this.#fail(
              taken[i]!,
              new ShoalError(
                ErrorCodes.JOB_FAILED,
                `batch of partition ${taken[i]!.item.partition} failed: ${r.error}`,
                // The batch itself cannot be applied (its payload, or init): the same every time.
                { data: { batchRejected: true } },
              ),
            )
        })
      },
      (err: unknown) => {
        this.#taskDone(lane)
        const e = this.#taskError(err, req)
        for (const t of taken) this.#fail(t, e)
      },
    )
  }

  #taskDone(lane: Lane): void {
    lane.inPool--
    if (lane.waiting.length > 0 && lane.inPool < MAX_TASKS_IN_POOL && !this.#closed) this.#dispatch(lane)
  }

  async #run<R extends TaskResult>(req: TaskRequest, transferList?: ArrayBuffer[]): Promise<R> {
    if (this.#closed) throw new ShoalError(ErrorCodes.CLOSED, 'the processing engine is closed')
    const lane = this.#lanes[req.partition % this.threads]!
    // Order: the batches submitted before this task enter the pool before it.
    while (lane.waiting.length > 0) this.#dispatch(lane)
    if (req.op !== 'drop' && req.op !== 'describe') this.#touched.add(req.partition)
    this.#begin()
    lane.inPool++
    try {
      return (await lane.pool.run(req, transferList === undefined ? {} : { transferList })) as R
    } catch (err) {
      throw this.#taskError(err, req)
    } finally {
      this.#taskDone(lane)
      this.#end()
    }
  }

  #taskError(err: unknown, req: TaskRequest): ShoalError {
    if (err instanceof ShoalError) return err
    const msg = err instanceof Error ? err.message : String(err)
    if (/queue is at limit/i.test(msg)) {
      return new ShoalError(ErrorCodes.QUEUE_FULL, `processing queue of partition ${req.partition} is full`, {
        retryable: true,
      })
    }
    return new ShoalError(ErrorCodes.JOB_FAILED, `job task ${req.op} failed: ${msg}`, { cause: err })
  }
}
