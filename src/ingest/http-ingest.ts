/**
 * HTTP ingest: `POST /events` on the coordinator's HTTP port (ARCHITECTURE.md, "Connecting to
 * real systems"; operator docs in docs/operations-http.md).
 *
 * The body is NDJSON exactly as `shoal send` takes it (see ./ndjson.ts). It is parsed and
 * validated whole first: any malformed line answers 400 naming the lines, and nothing of the
 * request is sent. Otherwise every event goes into the cluster and the answer is
 * `200 {"acked":N}` once all N are acknowledged, i.e. applied on their owners (in their replay
 * log, with durable state). If the cluster cannot take them (no owner for a partition, the
 * coordinator recovering, no ack within timeoutMs, a batch refused for good), the answer is
 * 503 with a retryable code and `Retry-After`; the client may send the whole request again.
 * Some of its events may already have been applied then, so a retried request can apply them
 * twice: exactly-once holds within one request, not across HTTP retries.
 *
 * How events reach the workers: one ShoalClient per coordinator process, dialing the
 * coordinator's own transport address for the routing table and each partition's owner
 * directly (through the coordinator's gateway only for a worker it cannot dial). The client
 * already does what ingest needs: per-partition batching, one batch in flight per partition
 * (per-key order), (producer id, sequence) dedup of its own retries, re-routing when a
 * partition moves, backpressure. Going through the Gateway instead would relay every byte
 * through the coordinator's event loop a second time and need all of that rebuilt.
 *
 * Requests share the client, so each one tracks its own events: per partition, the client
 * acknowledges batches in the order their events were sent (onAck), so a request is complete
 * when, for each partition it wrote, the acknowledged count reaches the position of its last
 * event. A batch the client gives up on (stats.failed > 0, or flush() rejecting) breaks that
 * count, so that client is retired: every request still waiting on it answers 503 and the next
 * request gets a new client whose producer id is the same base with a generation suffix (a new
 * producer: its sequences start over). The base id is random per process, so a restarted
 * coordinator never reuses sequences that workers remember.
 */
import { randomUUID } from 'node:crypto'
import type { ShoalClient, ShoalClientOptions } from '../client/client.ts'
import { ErrorCodes, ShoalError } from '../errors.ts'
import type { PostRoute, RouteResponse } from '../observability/http.ts'
import type { RoutingFields } from '../protocol/control.ts'
import { NdjsonError, readNdjson, type NdjsonEvents } from './ndjson.ts'

/** What the ingest needs to create its client; the rest of ShoalClientOptions is the caller's. */
export type IngestClientOptions = Pick<
  ShoalClientOptions,
  'producerId' | 'onAck' | 'deliveryTimeoutMs' | 'gateway'
>

export interface EventIngestOptions {
  /** Connect a ShoalClient to this coordinator with these options merged in. */
  connect(options: IngestClientOptions): Promise<ShoalClient>
  /** The coordinator's current routing table: a request touching an unowned partition is refused at once. */
  routing(): RoutingFields
  /** The coordinator is ready (not recovering, not stopping). @default always */
  ready?(): boolean
  /** Base producer id. @default `http-ingest:<random UUID>` */
  producerId?: string
  /** How long a request may wait for its acks before 503. @default 30000 */
  timeoutMs?: number
  logger?: { warn(obj: object, msg?: string): void }
}

export const DEFAULT_INGEST_TIMEOUT_MS = 30_000
/** Largest POST /events body. */
export const DEFAULT_INGEST_MAX_BODY_BYTES = 64 * 1024 * 1024
export const INGEST_CONTENT_TYPES: readonly string[] = Object.freeze([
  'application/x-ndjson',
  'application/ndjson',
  'application/jsonl',
  'text/plain',
  'application/json',
])

interface Waiter {
  remaining: number
  settled: boolean
  resolve(): void
  reject(err: ShoalError): void
}

