/**
 * ShoalClient: the producer and query SDK. It batches events per partition, routes each batch
 * straight to the owning worker using the coordinator's routing table (pushed to it on every
 * change), and retries a batch until it is acked, re-routing when ownership moved.
 *
 * Exactly-once delivery into state: every batch carries (producerId, sequence), with sequences
 * strictly increasing per (producer, partition) and at most one batch of a partition in flight,
 * so a worker can drop a retried batch it has already applied. Per-key order is preserved:
 * batches of one partition leave in order and the next leaves only after the previous is acked.
 *
 * Backpressure: send() returns false once `maxBufferedEvents` are waiting (write() awaits room);
 * nothing is dropped silently: flush() rejects if any batch failed permanently.
 */
import { randomUUID } from 'node:crypto'
import { Packr } from 'msgpackr'
import { ErrorCodes, FrameTooLargeError, InvalidOptionError, ShoalError, reviveError } from '../errors.ts'
import type { RoutingFields } from '../protocol/control.ts'
import {
  BUNDLES_SINCE_VERSION,
  MAX_BUNDLE,
  type Envelope,
  type EventAckBody,
  type EventBatchBody,
} from '../protocol/messages.ts'
import { createPartitioner, partitionForKey, type Partitioner } from '../protocol/partition.ts'
import { Requests } from '../transport/requests.ts'
import type { Connection, Transport } from '../transport/transport.ts'
import { AdminClient } from './admin.ts'
import {
  appendEvent,
  newBatchBuffer,
  sealBatch,
  type BatchBuffer,
  type EventWriter,
  type KeyedEventWriter,
} from './encode.ts'

export interface ShoalClientOptions {
  /**
   * The coordinator's transport address, or every replica's, comma-separated
   * (`a:7400,b:7400`): the client follows whichever leads (AdminClient).
   */
  coordinator: string
  /** A transport created with role 'client'. */
  transport: Transport
  /** Stable identity for dedup across reconnects. @default a random UUID */
  producerId?: string
  /** Events per batch. @default 1000 */
  batchSize?: number
  /**
   * The longest a partial batch waits for its worker to acknowledge this client's batches in
   * flight. Batching is adaptive (Nagle's rule per worker, see Gate): a partial batch leaves at
   * the end of the current event-loop turn when its worker has nothing of this client's in
   * flight, and otherwise goes with the next round of batches to that worker, when the
   * current round is acknowledged or after lingerMs, whichever comes first. A full batch
   * (batchSize) leaves at once. @default 5
   */
  lingerMs?: number
  /** send() returns false above this many unacknowledged events. @default 200000 */
  maxBufferedEvents?: number
  /**
   * Resend a batch not acked within this time; also the longest a state query waits for one
   * reply from a worker the coordinator still lists as its partition's owner. @default 10000
   */
  ackTimeoutMs?: number
  /**
   * A request to a worker (a batch, a state get, a dump) unanswered for this long makes the
   * client fetch the routing table from the coordinator, and again after every further
   * interval: once the partition has another owner, the request goes there at once. Routing
   * changes the coordinator pushes re-route at once without waiting for this. Keep it well
   * below the transport's handshakeTimeoutMs (5000): a hung worker accepts connections but never
   * answers. Batches in flight are checked every quarter of the shorter of this and
   * ackTimeoutMs, so for a batch either deadline fires up to that much later. @default 1000
   */
  requestTimeoutMs?: number
  /**
   * getState() and dumpState() retry what is retryable (a partition moving or restoring, a lost
   * connection) for this long before they reject. @default 15000
   */
  queryTimeoutMs?: number
  /** Delay before retrying a refused batch. @default 50 */
  retryDelayMs?: number
  /** Give up on a batch after this long without success: flush() then rejects. @default 60000 */
  deliveryTimeoutMs?: number
  /**
   * Called when a batch of `events` events of `partition` is acknowledged (applied on its
   * worker). Batches of a partition are acknowledged in the order their events were sent.
   */
  onAck?: (partition: number, events: number) => void
  /**
   * Called when a batch of `events` events of `partition` is given up (deliveryTimeoutMs passed,
   * or a refusal that is not retryable): its events are in doubt (it may or may not have been
   * applied). With onAck, every batch is reported exactly once, in the order its events were
   * sent, so a caller keeping a FIFO of its events per partition stays exact after a give-up.
   */
  onGiveUp?: (partition: number, events: number) => void
  /**
   * Reaching workers. 'auto': send to each partition's owner directly, and through the
   * coordinator's gateway for a worker this client cannot dial (CONNECT_FAILED: its advertised
   * address does not resolve or route from here, e.g. a host outside a compose network).
   * 'always': everything through the gateway. 'never': direct only. @default 'auto'
   */
  gateway?: 'auto' | 'always' | 'never'
}

interface Sealed {
  partition: number
  sequence: number
  /** sendBatch(): the batch's own producer (else the client's) and first event sequence. */
  producerId?: string
  firstSequence?: number
  eventSequences?: number[]
  /** sendBatch(): settled when the batch is acked or given up on. */
  settle?: { resolve: () => void; reject: (err: ShoalError) => void }
  count: number
  payload: Uint8Array
  firstTriedAt: number
  attempts: number
  /** The connection of the current attempt, once dialed: acks from any other are stale. */
  conn: Connection | null
  /** The owner the current attempt went to (`workerId@address`), or null. See #reroute. */
  target: string | null
  /** When the current attempt was sent (performance.now()). */
  sentAt: number
  /** When the watchdog last had the routing checked for this attempt (see #watch). */
  checkedAt: number
  /** The flight gate this batch counts against while it is out (see Gate). */
  gate: Gate | null
}

/**
 * Per worker: how many of this client's batches are out to it, and the partitions whose partial
 * batch waits for them: Nagle's rule, per worker rather than per partition. A partial batch
 * leaves at once when its worker has nothing of ours in flight; otherwise it waits until that
 * round is acknowledged (or lingerMs) and leaves together with every other partition's partial
 * batch for the same worker: one write, one task on the worker's thread, one write of acks
 * back. Full batches never wait. Under light load an event leaves at once; under load the
 * partitions of a worker move in step, one round at a time, instead of each partition's batch
 * chasing its own ack (a round trip's worth of tiny writes and thread wake-ups per worker).
 * docs/benchmarks.md, "Latency at 50% load".
 */
interface Gate {
  flying: number
  parked: number[]
  /** A round opened in this turn (until its microtasks ran): partial batches join it. */
  forming: boolean
  timer: NodeJS.Timeout | null
}

/**
 * A state query waiting on a worker. When the routing table changes so that it is `stale`
 * (the worker no longer owns what is asked), it is aborted and asked again of the new owner.
 */
