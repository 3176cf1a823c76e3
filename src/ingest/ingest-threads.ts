/**
 * POST /events on a worker thread of the coordinator (IngestThreads): the coordinator's main
 * thread reads the request and hands the body over; the thread checks it, sends its events with
 * its own ShoalClient (an EventIngest, exactly as in-process) and hands back the answer.
 *
 * Why a thread: checking and encoding a body is ~1 µs of CPU per event, all synchronous, and
 * the main thread is also where the coordinator tracks heartbeats, membership and checkpoints.
 * A 64 MiB body (the largest accepted) took the main thread ~1 s in one turn, and sustained
 * ingest kept it saturated, with every heartbeat waiting behind the bodies. On the thread the
 * main thread's cost is reading the request and copying the body (docs/benchmarks.md, "POST
 * /events on a thread").
 *
 * The thread is started on the first request and restarted after a crash; a crash answers the
 * requests it had with 503 (retryable, some events may have been applied, as any 503 of
 * POST /events). Each start has its own producer id (base + `.t<n>`), so a restarted thread
 * never reuses sequences. The routing table and readiness travel with each request (the
 * thread refuses a body for an unowned partition at once, as the in-process EventIngest does).
 */
import { Worker } from 'node:worker_threads'
import { ErrorCodes } from '../errors.ts'
import type { RouteResponse } from '../observability/http.ts'
import type { RoutingFields } from '../protocol/control.ts'
import type { TransportName, TransportOptions } from '../transport/transport.ts'
import { DEFAULT_INGEST_TIMEOUT_MS, type EventsHandler } from './http-ingest.ts'

/** The thread's entry: TypeScript sources register tsx first (see the loader). */
const THREAD_FILE = new URL(
  import.meta.url.endsWith('.ts') ? './ingest-thread-loader.mjs' : './ingest-thread.js',
  import.meta.url,
)

/**
 * The thread's young generation (V8's maxYoungGenerationSizeMb, about 3 semi-spaces): 4 MiB
 * semi-spaces, as the processing threads'. 16 MiB ones (48) made no difference to POST /events
 * throughput (`SEND_CASES=http npm run bench -- send --runs 2`, alternated: 762k/758k against
 * 784k/758k events/s) and cost memory.
 */
const YOUNG_GENERATION_MB = 12

export interface IngestThreadData {
  coordinator: string
  transport: TransportName
  transportOptions: TransportOptions
  producerId: string
  timeoutMs: number
}

export type ToIngestThread =
  | {
      type: 'request'
      id: number
      body: Uint8Array
      keyField: string
      ready: boolean
      routing: RoutingFields
    }
  | { type: 'abort'; id: number }
  | { type: 'close' }

export type FromIngestThread =
  | { type: 'response'; id: number; response: RouteResponse }
  | { type: 'failed'; id: number; message: string }
  | { type: 'log'; obj: Record<string, unknown>; msg: string | undefined }

export interface IngestThreadsOptions {
  /** The coordinator's own transport address, which the thread's client dials. */
  coordinator: string
  transport: TransportName
  /** For the thread's client (structured-cloned: plain data and buffers). */
  transportOptions: TransportOptions
  routing(): RoutingFields
  ready?(): boolean
  /** Base producer id; each start of the thread adds `.t<n>`. */
  producerId: string
  /** @default 30000 */
  timeoutMs?: number
  /** Threads, each with its own client; requests go round-robin. @default 1 */
  threads?: number
  /** The thread's module (tests). @default ingest-thread */
  threadFile?: URL
  logger: { warn(obj: object, msg?: string): void; error(obj: object, msg?: string): void }
}

interface Pending {
  /** The thread that has the request. */
  worker: Worker
  resolve(r: RouteResponse): void
}

export class IngestThreads implements EventsHandler {
  readonly timeoutMs: number
  readonly #opts: IngestThreadsOptions
  readonly #workers: (Worker | null)[]
  #next = 0
  #starts = 0
  #ids = 0
  readonly #pending = new Map<number, Pending>()
  #closed = false

  constructor(options: IngestThreadsOptions) {
    this.#opts = options
    this.timeoutMs = options.timeoutMs ?? DEFAULT_INGEST_TIMEOUT_MS
    this.#workers = Array.from({ length: options.threads ?? 1 }, () => null)
  }