interface Generation {
  n: number
  producerId: string
  client: Promise<ShoalClient>
  /** The client once connected (acks only arrive after that). */
  connected: ShoalClient | null
  /** Per partition: events sent and events acknowledged by this client. */
  sent: number[]
  acked: number[]
  /** Per partition: requests waiting for acked to reach `target`, in increasing target order. */
  waiting: { target: number; waiter: Waiter }[][]
  all: Set<Waiter>
  failed: ShoalError | null
  /** Rejects when the generation is retired (never resolves). */
  retired: Promise<never>
  retire: (err: ShoalError) => void
  watching: boolean
}

export class EventIngest implements EventsHandler {
  readonly producerId: string
  readonly timeoutMs: number
  readonly #opts: EventIngestOptions
  #gen: Generation | null = null
  #genN = 0
  #retired = 0
  #closed = false

  constructor(options: EventIngestOptions) {
    this.#opts = options
    this.producerId = options.producerId ?? `http-ingest:${randomUUID()}`
    this.timeoutMs = options.timeoutMs ?? DEFAULT_INGEST_TIMEOUT_MS
    if (!Number.isSafeInteger(this.timeoutMs) || this.timeoutMs < 1) {
      throw new ShoalError(
        ErrorCodes.INVALID_OPTION,
        `options.timeoutMs must be a positive integer (got ${String(options.timeoutMs)})`,
      )
    }
  }

  /**
   * Send `events` and resolve with their number once every one is acknowledged. Rejects with a
   * retryable ShoalError when the cluster cannot take them now.
   *
   * Not async itself, so that `events` is let go as soon as the last one is sent rather than
   * when the acks are in: an async function keeps its arguments until it returns, and the
   * parsed events of every request in flight, kept for a round trip, outlived the
   * coordinator's 4 MiB semi-spaces (GC was 21% of its CPU in `npm run bench -- send`).
   */
  ingest(events: NdjsonEvents, options: { signal?: AbortSignal } = {}): Promise<number> {
    let parts: Int32Array
    try {
      parts = this.#partitions(events)
    } catch (err) {
      events.release()
      return Promise.reject(err instanceof Error ? err : new Error(String(err)))
    }
    const count = events.length
    if (count === 0) {
      events.release()
      return Promise.resolve(0)
    }
    const deadline = AbortSignal.timeout(this.timeoutMs)
    const gen = this.#generation()
    /**
     * Per partition: the position of this request's last event in it (0: none). A typed array
     * rather than a Map (a set per event); doubles, as positions grow for the process's life.
     */
    const targets = new Float64Array(this.#opts.routing().partitions)
    // Connected (every request but the first few): sent in this turn until the client pushes back.
    let sent = 0
    try {
      if (gen.connected !== null) sent = this.#sendFrom(gen, gen.connected, events, parts, 0, targets)
    } catch (err) {
      events.release()
      return Promise.reject(err instanceof Error ? err : new Error(String(err)))
    }
    const rest =
      sent === count ? Promise.resolve() : this.#sendRest(gen, events, parts, sent, targets, deadline)
    // Every event is in the client's batches (or will not be): the body's columns go back.
    const release = (): void => events.release()
    rest.then(release, release)
    return rest.then(() => this.#acked(gen, targets, count, deadline, options.signal))
  }

  /**
   * Each event's partition (valid until events.release()); throws (retryable) if the cluster
   * cannot take them now.
   */
  #partitions(events: NdjsonEvents): Int32Array {
    if (this.#closed) throw unavailable(ErrorCodes.CLOSED, 'the coordinator is shutting down')
    if (events.length === 0) return new Int32Array(0)
    if (this.#opts.ready?.() === false) {
      throw unavailable(ErrorCodes.NOT_OWNER, 'the coordinator is not ready (starting or recovering); retry')
    }
    const routing = this.#opts.routing()
    const parts = events.partitions(routing.partitions)
    const routes = routing.routes
    for (let i = 0; i < events.length; i++) {
      const p = parts[i]!
      if (routes[p] == null) {
        const unowned = routes.filter((r) => r == null).length
        throw unavailable(
          ErrorCodes.NOT_OWNER,
          `partition ${p} has no owner (${unowned} of ${routing.partitions} unowned: are workers up?); nothing was sent`,
        )
      }
    }
    return parts
  }

  /** Send events[from..] until the client pushes back; returns the index after the last one sent. */
  #sendFrom(
    gen: Generation,
    client: ShoalClient,
    events: NdjsonEvents,
    parts: Int32Array,
    from: number,
    targets: Float64Array,
  ): number {
    if (gen.failed !== null) throw gen.failed
    // The routing table and the client come from one cluster, whose partition count is fixed;
    // checked anyway, as a wrong partition would send events to the wrong owner.
    if (client.partitions !== this.#opts.routing().partitions) {
      throw unavailable(ErrorCodes.NOT_OWNER, 'the cluster changed its partition count; retry')
    }
    for (let i = from; i < events.length;) {
      const p = parts[i]!
      const room = events.sendTo(client, i++, p)
      targets[p] = ++gen.sent[p]!
      if (!room) return i
    }
    return events.length
  }

  /** The rest of events from `from`: after connecting, or each time the client has room again. */
  async #sendRest(
    gen: Generation,
    events: NdjsonEvents,
    parts: Int32Array,
    from: number,
    targets: Float64Array,
    deadline: AbortSignal,
  ): Promise<void> {
    const client = await raceGen(gen, gen.client, deadline, this.timeoutMs)
    let i = from
    for (;;) {
      if (i > 0) await raceGen(gen, client.drain(), deadline, this.timeoutMs)
      if (i === events.length) return
      i = this.#sendFrom(gen, client, events, parts, i, targets)
    }
  }