interface Watch {
  stale(routing: RoutingFields): boolean
  /** Abort with `reason`, by default a RoutedAwayError (ask the new owner). */
  abort(reason?: ShoalError): void
}

/** A query aborted because the routing table moved its partitions: retried at once. */
class RoutedAwayError extends ShoalError {
  constructor(target: string) {
    super(ErrorCodes.NOT_OWNER, `${target} no longer owns what was asked; asking the new owner`, {
      retryable: true,
    })
  }
}

/**
 * Refusals a query retries: workers answer a query for a partition they do not serve (moving,
 * restoring) with a NOT_OWNER error reply, which arrives without its retryable flag.
 */
const RETRYABLE_QUERY_CODES: ReadonlySet<string> = new Set([
  ErrorCodes.NOT_OWNER,
  ErrorCodes.PAUSED,
  ErrorCodes.TIMEOUT,
  ErrorCodes.CONNECTION_LOST,
  ErrorCodes.CONNECT_FAILED,
  ErrorCodes.CONNECT_TIMEOUT,
  ErrorCodes.HANDSHAKE_TIMEOUT,
])

/**
 * Whether `routing` names an owner for partition `p` other than `key` (`workerId@address`). A
 * partition without an owner has not moved yet: its old owner may still answer.
 */
function movedAway(routing: RoutingFields, p: number, key: string): boolean {
  const t = targetOf(routing, p)
  return t !== null && t.key !== key
}

function isRetryableQueryError(err: unknown): err is ShoalError {
  return err instanceof ShoalError && (err.retryable || RETRYABLE_QUERY_CODES.has(err.code))
}

/** Where the routing table sends partition `p`: its owner, with `key` = `workerId@address`. */
interface Target {
  workerId: string
  address: string
  key: string
}

function targetOf(routing: RoutingFields, p: number): Target | null {
  const route = routing.routes[p]
  if (route == null) return null
  const address = routing.addresses[route.workerId]
  if (address === undefined) return null
  return { workerId: route.workerId, address, key: `${route.workerId}@${address}` }
}

/** `p`, or the signal's reason as soon as it aborts (p keeps running; its outcome is ignored). */
function raceSignal<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error)
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error)
    signal.addEventListener('abort', onAbort, { once: true })
    void p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

function positive(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new InvalidOptionError(`options.${name} must be a positive integer (got ${String(value)})`)
  }
  return value
}

interface PartitionQueue {
  /** The open batch: `count` events, already encoded (see BatchBuffer). */
  open: BatchBuffer | null
  count: number
  /** Bytes of this partition's last batch: the next one's initial buffer size. */
  sizeHint: number
  sealed: Sealed[]
  inFlight: Sealed | null
  seq: number
  retryTimer: NodeJS.Timeout | null
  /** Listed in #lingering: its partial batch leaves at the end of this event-loop turn. */
  lingering: boolean
  /** Listed in its gate's parked partitions. */
  parked: boolean
}

export interface ClientStats {
  sent: number
  acked: number
  batches: number
  retries: number
  failed: number
  /** Why the last batch was retried (e.g. SHOAL_ERR_NO_COORDINATOR during a failover), and when. */
  lastRetry?: { code: string; message: string; at: number }
}

const unpackr = new Packr({ useRecords: true, moreTypes: true })

export class ShoalClient {
  readonly producerId: string
  readonly #opts: Required<Omit<ShoalClientOptions, 'producerId' | 'onAck' | 'onGiveUp'>>
  /** Workers reached through the coordinator's gateway ('auto' after a failed dial). */
  readonly #viaGateway = new Set<string>()
  #gatewayConn: Promise<Connection> | null = null
  readonly #onAckHook: ((partition: number, events: number) => void) | undefined
  readonly #onGiveUpHook: ((partition: number, events: number) => void) | undefined
  readonly #admin: AdminClient
  #routing: RoutingFields
  readonly #queues: PartitionQueue[]
  readonly #conns = new Map<string, Promise<Connection>>()
  /** The connections of #conns that are up, by the same key: #deliver's synchronous path. */
  readonly #open = new Map<string, Connection>()
  /** #target's table and the routing table it was made from. */
  #targets: (Target | null)[] = []
  #targetsOf: RoutingFields | null = null
  readonly #requests = new Requests()
  #unacked = 0
  #lingerTimer: NodeJS.Immediate | null = null
  /** Runs #watch while batches are in flight, every #watchEveryMs. */
  #watchdog: NodeJS.Timeout | null = null
  readonly #watchEveryMs: number
  readonly #gates = new Map<string, Gate>()
  /** Per connection, the batches sent in this run of microtasks: they leave as one message. */
  readonly #outbox = new Map<Connection, Outgoing[]>()
  /** Idle partitions with a partial batch, sent at the end of this event-loop turn. */
  #lingering: number[] = []
  readonly #partitionOf: Partitioner
  #roomWaiters: (() => void)[] = []
  #flushWaiters: { resolve: () => void; reject: (e: ShoalError) => void }[] = []
  #failure: ShoalError | null = null
  #closed = false
  #refreshing: Promise<void> | null = null
  /** When the last routing fetch completed (performance.now()); see #checkRouting. */
  #refreshedAt = 0
  /** State queries waiting on a worker. */
  readonly #watches = new Set<Watch>()
  /** Connections opened for one dump each (see #dumpConn). */
  readonly #dumpConns = new WeakSet<Connection>()
  /** Dials in progress, by `workerId@address`: aborted once the worker owns nothing. */
  readonly #dials = new Map<string, AbortController>()
  readonly stats: ClientStats = { sent: 0, acked: 0, batches: 0, retries: 0, failed: 0 }