  /** Started threads (restarts included). */
  get starts(): number {
    return this.#starts
  }

  handle(body: Buffer, keyField: string, signal: AbortSignal): Promise<RouteResponse> {
    if (this.#closed)
      return Promise.resolve(unavailable(ErrorCodes.CLOSED, 'the coordinator is shutting down'))
    const slot = this.#next
    this.#next = (slot + 1) % this.#workers.length
    const worker = this.#thread(slot)
    const id = ++this.#ids
    return new Promise<RouteResponse>((resolve) => {
      const onAbort = (): void => worker.postMessage({ type: 'abort', id } satisfies ToIngestThread)
      signal.addEventListener('abort', onAbort, { once: true })
      this.#pending.set(id, {
        worker,
        resolve: (r) => {
          signal.removeEventListener('abort', onAbort)
          resolve(r)
        },
      })
      const message: ToIngestThread = {
        type: 'request',
        id,
        body,
        keyField,
        ready: this.#opts.ready?.() ?? true,
        routing: this.#opts.routing(),
      }
      // A body that is a whole ArrayBuffer of its own (a concatenated request) moves to the
      // thread; a slice of a shared one (a small body read in one chunk) is copied.
      const buf = body.buffer
      const own = buf instanceof ArrayBuffer && body.byteOffset === 0 && body.byteLength === buf.byteLength
      worker.postMessage(message, own ? [buf] : [])
    })
  }

  /** Let the threads answer what they have (503) and close their clients, then stop them. */
  async close(timeoutMs = 10_000): Promise<void> {
    this.#closed = true
    await Promise.all(
      this.#workers.map(async (worker) => {
        if (worker === null) return
        const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()))
        worker.postMessage({ type: 'close' } satisfies ToIngestThread)
        let timer: NodeJS.Timeout | undefined
        const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), timeoutMs)))
        if ((await Promise.race([exited, late])) === 'late') await worker.terminate()
        clearTimeout(timer)
      }),
    )
  }

  #thread(slot: number): Worker {
    const running = this.#workers[slot]
    if (running != null) return running
    const n = this.#starts++
    const data: IngestThreadData = {
      coordinator: this.#opts.coordinator,
      transport: this.#opts.transport,
      transportOptions: this.#opts.transportOptions,
      producerId: `${this.#opts.producerId}.t${n}`,
      timeoutMs: this.timeoutMs,
    }
    const worker = new Worker(this.#opts.threadFile ?? THREAD_FILE, {
      workerData: data,
      resourceLimits: { maxYoungGenerationSizeMb: YOUNG_GENERATION_MB },
    })
    // The HTTP server keeps the process alive; a thread waiting for requests does not.
    worker.unref()
    worker.on('message', (m: FromIngestThread) => this.#onMessage(m))
    worker.on('error', (err) => this.#opts.logger.error({ err }, 'POST /events thread failed'))
    worker.on('exit', (code) => {
      if (this.#workers[slot] === worker) this.#workers[slot] = null
      const mine = [...this.#pending].filter(([, p]) => p.worker === worker)
      if (mine.length === 0) return
      if (!this.#closed)
        this.#opts.logger.error({ code }, 'POST /events thread stopped with requests waiting')
      const r = unavailable(
        ErrorCodes.INTERNAL,
        'the ingest thread stopped; some events may have been applied, so a retry may apply them twice',
      )
      for (const [id, p] of mine) {
        this.#pending.delete(id)
        p.resolve(r)
      }
    })
    this.#workers[slot] = worker
    return worker
  }

  #onMessage(m: FromIngestThread): void {
    switch (m.type) {
      case 'response':
      case 'failed': {
        const p = this.#pending.get(m.id)
        if (p === undefined) return
        this.#pending.delete(m.id)
        p.resolve(
          m.type === 'response'
            ? m.response
            : { status: 500, body: { error: { code: ErrorCodes.INTERNAL, message: m.message } } },
        )
        return
      }
      case 'log':
        this.#opts.logger.warn(m.obj, m.msg)
    }
  }
}

function unavailable(code: string, message: string): RouteResponse {
  return {
    status: 503,
    headers: { 'retry-after': '1' },
    body: { error: { code, message, retryable: true } },
  }
}