  /** Resolves with `count` once every partition in `targets` is acknowledged up to its target. */
  async #acked(
    gen: Generation,
    targets: Float64Array,
    count: number,
    deadline: AbortSignal,
    signal: AbortSignal | undefined,
  ): Promise<number> {
    if (gen.failed !== null) throw gen.failed
    const waiter = {} as Waiter
    const done = new Promise<void>((resolve, reject) => {
      Object.assign(waiter, { remaining: 0, settled: false, resolve, reject })
    })
    for (let p = 0; p < targets.length; p++) {
      const target = targets[p]!
      if (target === 0 || gen.acked[p]! >= target) continue
      waiter.remaining++
      gen.waiting[p]!.push({ target, waiter })
    }
    if (waiter.remaining === 0) return count
    gen.all.add(waiter)
    this.#watch(gen, gen.connected!)
    const stop = (err: ShoalError): void => {
      if (waiter.settled) return
      waiter.settled = true
      gen.all.delete(waiter)
      waiter.reject(err)
    }
    const onDeadline = (): void =>
      stop(
        unavailable(
          ErrorCodes.TIMEOUT,
          `not every event was acknowledged within ${this.timeoutMs} ms; some may have been applied, so a retry may apply them twice`,
        ),
      )
    const onAbort = (): void => stop(unavailable(ErrorCodes.ABORTED, 'the HTTP client went away'))
    deadline.addEventListener('abort', onDeadline, { once: true })
    signal?.addEventListener('abort', onAbort, { once: true })
    if (deadline.aborted) onDeadline()
    if (signal?.aborted === true) onAbort()
    try {
      await done
      return count
    } finally {
      deadline.removeEventListener('abort', onDeadline)
      signal?.removeEventListener('abort', onAbort)
    }
  }

  handle(body: Buffer, keyField: string, signal: AbortSignal): RouteResponse | Promise<RouteResponse> {
    return answerEvents(this, body, keyField, signal)
  }

  /**
   * The current client's producer id (null before the first request or after a retirement),
   * how many clients were retired after a delivery failure, and the requests waiting for acks.
   */
  status(): { producerId: string | null; retired: number; waiting: number } {
    const gen = this.#gen
    return {
      producerId: gen?.producerId ?? null,
      retired: this.#retired,
      waiting: gen?.all.size ?? 0,
    }
  }

  /** Fail what is waiting (503) and close the client. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true
    const gen = this.#gen
    this.#gen = null
    if (gen !== null)
      await this.#retire(gen, unavailable(ErrorCodes.CLOSED, 'the coordinator is shutting down'))
  }

  #generation(): Generation {
    if (this.#gen !== null && this.#gen.failed === null) return this.#gen
    const n = this.#genN++
    const producerId = n === 0 ? this.producerId : `${this.producerId}.${n}`
    let retire!: (err: ShoalError) => void
    const retired = new Promise<never>((_resolve, reject) => (retire = reject))
    retired.catch(() => {})
    const gen: Generation = {
      n,
      producerId,
      client: null as unknown as Promise<ShoalClient>,
      connected: null,
      sent: [],
      acked: [],
      waiting: [],
      all: new Set(),
      failed: null,
      retired,
      retire,
      watching: false,
    }
    gen.client = this.#opts
      .connect({
        producerId,
        gateway: 'auto',
        deliveryTimeoutMs: this.timeoutMs,
        onAck: (p, count) => this.#onAck(gen, p, count),
      })
      .then((client) => {
        const P = client.partitions
        gen.sent = new Array<number>(P).fill(0)
        gen.acked = new Array<number>(P).fill(0)
        gen.waiting = Array.from({ length: P }, () => [])
        gen.connected = client
        return client
      })
    gen.client.catch((err: unknown) => {
      void this.#retire(
        gen,
        unavailable(
          ErrorCodes.CONNECT_FAILED,
          `cannot reach the cluster: ${err instanceof Error ? err.message : String(err)}`,
        ),
      )
    })
    this.#gen = gen
    return gen
  }

  #onAck(gen: Generation, p: number, count: number): void {
    if (gen.failed !== null) return
    // A batch given up on earlier makes the counts wrong from then on (see the module comment);
    // the client counts it before it reports any later ack.
    if ((gen.connected?.stats.failed ?? 0) > 0) {
      void this.#retire(gen, unavailable(ErrorCodes.TIMEOUT, 'a batch could not be delivered; retry'))
      return
    }
    const acked = (gen.acked[p] = (gen.acked[p] ?? 0) + count)
    const q = gen.waiting[p]
    if (q === undefined) return
    let i = 0
    while (i < q.length && q[i]!.target <= acked) {
      const { waiter } = q[i]!
      i++
      if (waiter.settled) continue
      if (--waiter.remaining === 0) {
        waiter.settled = true
        gen.all.delete(waiter)
        waiter.resolve()
      }
    }
    if (i > 0) q.splice(0, i)
  }

  /** Notice a batch given up on even when no ack follows it (flush() rejects then). */
  #watch(gen: Generation, client: ShoalClient): void {
    if (gen.watching) return
    gen.watching = true
    client.flush().then(
      () => {
        gen.watching = false
      },
      (err: unknown) => {
        void this.#retire(
          gen,
          unavailable(
            err instanceof ShoalError ? err.code : ErrorCodes.TIMEOUT,
            `events could not be delivered: ${err instanceof Error ? err.message : String(err)}`,
          ),
        )
      },
    )
  }

  async #retire(gen: Generation, err: ShoalError): Promise<void> {
    if (gen.failed !== null) return
    gen.failed = err
    if (err.code !== ErrorCodes.CLOSED) this.#retired++
    if (this.#gen === gen) this.#gen = null
    gen.retire(err)
    if (err.code !== ErrorCodes.CLOSED) {
      this.#opts.logger?.warn(
        { err, producerId: gen.producerId, waiting: gen.all.size },
        'http ingest: retiring its client; waiting requests answer 503',
      )
    }
    for (const w of gen.all) {
      w.settled = true
      w.reject(err)
    }
    gen.all.clear()
    const client = await gen.client.catch(() => null)
    await client?.close().catch(() => {})
  }
}

