/**
 * What leaves a worker: emitted events (to its sinks and to live subscribers) and committed
 * state (to state sinks, after each checkpoint). Each sink runs behind a SinkRunner (buffer,
 * retries with backoff, dead letters, metrics; src/connectors/runner.ts).
 *
 * - Emitted records are pushed to the runners synchronously, in the order batches are applied,
 *   with their identity (partition, log offset, index), so a checkpoint can wait until what
 *   the batches before its cut emitted is written (flushed()): a record is never lost between
 *   a sink that failed and a checkpoint that moved past the batch that emitted it. Committed
 *   state is written behind without holding checkpoints back; a state sink that is behind
 *   merges a partition's pending checkpoints into one write (SinkRunner.pushState).
 * - Backpressure: while any runner's buffer is full (`full`), the data plane stops reading
 *   batches, so a sink that is down slows the sources and clients instead of filling memory.
 * - A subscriber is a client connection that sent Control `subscribe` {streams} to the worker's
 *   data port; it then receives Event `batch` messages whose payload is msgpack
 *   [stream, key, event][] (producerId `emit:<worker>`, partition of origin, increasing
 *   sequence). A subscriber so far behind that its connection's queue is full is disconnected
 *   with SHOAL_ERR_QUEUE_FULL (it resubscribes); nothing is dropped silently.
 */
import { Packr } from 'msgpackr'
import type { Logger } from 'pino'
import { SinkRunner, type SinkRunnerOptions, type SinkStatus } from '../connectors/runner.ts'
import type { EmittedRecord, Sink, StateBatch } from '../connectors/sink.ts'
import { ErrorCodes, ShoalError } from '../errors.ts'
import type { Envelope } from '../protocol/messages.ts'
import type { Connection } from '../transport/transport.ts'

const packr = new Packr({ useRecords: true, moreTypes: true })

export interface OutputHubOptions {
  sinks?: readonly Sink[]
  logger: Logger
  memberId: string
  runner?: SinkRunnerOptions
  /** How long start() waits for sinks to open before going on while they keep retrying. @default 10000 */
  openWaitMs?: number
}

export class OutputHub {
  readonly #runners: SinkRunner[]
  readonly #eventRunners: SinkRunner[]
  readonly #stateRunners: SinkRunner[]
  readonly #subscribers = new Map<Connection, Set<string> | null>()
  readonly #log: Logger
  readonly #producerId: string
  readonly #openWaitMs: number
  #sequence = 0
  #emitted = 0
  #closed = false