  private constructor(opts: ShoalClientOptions, admin: AdminClient, routing: RoutingFields) {
    this.producerId = opts.producerId ?? randomUUID()
    this.#opts = {
      coordinator: opts.coordinator,
      transport: opts.transport,
      batchSize: opts.batchSize ?? 1000,
      lingerMs: opts.lingerMs ?? 5,
      maxBufferedEvents: opts.maxBufferedEvents ?? 200_000,
      ackTimeoutMs: positive('ackTimeoutMs', opts.ackTimeoutMs ?? 10_000),
      requestTimeoutMs: positive('requestTimeoutMs', opts.requestTimeoutMs ?? 1000),
      queryTimeoutMs: positive('queryTimeoutMs', opts.queryTimeoutMs ?? 15_000),
      retryDelayMs: opts.retryDelayMs ?? 50,
      deliveryTimeoutMs: opts.deliveryTimeoutMs ?? 60_000,
      gateway: opts.gateway ?? 'auto',
    }
    this.#watchEveryMs = Math.max(1, Math.min(this.#opts.requestTimeoutMs, this.#opts.ackTimeoutMs) / 4)
    this.#onAckHook = opts.onAck
    this.#onGiveUpHook = opts.onGiveUp
    this.#admin = admin
    this.#routing = routing
    this.#queues = Array.from({ length: routing.partitions }, () => ({
      open: null,
      count: 0,
      sizeHint: 4096,
      sealed: [],
      inFlight: null,
      seq: 0,
      retryTimer: null,
      lingering: false,
      parked: false,
    }))
    this.#partitionOf = createPartitioner(routing.partitions)
  }

  static async connect(options: ShoalClientOptions): Promise<ShoalClient> {
    let client: ShoalClient | null = null
    const admin = await AdminClient.connect(options.transport, options.coordinator, {
      onRouting: (r) => {
        if (client !== null) client.#onRouting(r)
      },
    })
    try {
      const routing = await admin.routing()
      client = new ShoalClient(options, admin, routing)
      return client
    } catch (err) {
      await admin.close()
      throw err
    }
  }

  get partitions(): number {
    return this.#routing.partitions
  }
  /** The routing table as last received from the coordinator. */
  get routing(): Readonly<RoutingFields> {
    return this.#routing
  }
  /** Events accepted by send() and not yet acknowledged. */
  get unacked(): number {
    return this.#unacked
  }

  /** Queue one event. Returns false when the buffer is full: await drain() before sending more. */
  send(key: string, event: unknown): boolean {
    const p = this.#accept(key)
    const q = this.#queues[p]!
    appendEvent((q.open ??= newBatchBuffer(q.sizeHint)), key, event)
    return this.#queued(q, p)
  }

  /**
   * send() for an event `writer` encodes itself (the NDJSON readers write an event straight from
   * its JSON text, src/ingest/json-event.ts). null, with nothing queued, if the writer could not
   * write it: the caller then send()s the event.
   */
  sendWritten(key: string, writer: EventWriter): boolean | null {
    const p = this.#accept(key)
    const q = this.#queues[p]!
    if (!writer.writeEvent((q.open ??= newBatchBuffer(q.sizeHint)), key)) return null
    return this.#queued(q, p)
  }

  /**
   * sendWritten() for a caller that has the event's partition already (POST /events hashes a
   * body's keys from their bytes to check ownership before it sends any): `partition` must be
   * the key's partition in this cluster (partitionForKey with `partitions`); `writer` writes
   * [key, event] whole. Saves hashing each key twice and making it a string.
   */
  sendWrittenTo(partition: number, writer: KeyedEventWriter): boolean | null {
    if (this.#closed) throw new ShoalError(ErrorCodes.CLOSED, 'client is closed')
    const q = this.#queues[partition]
    if (q === undefined) {
      throw new ShoalError(ErrorCodes.BAD_MESSAGE, `partition ${partition} is out of range`)
    }
    if (!writer.writeKeyedEvent((q.open ??= newBatchBuffer(q.sizeHint)))) return null
    return this.#queued(q, partition)
  }

  /** The partition of an event about to be queued; throws if the client cannot take one. */
  #accept(key: string): number {
    if (this.#closed) throw new ShoalError(ErrorCodes.CLOSED, 'client is closed')
    if (typeof key !== 'string') throw new ShoalError(ErrorCodes.BAD_MESSAGE, 'event key must be a string')
    return this.#partitionOf(key)
  }

  /** An event was appended to q's open batch. */
  #queued(q: PartitionQueue, p: number): boolean {
    const n = ++q.count
    this.#unacked++
    this.stats.sent++
    if (n >= this.#opts.batchSize) this.#seal(p)
    else if (n === 1 && q.inFlight === null && !q.lingering) {
      // An idle partition: its batch leaves at the end of this turn (with every other event sent
      // in it), or waits for its worker's round in flight (#pump). A busy one (a batch in flight)
      // keeps filling its next batch until the ack.
      q.lingering = true
      this.#lingering.push(p)
      this.#lingerTimer ??= setImmediate(this.#onLinger)
    }
    return this.#unacked < this.#opts.maxBufferedEvents
  }

  drain(): Promise<void> {
    if (this.#unacked < this.#opts.maxBufferedEvents) return Promise.resolve()
    return new Promise((resolve) => this.#roomWaiters.push(resolve))
  }

  async write(key: string, event: unknown): Promise<void> {
    if (!this.send(key, event)) await this.drain()
  }

  /**
   * Send a pre-encoded batch (msgpack [key, event][] of `partition`) under its own producer id
   * and sequence, for sources that derive them from their input (so a re-delivered input maps
   * to the same identity and is deduplicated). Batches of a partition leave in call order, one
   * in flight, retried and re-routed like send()'s; resolves when acked, rejects when given up
   * (a non-retryable refusal or deliveryTimeoutMs). Such a failure does not fail flush().
   */
  sendBatch(batch: {
    partition: number
    producerId: string
    sequence: number
    firstSequence?: number
    eventSequences?: number[]
    count: number
    payload: Uint8Array
  }): Promise<void> {
    if (this.#closed) return Promise.reject(new ShoalError(ErrorCodes.CLOSED, 'client is closed'))
    const q = this.#queues[batch.partition]
    if (q === undefined) {
      return Promise.reject(
        new ShoalError(ErrorCodes.BAD_MESSAGE, `partition ${batch.partition} is out of range`),
      )
    }
    return new Promise<void>((resolve, reject) => {
      q.sealed.push({
        partition: batch.partition,
        sequence: batch.sequence,
        producerId: batch.producerId,
        ...(batch.firstSequence === undefined ? {} : { firstSequence: batch.firstSequence }),
        ...(batch.eventSequences === undefined ? {} : { eventSequences: batch.eventSequences }),
        settle: { resolve, reject },
        count: batch.count,
        payload: batch.payload,
        firstTriedAt: 0,
        attempts: 0,
        conn: null,
        target: null,
        sentAt: 0,
        checkedAt: 0,
        gate: null,
      })
      this.#unacked += batch.count
      this.stats.sent += batch.count
      this.stats.batches++
      this.#pump(batch.partition)
    })
  }

  /** Resolves when every event sent so far is acknowledged; rejects if any could not be delivered. */
  flush(): Promise<void> {
    this.#onLinger()
    if (this.#failure !== null) return Promise.reject(this.#failure)
    if (this.#unacked === 0) return Promise.resolve()
    return new Promise((resolve, reject) => this.#flushWaiters.push({ resolve, reject }))
  }

  /**
   * The current state of `key`, from its owner; undefined when the key has none. A partition
   * that is moving or restoring is asked again until queryTimeoutMs; a query waiting on a worker
   * that loses the partition (declared dead while it hangs) goes to the new owner at once.
   */
  async getState(key: string): Promise<unknown> {
    const started = performance.now()
    for (let attempt = 1; ; attempt++) {
      const routing = this.#routing
      const p = partitionForKey(key, routing.partitions)
      try {
        const target = targetOf(routing, p)
        if (target === null) {
          throw new ShoalError(ErrorCodes.NOT_OWNER, `partition ${p} has no owner yet`, { retryable: true })
        }
        const env = await this.#ask(
          target,
          (r) => movedAway(r, p, target.key),
          (conn, signal) =>
            this.#requests.request(
              conn,
              { kind: 'state', body: { op: 'get', key, partition: p } },
              this.#opts.ackTimeoutMs,
              signal,
            ),
        )
        const body = env.body as { found?: boolean; data?: Uint8Array }
        return body.found === true && body.data !== undefined ? unpackr.unpack(body.data) : undefined
      } catch (err) {
        await this.#beforeRetry(err, attempt, started)
      }
    }
  }

  /**
   * Every key's state across the cluster, partition by partition. Every owner is asked at once
   * for its partitions; those missing afterwards (moving, restoring, or their owner stopped
   * answering and was replaced) are asked of their owners again, once these serve them, until
   * every partition answered or queryTimeoutMs passed.
   */
  async *dumpState(): AsyncGenerator<[string, unknown]> {
    const started = performance.now()
    const seen = new Set<number>()
    /** Owners dumped before: asked again only once they serve what is missing. */
    const dumped = new Set<string>()
    for (let attempt = 1; ; attempt++) {
      const routing = this.#routing
      // An empty cluster has no state to give; otherwise every partition must answer. A
      // recovering coordinator's table is ownerless too, but its owners are on their way back.
      if (routing.recovering !== true && routing.routes.every((r) => r === null)) return
      const wanted = new Map<string, { target: Target; partitions: number[] }>()
      for (let p = 0; p < routing.partitions; p++) {
        const t = seen.has(p) ? null : targetOf(routing, p)
        if (t === null) continue
        const w = wanted.get(t.key) ?? { target: t, partitions: [] }
        w.partitions.push(p)
        wanted.set(t.key, w)
      }
      // The gateway answers a dump for every worker it reaches: one request covers them all,
      // and is stale as soon as any of their partitions moves (one may be a hung worker).
      const asks: { target: Target; partitions: number[]; gateway?: true }[] = []
      let gateway: { target: Target; partitions: number[]; gateway: true } | null = null
      for (const w of wanted.values()) {
        if (!this.#viaGatewayFor(w.target.workerId)) asks.push(w)
        else if (gateway === null) {
          gateway = { target: w.target, partitions: [...w.partitions], gateway: true }
          asks.push(gateway)
        } else gateway.partitions.push(...w.partitions)
      }
      let failure: unknown = null
      const results = await Promise.all(
        asks.map(async ({ target, partitions, gateway }) => {
          try {
            // A dump sends every partition the worker serves: not again until it serves the
            // missing ones (they restore on a new owner), which a get per partition tells.
            if (dumped.has(target.key) && !(await this.#serves(target, partitions))) return []
            dumped.add(target.key)
            return await this.#dumpFrom(target, partitions, gateway === true)
          } catch (err) {
            if (!isRetryableQueryError(err)) throw err
            failure = err
            return []
          }
        }),
      )
      for (const chunks of results) {
        for (const c of chunks) {
          if (seen.has(c.partition)) continue
          seen.add(c.partition)
          yield* unpackr.unpack(c.data) as [string, unknown][]
        }
      }
      const missing = this.#routing.partitions - seen.size
      if (missing === 0) return
      await this.#beforeRetry(
        failure ??
          new ShoalError(
            ErrorCodes.NOT_OWNER,
            `state dump is incomplete: ${missing} partitions were moving; retry`,
            { retryable: true },
          ),
        attempt,
        started,
      )
    }
  }

  /**
   * Whether `target` serves every one of `partitions` now: a get of the empty key in each
   * (answered, found or not, only by a worker that serves the partition; NOT_OWNER while it
   * restores). Through the gateway, which routes a get by its key, the answer is just yes.
   */
  async #serves(target: Target, partitions: number[]): Promise<boolean> {
    if (this.#viaGatewayFor(target.workerId)) return true
    const served = await Promise.all(
      partitions.map((p) =>
        this.#ask(
          target,
          (r) => movedAway(r, p, target.key),
          (conn, signal) =>
            this.#requests.request(
              conn,
              { kind: 'state', body: { op: 'get', key: '', partition: p } },
              this.#opts.ackTimeoutMs,
              signal,
            ),
        ).then(
          () => true,
          (err: unknown) => {
            if (!isRetryableQueryError(err)) throw err
            return false
          },
        ),
      ),
    )
    return served.every((s) => s)
  }

  /** One owner's dump (through the gateway: every worker's). */
  async #dumpFrom(
    target: Target,
    partitions: number[],
    viaGateway = false,
  ): Promise<{ partition: number; data: Uint8Array }[]> {
    const chunks: { partition: number; data: Uint8Array }[] = []
    const owners = partitions.map((p) => targetOf(this.#routing, p)?.key)
    await this.#ask(
      target,
      // A worker: stale once none of what is asked is its any more (a live worker that lost
      // some of it answers anyway, without them; a hung one never would). The gateway, which
      // walks every worker it reaches: once any of them lost a partition.
      viaGateway
        ? (r) => partitions.some((p, i) => owners[i] !== undefined && movedAway(r, p, owners[i]))
        : (r) =>
            partitions.every((p) => targetOf(r, p)?.key !== target.key) &&
            partitions.some((p) => movedAway(r, p, target.key)),
      async (conn, signal) => {
        try {
          await this.#requests.requestStream(
            conn,
            { kind: 'state', body: { op: 'dump' } },
            this.#opts.ackTimeoutMs,
            (env) => {
              const b = env.body as { op: string; partition?: number; data?: Uint8Array }
              if (b.op === 'chunk' && b.partition !== undefined && b.data !== undefined) {
                chunks.push({ partition: b.partition, data: b.data })
                return false
              }
              return b.op === 'end'
            },
            signal,
          )
        } finally {
          if (this.#dumpConns.has(conn)) void conn.close({ timeoutMs: 1000 })
        }
      },
      (signal) => this.#dumpConn(target, signal),
    )
    return chunks
  }

  /**
   * A connection of its own for one dump. A worker answers a connection's messages in order
   * and holds it until the dump's last chunk: on the shared one, this client's batches and
   * gets to that worker would wait behind the whole dump. Through the gateway, the gateway's.
   */
  async #dumpConn(target: Target, signal: AbortSignal): Promise<Connection> {
    if (this.#viaGatewayFor(target.workerId)) return raceSignal(this.#gateway(), signal)
    let conn: Connection
    try {
      conn = await this.#opts.transport.connect(target.address, { signal })
    } catch (err) {
      if (signal.aborted) throw signal.reason as ShoalError
      if (
        this.#opts.gateway === 'never' ||
        !(err instanceof ShoalError) ||
        err.code !== ErrorCodes.CONNECT_FAILED
      )
        throw err
      this.#viaGateway.add(target.workerId)
      return raceSignal(this.#gateway(), signal)
    }
    this.#dumpConns.add(conn)
    void (async () => {
      try {
        for await (const env of conn) this.#requests.settle(env)
      } catch {
        // Requests fail with the connection (see Requests); nothing else uses it.
      }
    })()
    return conn
  }

  /**
   * Run `request` on a connection to `target` (`dial`: the shared one), watched: when the routing table makes it
   * `stale` (pushed by the coordinator, or fetched after requestTimeoutMs without an answer), it
   * is aborted, dial included, and rejects with RoutedAwayError.
   */
  async #ask<T>(
    target: Target,
    stale: (routing: RoutingFields) => boolean,
    request: (conn: Connection, signal: AbortSignal) => Promise<T>,
    dial: (signal: AbortSignal) => Promise<Connection> = (signal) =>
      raceSignal(this.#connTo(target.workerId, target.address), signal),
  ): Promise<T> {
    if (this.#closed) throw new ShoalError(ErrorCodes.CLOSED, 'client is closed')
    const ac = new AbortController()
    const watch: Watch = { stale, abort: (reason) => ac.abort(reason ?? new RoutedAwayError(target.key)) }
    this.#watches.add(watch)
    let timer: NodeJS.Timeout | null = null
    const arm = (): void => {
      timer = setTimeout(() => {
        void this.#checkRouting().finally(() => {
          if (this.#watches.has(watch)) arm()
        })
      }, this.#opts.requestTimeoutMs)
      timer.unref()
    }
    arm()
    try {
      if (stale(this.#routing)) watch.abort()
      return await request(await dial(ac.signal), ac.signal)
    } catch (err) {
      if (ac.signal.aborted) throw ac.signal.reason as ShoalError
      throw err
    } finally {
      this.#watches.delete(watch)
      if (timer !== null) clearTimeout(timer)
    }
  }

  /**
   * Between query attempts: rethrow what must not be retried, else wait. Nothing to wait for
   * when the routing table already moved the query; otherwise back off, with the table fetched
   * at most twice per requestTimeoutMs: many queries retrying while partitions restore would
   * otherwise ask the coordinator back to back (the pushes bring every change anyway).
   */
  async #beforeRetry(err: unknown, attempt: number, started: number): Promise<void> {
    if (!isRetryableQueryError(err)) throw err
    if (this.#closed || performance.now() - started > this.#opts.queryTimeoutMs) throw err
    if (err instanceof RoutedAwayError) return
    await this.#checkRouting()
    // Short steps: a restoring partition serves again within a second or two, and the
    // requests are small (a dump is repeated only once its owner serves what was missing).
    await sleep(Math.min(100, this.#opts.retryDelayMs * attempt))
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    if (this.#lingerTimer !== null) clearImmediate(this.#lingerTimer)
    if (this.#watchdog !== null) clearInterval(this.#watchdog)
    this.#watchdog = null
    for (const g of this.#gates.values()) if (g.timer !== null) clearTimeout(g.timer)
    const closing = new ShoalError(ErrorCodes.CLOSED, 'client is closed')
    for (const w of this.#watches) w.abort(closing)
    for (const ac of this.#dials.values()) ac.abort(closing)
    this.#open.clear()
    for (const q of this.#queues) {
      if (q.retryTimer !== null) clearTimeout(q.retryTimer)
    }
    const conns = await Promise.allSettled([
      ...this.#conns.values(),
      ...(this.#gatewayConn === null ? [] : [this.#gatewayConn]),
    ])
    await Promise.all(
      conns.map((c) => (c.status === 'fulfilled' ? c.value.close({ timeoutMs: 1000 }) : Promise.resolve())),
    )
    await this.#admin.close()
    const closed = new ShoalError(ErrorCodes.CLOSED, 'client closed before every event was acknowledged')
    for (const q of this.#queues) {
      q.inFlight?.settle?.reject(closed)
      for (const b of q.sealed) b.settle?.reject(closed)
    }
    this.#fail(closed)
  }

  // --- batching and delivery ---------------------------------------------------------------------

  /**
   * Send the partial batches of idle partitions, or park them behind their worker's round in
   * flight (#pump). Partitions with a batch in flight are not touched: their next batch leaves
   * after that one is acked, so under load batches grow to what accumulates during one round
   * trip.
   */
  readonly #onLinger = (): void => {
    if (this.#lingerTimer !== null) {
      clearImmediate(this.#lingerTimer)
      this.#lingerTimer = null
    }
    const parts = this.#lingering
    this.#lingering = []
    for (const p of parts) {
      const q = this.#queues[p]!
      q.lingering = false
      if (q.count > 0 && q.inFlight === null) this.#pump(p)
    }
  }

  /** The gate of partition p's owner (by worker id: no per-batch allocation), or null if none. */
  #gateOf(p: number): Gate | null {
    const workerId = this.#routing.routes[p]?.workerId
    if (workerId === undefined) return null
    let g = this.#gates.get(workerId)
    if (g === undefined) {
      g = { flying: 0, parked: [], forming: false, timer: null }
      this.#gates.set(workerId, g)
    }
    return g
  }

  /** Partial batches that become ready in this turn join the round being sent. */
  #openRound(g: Gate): void {
    g.forming = true
    queueMicrotask(() => (g.forming = false))
  }

  /** `batch` is no longer out (acked, refused, given up): the last of a flight lets the parked go. */
  #land(batch: Sealed): void {
    const g = batch.gate
    if (g === null) return
    batch.gate = null
    if (--g.flying === 0) this.#launch(g)
  }

  readonly #launch = (g: Gate): void => {
    if (g.timer !== null) clearTimeout(g.timer)
    g.timer = null
    if (g.parked.length === 0) return
    const parts = g.parked
    g.parked = []
    // They go now even if a round is still out (lingerMs passed), and form one round.
    this.#openRound(g)
    for (const p of parts) {
      this.#queues[p]!.parked = false
      this.#pump(p)
    }
  }

  #seal(p: number): void {
    this.#sealBuffered(this.#queues[p]!, p)
    this.#pump(p)
  }

  #sealBuffered(q: PartitionQueue, p: number): void {
    const count = q.count
    const payload = sealBatch(q.open!, count)
    q.sizeHint = Math.max(1024, payload.length + 256)
    q.open = null
    q.count = 0
    q.sealed.push({
      partition: p,
      sequence: ++q.seq,
      count,
      payload,
      firstTriedAt: 0,
      attempts: 0,
      conn: null,
      target: null,
      sentAt: 0,
      checkedAt: 0,
      gate: null,
    })
    this.stats.batches++
  }

  /**
   * Put the partition's next batch in flight if none is: a sealed (full) one, else what is
   * buffered, unless its worker has a round of ours in flight that is not forming now: then the
   * partition waits in the worker's gate.
   */
  #pump(p: number): void {
    const q = this.#queues[p]!
    if (q.inFlight !== null || q.retryTimer !== null || this.#closed) return
    const g = this.#gateOf(p)
    if (q.sealed.length === 0) {
      if (q.count === 0) return
      if (g !== null && g.flying > 0 && !g.forming) {
        if (!q.parked) {
          q.parked = true
          g.parked.push(p)
          g.timer ??= setTimeout(this.#launch, this.#opts.lingerMs, g)
        }
        return
      }
      this.#sealBuffered(q, p)
    }
    const batch = q.sealed.shift()!
    q.inFlight = batch
    if (g !== null) {
      batch.gate = g
      // A new round: what else becomes ready in this turn (the rest of a linger pass, the
      // partitions a launch releases, a send loop's other partitions) joins it.
      if (g.flying++ === 0) this.#openRound(g)
    }
    this.#deliver(q, batch)
  }

  /** The owner of partition p in the current routing table (one Target per worker and table). */
  #target(p: number): Target | null {
    if (this.#targetsOf !== this.#routing) {
      const r = this.#routing
      const byWorker = new Map<string, Target | null>()
      this.#targets = r.routes.map((route, i) => {
        if (route == null) return null
        let t = byWorker.get(route.workerId)
        if (t === undefined) byWorker.set(route.workerId, (t = targetOf(r, i)))
        return t
      })
      this.#targetsOf = r
    }
    return this.#targets[p] ?? null
  }

  /**
   * Send `batch` to its partition's owner. Each call is one attempt: an attempt superseded by a
   * newer one (a re-route while it was still dialing) finds batch.attempts moved on and stops.
   * To a worker whose connection is up, the batch goes now, without a promise or a turn: at 50%
   * load a client sends ~50k batches a second, and the dial path's per-batch key, promise and
   * await were a measurable part of them.
   */
  #deliver(q: PartitionQueue, batch: Sealed): void {
    if (batch.firstTriedAt === 0) batch.firstTriedAt = performance.now()
    const attempt = ++batch.attempts
    batch.conn = null
    const route = this.#routing.routes[batch.partition]
    const target = this.#target(batch.partition)
    batch.target = target?.key ?? null
    if (route == null || target === null) {
      this.#retry(
        q,
        batch,
        new ShoalError(ErrorCodes.NOT_OWNER, `partition ${batch.partition} has no owner yet`, {
          retryable: true,
        }),
      )
      return
    }
    const open = this.#open.get(target.key)
    if (open === undefined || this.#viaGatewayFor(target.workerId)) {
      void this.#dialAndSend(q, batch, attempt, route.epoch, target)
      return
    }
    try {
      this.#sendBatch(open, q, batch, route.epoch)
    } catch (err) {
      this.#retry(
        q,
        batch,
        err instanceof ShoalError ? err : new ShoalError(ErrorCodes.TRANSPORT, String(err)),
      )
    }
  }

  async #dialAndSend(
    q: PartitionQueue,
    batch: Sealed,
    attempt: number,
    epoch: number,
    target: Target,
  ): Promise<void> {
    const current = (): boolean => q.inFlight === batch && batch.attempts === attempt && !this.#closed
    try {
      const conn = await this.#connTo(target.workerId, target.address)
      if (!current()) return
      this.#sendBatch(conn, q, batch, epoch)
    } catch (err) {
      if (!current()) return
      this.#retry(
        q,
        batch,
        err instanceof ShoalError ? err : new ShoalError(ErrorCodes.TRANSPORT, String(err)),
      )
    }
  }

  #sendBatch(conn: Connection, q: PartitionQueue, batch: Sealed, epoch: number): void {
    batch.conn = conn
    batch.sentAt = batch.checkedAt = performance.now()
    const body: EventBatchBody = {
      op: 'batch',
      partition: batch.partition,
      epoch,
      producerId: batch.producerId ?? this.producerId,
      sequence: batch.sequence,
      count: batch.count,
      payload: batch.payload,
    }
    if (batch.firstSequence !== undefined) body.firstSequence = batch.firstSequence
    if (batch.eventSequences !== undefined) body.eventSequences = batch.eventSequences
    this.#send(conn, q, batch, body)
    this.#watchdog ??= setInterval(this.#watch, this.#watchEveryMs).unref()
  }

  /**
   * Send a batch: alone to a version-1 peer (a send error is the caller's), else into the
   * connection's outbox, which leaves at the end of this run of microtasks as one `batches`
   * message: a round's batches to one worker (every partition #pump put in flight in this turn)
   * cost one message, one decode and one wake-up there instead of one each.
   */
  #send(conn: Connection, q: PartitionQueue, batch: Sealed, body: EventBatchBody): void {
    if (conn.peer.version < BUNDLES_SINCE_VERSION || body.payload.byteLength > BUNDLE_BATCH_BYTES) {
      conn.send({ kind: 'event', body })
      return
    }
    let out = this.#outbox.get(conn)
    if (out === undefined) {
      out = []
      this.#outbox.set(conn, out)
      queueMicrotask(() => this.#flushOutbox(conn))
    }
    out.push({ q, batch, body })
  }

  #flushOutbox(conn: Connection): void {
    const out = this.#outbox.get(conn)
    this.#outbox.delete(conn)
    if (out === undefined) return
    let from = 0
    while (from < out.length) {
      // At most MAX_BUNDLE batches and about BUNDLE_BYTES of payload per message.
      let to = from
      let bytes = 0
      while (to < out.length && to - from < MAX_BUNDLE && (to === from || bytes < BUNDLE_BYTES)) {
        bytes += out[to++]!.body.payload.byteLength
      }
      const part = out.slice(from, to)
      from = to
      if (part.length > 1) {
        try {
          conn.send({ kind: 'event', body: { op: 'batches', batches: part.map((o) => o.body) } })
          continue
        } catch (err) {
          // Over a small maxFrameBytes: each alone (below). Anything else fails them all.
          if (!(err instanceof FrameTooLargeError)) {
            for (const o of part) this.#sendFailed(conn, o, err)
            continue
          }
        }
      }
      for (const o of part) {
        try {
          conn.send({ kind: 'event', body: o.body })
        } catch (err) {
          this.#sendFailed(conn, o, err)
        }
      }
    }
  }

  /** Not sent: retried like a batch whose send failed (unless a newer attempt took over). */
  #sendFailed(conn: Connection, { q, batch }: Outgoing, err: unknown): void {
    if (q.inFlight !== batch || batch.conn !== conn || q.retryTimer !== null) return
    this.#retry(q, batch, err instanceof ShoalError ? err : new ShoalError(ErrorCodes.TRANSPORT, String(err)))
  }

  /**
   * The watchdog of batches in flight, one timer for all of them (a timer per batch cost a
   * Timeout object and two timer-list operations per batch; at 50% load ~50k batches/s):
   * every requestTimeoutMs without an ack, check the routing table with the coordinator (a
   * moved partition re-routes the batch, see #reroute); resend after ackTimeoutMs. An owner
   * that is only slow (backpressure, a long durable append) is not sent duplicates meanwhile.
   * It runs every quarter of the shorter of the two, so either fires up to that much late.
   */
  readonly #watch = (): void => {
    const now = performance.now()
    let idle = true
    for (const q of this.#queues) {
      const batch = q.inFlight
      if (batch === null || batch.conn === null || q.retryTimer !== null) continue
      idle = false
      if (now - batch.sentAt >= this.#opts.ackTimeoutMs) {
        this.#retry(
          q,
          batch,
          new ShoalError(ErrorCodes.TIMEOUT, `batch not acked in ${this.#opts.ackTimeoutMs} ms`, {
            retryable: true,
          }),
        )
      } else if (now - batch.checkedAt >= this.#opts.requestTimeoutMs) {
        batch.checkedAt = now
        void this.#checkRouting()
      }
    }
    if (idle && this.#watchdog !== null) {
      clearInterval(this.#watchdog)
      this.#watchdog = null
    }
  }

  #onAck(ack: EventAckBody, conn: Connection): void {
    const q = this.#queues[ack.partition]
    const batch = q?.inFlight
    if (q === undefined || batch == null || batch.sequence !== ack.sequence) return
    if (ack.producerId !== (batch.producerId ?? this.producerId)) return
    // An ack from an earlier attempt's connection (a worker the batch was re-routed away from)
    // says nothing about the current attempt; the worker dedups the resend.
    if (batch.conn !== conn) return
    if (ack.ok) {
      q.inFlight = null
      this.#onAckHook?.(ack.partition, batch.count)
      batch.settle?.resolve()
      this.#acked(batch.count)
      // Parks behind the rest of this round if it is still out; the round's last ack (#land)
      // then sends every parked partition, this one included, together.
      this.#pump(ack.partition)
      this.#land(batch)
      return
    }
    const err =
      ack.error === undefined
        ? new ShoalError(ErrorCodes.PEER_ERROR, 'batch refused')
        : reviveError(ack.error)
    if (err.retryable) this.#retry(q, batch, err)
    else this.#giveUp(q, batch, err)
  }

  #retry(q: PartitionQueue, batch: Sealed, err: ShoalError): void {
    if (q.inFlight !== batch || q.retryTimer !== null) return
    this.#land(batch)
    if (performance.now() - batch.firstTriedAt > this.#opts.deliveryTimeoutMs) {
      this.#giveUp(q, batch, err)
      return
    }
    this.stats.retries++
    this.stats.lastRetry = { code: err.code, message: err.message, at: performance.now() }
    batch.conn = null
    if (
      err.code === ErrorCodes.NOT_OWNER ||
      err.code === ErrorCodes.CONNECTION_LOST ||
      err.code === ErrorCodes.CONNECT_FAILED
    ) {
      void this.#refreshRouting()
    }
    const delay = Math.min(1000, this.#opts.retryDelayMs * Math.min(batch.attempts, 10))
    q.retryTimer = setTimeout(() => {
      q.retryTimer = null
      if (q.inFlight === batch && !this.#closed) this.#deliver(q, batch)
    }, delay)
  }

  #giveUp(q: PartitionQueue, batch: Sealed, err: ShoalError): void {
    if (q.inFlight !== batch) return
    this.#land(batch)
    q.inFlight = null
    this.stats.failed += batch.count
    this.#onGiveUpHook?.(batch.partition, batch.count)
    if (batch.settle !== undefined) {
      batch.settle.reject(err)
      this.#acked(batch.count, false)
      this.#pump(batch.partition)
      return
    }
    this.#fail(
      new ShoalError(
        err.code,
        `batch ${batch.sequence} of partition ${batch.partition} (${batch.count} events) not delivered: ${err.message}`,
        {
          cause: err,
        },
      ),
    )
    this.#acked(batch.count, false)
    this.#pump(batch.partition)
  }

  #acked(count: number, ok = true): void {
    this.#unacked -= count
    if (ok) this.stats.acked += count
    if (this.#unacked < this.#opts.maxBufferedEvents && this.#roomWaiters.length > 0) {
      const w = this.#roomWaiters
      this.#roomWaiters = []
      for (const r of w) r()
    }
    if (this.#unacked === 0 && this.#flushWaiters.length > 0) {
      const w = this.#flushWaiters
      this.#flushWaiters = []
      for (const f of w) {
        if (this.#failure !== null) f.reject(this.#failure)
        else f.resolve()
      }
    }
  }

  #fail(err: ShoalError): void {
    this.#failure ??= err
    const w = this.#flushWaiters
    this.#flushWaiters = []
    for (const f of w) f.reject(this.#failure)
  }

  // --- routing and connections -------------------------------------------------------------------

  #onRouting(r: RoutingFields): void {
    const current = this.#routing
    if (r.partitions !== current.partitions) return
    // Tables are ordered by the leader that made them, then by epoch. A new leader rebuilds the
    // assignment from what the workers claimed, so its epoch can be below the last ones a
    // deposed leader published (it went on declaring workers dead while cut off, and those
    // tables, ownerless, reached this client when its link came back): compared by epoch alone
    // they would shadow the new leader's for good ("no owner" until the epochs caught up).
    const leader = r.leader ?? 0
    const currentLeader = current.leader ?? 0
    if (leader < currentLeader) return // a deposed leader's late push
    if (leader === currentLeader && r.epoch < current.epoch) return
    // A recovering coordinator (restarted, or a new leader) has no owners yet; the workers keep
    // serving what they own meanwhile, so the last real table stays the better guide. The
    // coordinator pushes its table once the owners are back.
    if (r.recovering === true && current.recovering !== true && current.routes.some((x) => x !== null)) return
    this.#routing = r
    this.#refreshedAt = performance.now()
    this.#reroute()
  }

  /**
   * Apply the routing table to everything waiting on a worker. A batch whose partition has
   * another owner now is sent to it at once (the worker dedups by producer and sequence, so a
   * batch the old owner did apply is not applied twice); a state query is aborted and asked
   * again; dials and connections to workers that own nothing any more are dropped. A worker
   * declared dead while it hangs (SIGSTOP, a stuck host) accepts connections and never
   * answers: without this everything aimed at it would wait out a handshake or ack timeout.
   */
  #reroute(): void {
    if (this.#closed) return
    const r = this.#routing
    for (const w of [...this.#watches]) if (w.stale(r)) w.abort()
    for (let p = 0; p < this.#queues.length; p++) {
      const q = this.#queues[p]!
      const b = q.inFlight
      if (b === null || b.attempts === 0) continue
      // No owner in this table (a move in progress, a coordinator recovering): the current
      // attempt may still be acked; the table that names the new owner re-routes it.
      const t = targetOf(r, p)
      if (t === null || t.key === b.target) continue
      if (q.retryTimer !== null) {
        clearTimeout(q.retryTimer)
        q.retryTimer = null
      }
      this.stats.retries++
      this.#deliver(q, b)
    }
    // Only a table that names an owner for every partition says a missing worker owns nothing.
    if (r.routes.some((route) => route === null)) return
    const owners = new Set(Object.entries(r.addresses).map(([id, address]) => `${id}@${address}`))
    for (const [key, ac] of this.#dials) {
      if (!owners.has(key))
        ac.abort(new ShoalError(ErrorCodes.NOT_OWNER, `${key} owns no partition now`, { retryable: true }))
    }
    for (const [workerId, g] of this.#gates) {
      if (!(workerId in r.addresses) && g.flying === 0 && g.parked.length === 0) this.#gates.delete(workerId)
    }
    for (const [key, c] of this.#conns) {
      if (owners.has(key)) continue
      this.#conns.delete(key)
      this.#open.delete(key)
      c.then(
        (conn) => conn.destroy(),
        () => {},
      )
    }
  }

  #refreshRouting(): Promise<void> {
    this.#refreshing ??= this.#admin
      .routing()
      .then((r) => {
        this.#refreshedAt = performance.now()
        this.#onRouting(r)
      })
      .catch(() => {})
      .finally(() => {
        this.#refreshing = null
      })
    return this.#refreshing
  }

  /**
   * A routing fetch for requests unanswered for requestTimeoutMs: at most one per half of that,
   * however many requests wait, so a slow cluster is not flooded with routing requests too.
   */
  #checkRouting(): Promise<void> {
    if (performance.now() - this.#refreshedAt < this.#opts.requestTimeoutMs / 2)
      return this.#refreshing ?? Promise.resolve()
    return this.#refreshRouting()
  }

  #viaGatewayFor(workerId: string): boolean {
    return this.#opts.gateway === 'always' || this.#viaGateway.has(workerId)
  }

  #connTo(workerId: string, address: string): Promise<Connection> {
    if (this.#viaGatewayFor(workerId)) return this.#gateway()
    const key = `${workerId}@${address}`
    let c = this.#conns.get(key)
    if (c === undefined) {
      // Abortable, so a dial to a worker that stopped answering ends once it owns nothing.
      const ac = new AbortController()
      const dial: Promise<Connection> = this.#opts.transport.connect(address, { signal: ac.signal }).then(
        (conn) => {
          if (this.#conns.get(key) !== dial || this.#closed) {
            conn.destroy()
            throw new ShoalError(ErrorCodes.NOT_OWNER, `${key} owns no partition now`, { retryable: true })
          }
          this.#open.set(key, conn)
          void this.#readAcks(key, conn, dial)
          return conn
        },
        (err: unknown) => {
          throw ac.signal.aborted ? (ac.signal.reason as ShoalError) : err
        },
      )
      const forget = (): void => {
        if (this.#dials.get(key) === ac) this.#dials.delete(key)
      }
      // A failed dial is forgotten so the next attempt dials again.
      dial.then(forget, () => {
        forget()
        if (this.#conns.get(key) === dial) this.#conns.delete(key)
      })
      this.#dials.set(key, ac)
      this.#conns.set(key, dial)
      c = dial
    }
    if (this.#opts.gateway === 'never') return c
    return c.catch((err: unknown) => {
      if (!(err instanceof ShoalError) || err.code !== ErrorCodes.CONNECT_FAILED) throw err
      // This worker is not reachable from here: go through the coordinator from now on.
      this.#viaGateway.add(workerId)
      return this.#gateway()
    })
  }

  /** A connection to the coordinator used as a gateway: batches, acks and state queries. */
  #gateway(): Promise<Connection> {
    if (this.#gatewayConn === null) {
      // The replica that leads now (the admin link follows the leader).
      const c = this.#opts.transport.connect(this.#admin.address).then((conn) => {
        void this.#readAcks('gateway', conn).finally(() => {
          if (this.#gatewayConn === c) this.#gatewayConn = null
        })
        return conn
      })
      c.catch(() => {
        if (this.#gatewayConn === c) this.#gatewayConn = null
      })
      this.#gatewayConn = c
    }
    return this.#gatewayConn
  }

  async #readAcks(key: string, conn: Connection, dial?: Promise<Connection>): Promise<void> {
    try {
      for await (const env of conn) this.#onData(env, conn)
    } catch {
      // handled below
    }
    if (dial !== undefined && this.#conns.get(key) === dial) this.#conns.delete(key)
    if (this.#open.get(key) === conn) this.#open.delete(key)
    const lost = new ShoalError(ErrorCodes.CONNECTION_LOST, `connection to ${key} lost`, { retryable: true })
    for (const q of this.#queues) {
      if (q.inFlight?.conn === conn && q.retryTimer === null) this.#retry(q, q.inFlight, lost)
    }
  }

  #onData(env: Envelope, conn: Connection): void {
    if (env.kind === 'event' && env.body.op === 'ack') {
      this.#onAck(env.body, conn)
      return
    }
    if (env.kind === 'event' && env.body.op === 'acks') {
      for (const ack of env.body.acks) this.#onAck(ack, conn)
      return
    }
    this.#requests.settle(env)
  }
}

/** A batch in a connection's outbox. */
interface Outgoing {
  q: PartitionQueue
  batch: Sealed
  body: EventBatchBody
}

/** Batches above this payload size travel alone (bundling only pays for small ones). */
const BUNDLE_BATCH_BYTES = 64 * 1024
/** Payload bytes after which a `batches` message is closed (well under maxFrameBytes). */
const BUNDLE_BYTES = 1024 * 1024

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}