/** `p`, unless the generation is retired or the deadline passes first. */
async function raceGen<T>(
  gen: Generation,
  p: Promise<T>,
  deadline: AbortSignal,
  timeoutMs: number,
): Promise<T> {
  if (deadline.aborted) throw deadlineError(timeoutMs)
  let onAbort: (() => void) | undefined
  const timedOut = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(deadlineError(timeoutMs))
    deadline.addEventListener('abort', onAbort, { once: true })
  })
  try {
    return await Promise.race([p, gen.retired, timedOut])
  } finally {
    deadline.removeEventListener('abort', onAbort!)
  }
}

function deadlineError(timeoutMs: number): ShoalError {
  return unavailable(
    ErrorCodes.TIMEOUT,
    `the cluster did not take the events within ${timeoutMs} ms; some may have been applied, so a retry may apply them twice`,
  )
}

function unavailable(code: ShoalError['code'], message: string): ShoalError {
  return new ShoalError(code, message, { retryable: true })
}

export interface EventsRouteOptions {
  /** @default DEFAULT_INGEST_MAX_BODY_BYTES (64 MiB) */
  maxBodyBytes?: number
}

/** What answers POST /events: an EventIngest here, or IngestThreads (one on a worker thread). */
export interface EventsHandler {
  /** How long a request may wait for its acks before 503. */
  readonly timeoutMs: number
  /**
   * The answer to a body (NDJSON, `keyField` naming the key field). The handler owns `body`:
   * it may move its memory to another thread.
   */
  handle(body: Buffer, keyField: string, signal: AbortSignal): RouteResponse | Promise<RouteResponse>
}