  constructor(options: OutputHubOptions) {
    this.#log = options.logger
    this.#producerId = `emit:${options.memberId}`
    this.#openWaitMs = options.openWaitMs ?? 10_000
    this.#runners = (options.sinks ?? []).map(
      (s) => new SinkRunner(s, { logger: options.logger, ...options.runner }),
    )
    this.#eventRunners = this.#runners.filter((r) => r.sink.accepts.events)
    this.#stateRunners = this.#runners.filter((r) => r.sink.accepts.state)
  }

  get emitted(): number {
    return this.#emitted
  }
  get subscribers(): number {
    return this.#subscribers.size
  }
  get runners(): readonly SinkRunner[] {
    return this.#runners
  }
  /** Some state sink is configured: checkpoints hand it their keys. */
  get wantsState(): boolean {
    return this.#stateRunners.length > 0
  }

  /**
   * Open every sink. A sink whose target does not fit (SINK_SCHEMA) fails this; one that cannot
   * be reached yet keeps retrying in the background after `openWaitMs` (its buffer fills and
   * pushes back meanwhile).
   */
  async start(): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    const waited = new Promise<'waiting'>((resolve) => {
      timer = setTimeout(() => resolve('waiting'), this.#openWaitMs)
    })
    try {
      await Promise.all(
        this.#runners.map(async (r) => {
          const started = r.start()
          if ((await Promise.race([started, waited])) === 'waiting') {
            this.#log.warn({ sink: r.name, error: r.status().lastError }, 'sink not reachable yet; retrying')
            started.catch((err: unknown) => this.#log.error({ err, sink: r.name }, 'sink failed to open'))
          }
        }),
      )
    } finally {
      clearTimeout(timer)
    }
  }

  /** Any sink's buffer is full: stop taking batches until room(). */
  get full(): boolean {
    for (const r of this.#runners) if (r.full) return true
    return false
  }

  async room(): Promise<void> {
    while (this.full) await Promise.all(this.#runners.map((r) => r.room()))
  }

  /**
   * Every emitted record handed to the sinks so far is written (or dead-lettered): what a
   * checkpoint waits for before and after its cut. Committed state written behind is not
   * waited for: it is durable in the state store already, a new owner writes it again whole,
   * and waiting for it made every checkpoint wait for the previous one's write-behind (a
   * Postgres state sink then lagged 5-9 checkpoint intervals at 100k events/s).
   */
  flushed(): Promise<void> {
    return Promise.all(this.#eventRunners.map((r) => r.flushedEvents())).then(() => undefined)
  }

  sinkStatus(): SinkStatus[] {
    return this.#runners.map((r) => r.status())
  }

  /** Handle Control `subscribe` from a data-port connection: `streams` null or absent means all. */
  subscribe(conn: Connection, env: Envelope): void {
    const streams = (env.body as { streams?: unknown }).streams
    if (
      streams !== undefined &&
      streams !== null &&
      !(Array.isArray(streams) && streams.every((s) => typeof s === 'string'))
    ) {
      throw new ShoalError(ErrorCodes.BAD_MESSAGE, 'subscribe: streams must be an array of strings or null')
    }
    const set = streams === undefined || streams === null ? null : new Set(streams)
    this.#subscribers.set(conn, set)
    void conn.closed().then(() => this.#subscribers.delete(conn))
    conn.send({
      kind: 'control',
      body: { op: 'subscribe', streams: set === null ? null : [...set] },
      corr: env.corr ?? undefined,
    })
  }

  /**
   * A batch applied at log `offset` (null without a replay log) emitted `payload` (msgpack
   * [stream, key, event][]) from `partition`. Called in application order per partition.
   */
  deliver(partition: number, offset: number | null, payload: Uint8Array): void {
    if (this.#closed) return
    const count = msgpackArrayLength(payload)
    if (count !== null && this.#subscribers.size === 0) {
      // The sinks get the records packed: a runner decodes them when it writes them, so what
      // waits behind a write in flight is one buffer per batch, not objects that outlive the
      // young generation (docs/benchmarks.md, "Window results held packed").
      this.#emitted += count
      if (this.#eventRunners.length === 0) return
      // A payload is a view into the processing thread's msgpack buffer, which came along whole:
      // keep only its own bytes.
      const own = payload.byteLength * 2 + 4096 < payload.buffer.byteLength ? payload.slice() : payload
      for (const r of this.#eventRunners)
        r.pushEvents({ partition, offset, firstIndex: 0, count, payload: own })
      return
    }
    let records: EmittedRecord[]
    try {
      records = packr.unpack(payload) as EmittedRecord[]
    } catch (err) {
      // The processing thread packed it: this is a bug, not bad input. Say so loudly.
      this.#log.error({ err, partition, offset }, 'emitted records could not be decoded')
      return
    }
    this.#emitted += records.length
    for (const r of this.#eventRunners) r.pushEvents({ partition, offset, firstIndex: 0, records })
    for (const [conn, streams] of this.#subscribers) {
      const mine = streams === null ? records : records.filter((r) => streams.has(r[0]))
      if (mine.length === 0) continue
      try {
        conn.send({
          kind: 'event',
          body: {
            op: 'batch',
            partition,
            epoch: 0,
            producerId: this.#producerId,
            sequence: ++this.#sequence,
            count: mine.length,
            payload: mine === records ? payload : packr.pack(mine),
          },
        })
      } catch (err) {
        this.#subscribers.delete(conn)
        conn.destroy(
          err instanceof ShoalError ? err : new ShoalError(ErrorCodes.QUEUE_FULL, 'subscriber too slow'),
        )
      }
    }
  }

  /** Committed state of a partition behind a checkpoint (or restored whole, `full`). */
  deliverState(batch: StateBatch): void {
    if (this.#closed) return
    for (const r of this.#stateRunners) r.pushState(batch)
  }

  /** Flush what is buffered (up to `timeoutMs`), then close the sinks. */
  async close(timeoutMs = 10_000): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    const results = await Promise.allSettled(this.#runners.map((r) => r.close({ timeoutMs })))
    for (const r of results) {
      if (r.status === 'rejected')
        this.#log.error({ err: r.reason as unknown }, 'sink closed with records unwritten')
    }
  }
}

/** The length of a msgpack array from its header (fixarray, array 16, array 32), or null. */
function msgpackArrayLength(b: Uint8Array): number | null {
  const t = b[0]
  if (t === undefined) return null
  if (t >= 0x90 && t <= 0x9f) return t & 0x0f
  if (t === 0xdc && b.length >= 3) return (b[1]! << 8) | b[2]!
  if (t === 0xdd && b.length >= 5) return ((b[1]! << 24) | (b[2]! << 16) | (b[3]! << 8) | b[4]!) >>> 0
  return null
}