/**
 * The `POST /events` route for startHttpServer. Query parameter `key-field` names the key field
 * (default "key", like `shoal send --key-field`).
 */
export function eventsRoute(events: EventsHandler, options: EventsRouteOptions = {}): PostRoute {
  return {
    method: 'POST',
    maxBodyBytes: options.maxBodyBytes ?? DEFAULT_INGEST_MAX_BODY_BYTES,
    contentTypes: INGEST_CONTENT_TYPES,
    // The ingest answers 503 itself at its deadline; the server's own limit is a backstop.
    handlerTimeoutMs: events.timeoutMs + 5000,
    handler: (req): RouteResponse | Promise<RouteResponse> => {
      const keyField = req.url.searchParams.get('key-field') ?? 'key'
      if (keyField === '') return badRequest('query parameter key-field must not be empty')
      return events.handle(req.body, keyField, req.signal)
    },
  }
}

/**
 * Answer a body: 400 naming its malformed lines, or its events sent and 200 {"acked":N} (503
 * for a retryable failure). Not async: the events go straight to ingest() and are not kept
 * while the acks come back (see EventIngest.ingest).
 */
export function answerEvents(
  ingest: EventIngest,
  body: Buffer,
  keyField: string,
  signal: AbortSignal,
): RouteResponse | Promise<RouteResponse> {
  let events: NdjsonEvents
  try {
    events = readNdjson(body, { keyField })
  } catch (err) {
    if (!(err instanceof NdjsonError)) throw err
    return {
      status: 400,
      body: {
        error: {
          code: err.code,
          message: err.message,
          lines: err.lines,
          malformed: err.malformed,
        },
      },
    }
  }
  return answer(ingest.ingest(events, { signal }))
}

/** 200 {"acked":N}, or 503 for a retryable failure. */
async function answer(acked: Promise<number>): Promise<RouteResponse> {
  try {
    return { status: 200, body: { acked: await acked } }
  } catch (err) {
    if (!(err instanceof ShoalError) || !err.retryable) throw err
    return {
      status: 503,
      headers: { 'retry-after': '1' },
      body: { error: { code: err.code, message: err.message, retryable: true } },
    }
  }
}

function badRequest(message: string): RouteResponse {
  return { status: 400, body: { error: { code: ErrorCodes.HTTP_BAD_REQUEST, message } } }
}
