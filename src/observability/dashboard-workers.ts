/**
 * Sources, sinks and dead letters for the dashboard, read from the workers' own `GET /status`.
 *
 * Heartbeats carry only the worker's processing load; a worker's sources and sinks are in its
 * /status. The coordinator reads those only while a dashboard is open (someone streamed or
 * fetched the dashboard's state in the last `watchMs`), every `intervalMs`, one small request
 * per live worker: no load at all when nobody looks. See docs/dashboard.md for why this is a
 * poll and not a heartbeat field.
 */
import { request as httpRequest, type RequestOptions } from 'node:http'
import { request as httpsRequest } from 'node:https'
import net from 'node:net'

export interface SourceSummary {
  member: string
  name: string
  state: string
  read: number
  acked: number
  deadLettered: number
  redelivered: number
  backlog: number | null
  inFlight: number
  errors: number
  lastError: string | null
}

export interface SinkSummary {
  member: string
  name: string
  state: string
  lag: number
  written: number
  errors: number
  deadLettered: number
  lastError: string | null
  lastErrorAt: number | null
}

export interface DeadLetterNote {
  /** Wall clock when the coordinator noticed (ms since the epoch). */
  at: number
  member: string
  /** The source or sink, or 'processing' for events the job refused. */
  where: string
  count: number
  /** The last error the source or sink reported, when it has one. */
  reason: string | null
}

export interface WorkerReport {
  member: string
  /** Wall clock of the last successful read; null before the first. */
  polledAt: number | null
  /** Why the last read failed; null when it worked. */
  error: string | null
  /** Events the worker's job refused for good (the data plane's dead letters). */
  deadLettered: number
  sources: SourceSummary[]
  sinks: SinkSummary[]
}

export interface WorkerTarget {
  id: string
  httpAddress: string | null
  dataAddress: string
}

export interface WorkerPollerOptions {
  /** The live workers to read now. */
  targets(): WorkerTarget[]
  /** Sent as `Authorization: Bearer` (the cluster token). */
  token?: string | undefined
  /** Workers serve HTTPS (the cluster's certificates); `ca` verifies them. */
  tls?: { ca?: Buffer | string | undefined } | undefined
  /** @default 2000 */
  intervalMs?: number
  /** @default 1500 */
  timeoutMs?: number
  /** Largest /status body read. @default 1 MiB */
  maxBytes?: number
  now?: () => number
}

const MAX_NOTES = 20

export class WorkerPoller {
  readonly #o: WorkerPollerOptions
  readonly #reports = new Map<string, WorkerReport>()
  #notes: DeadLetterNote[] = []
  #timer: NodeJS.Timeout | null = null
  #closed = false
  #watchedUntil = 0
  #polling: Promise<void> | null = null

  constructor(options: WorkerPollerOptions) {
    this.#o = options
  }

  /** Keep polling for `ms` more (a dashboard is open); starts at once if idle. */
  watch(ms: number): void {
    const now = Date.now()
    this.#watchedUntil = Math.max(this.#watchedUntil, now + ms)
    if (this.#timer === null && this.#polling === null && !this.#closed) this.#schedule(0)
  }

  reports(): WorkerReport[] {
    return [...this.#reports.values()].sort((a, b) =>
      a.member < b.member ? -1 : a.member > b.member ? 1 : 0,
    )
  }

  notes(): DeadLetterNote[] {
    return [...this.#notes]
  }

  /** Forget workers no longer listed. */
  retain(ids: ReadonlySet<string>): void {
    for (const id of this.#reports.keys()) if (!ids.has(id)) this.#reports.delete(id)
  }

  close(): void {
    this.#closed = true
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
  }

  /** One round now (tests); resolves when every worker answered or timed out. */
  pollOnce(): Promise<void> {
    this.#polling ??= this.#round().finally(() => {
      this.#polling = null
    })
    return this.#polling
  }

  #schedule(delayMs: number): void {
    this.#timer = setTimeout(() => {
      this.#timer = null
      void this.pollOnce().then(() => {
        if (!this.#closed && Date.now() < this.#watchedUntil) this.#schedule(this.#o.intervalMs ?? 2000)
      })
    }, delayMs)
    this.#timer.unref()
  }

  async #round(): Promise<void> {
    const targets = this.#o.targets()
    await Promise.all(targets.map((t) => this.#pollOne(t)))
  }

  async #pollOne(t: WorkerTarget): Promise<void> {
    const now = this.#o.now ?? Date.now
    const previous = this.#reports.get(t.id)
    const address = reachableAddress(t.httpAddress, t.dataAddress)
    if (address === null) return
    try {
      const body = await this.#get(address)
      const report = parseWorkerStatus(t.id, body, now())
      if (previous !== undefined) this.#noteDeadLetters(previous, report, now())
      this.#reports.set(t.id, report)
    } catch (err) {
      this.#reports.set(t.id, {
        ...(previous ?? { member: t.id, polledAt: null, deadLettered: 0, sources: [], sinks: [] }),
        error: err instanceof Error ? err.message : String(err),
      })
    }
  }

  #noteDeadLetters(before: WorkerReport, after: WorkerReport, at: number): void {
    const add = (where: string, count: number, reason: string | null): void => {
      if (count <= 0) return
      this.#notes.push({ at, member: after.member, where, count, reason })
      if (this.#notes.length > MAX_NOTES) this.#notes.splice(0, this.#notes.length - MAX_NOTES)
    }
    add('processing', after.deadLettered - before.deadLettered, null)
    for (const s of after.sources) {
      const old = before.sources.find((x) => x.name === s.name)
      add(s.name, s.deadLettered - (old?.deadLettered ?? 0), s.lastError)
    }
    for (const s of after.sinks) {
      const old = before.sinks.find((x) => x.name === s.name)
      add(s.name, s.deadLettered - (old?.deadLettered ?? 0), s.lastError)
    }
  }

  #get(address: string): Promise<unknown> {
    const timeoutMs = this.#o.timeoutMs ?? 1500
    const maxBytes = this.#o.maxBytes ?? 1024 * 1024
    const https = this.#o.tls !== undefined
    const { host, port } = splitHostPort(address)
    const options: RequestOptions & { ca?: Buffer | string } = {
      host,
      port,
      path: '/status',
      method: 'GET',
      headers: {
        accept: 'application/json',
        ...(this.#o.token === undefined ? {} : { authorization: `Bearer ${this.#o.token}` }),
      },
      timeout: timeoutMs,
      ...(https && this.#o.tls?.ca !== undefined ? { ca: this.#o.tls.ca } : {}),
    }
    return new Promise<unknown>((resolve, reject) => {
      const req = (https ? httpsRequest : httpRequest)(options, (res) => {
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (c: Buffer) => {
          size += c.length
          if (size > maxBytes) {
            req.destroy(new Error(`/status of ${address} is larger than ${maxBytes} bytes`))
            return
          }
          chunks.push(c)
        })
        res.on('end', () => {
          if (res.statusCode !== 200) {
            reject(new Error(`GET ${address}/status answered ${String(res.statusCode)}`))
            return
          }
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')))
          } catch (err) {
            reject(err instanceof Error ? err : new Error(String(err)))
          }
        })
        res.on('error', reject)
      })
      req.on('timeout', () => req.destroy(new Error(`GET ${address}/status took over ${timeoutMs} ms`)))
      req.on('error', reject)
      req.end()
    })
  }
}

/**
 * The worker's HTTP address as the coordinator can dial it: a wildcard bind (0.0.0.0, ::) is
 * replaced by the host of its data address. null when it has no HTTP address.
 */
export function reachableAddress(httpAddress: string | null, dataAddress: string): string | null {
  if (httpAddress === null || httpAddress === '') return null
  const { host, port } = splitHostPort(httpAddress)
  if (host !== '' && host !== '0.0.0.0' && host !== '::') return httpAddress
  const dataHost = splitHostPort(dataAddress).host
  const h = dataHost === '' || dataHost === '0.0.0.0' || dataHost === '::' ? '127.0.0.1' : dataHost
  return net.isIPv6(h) ? `[${h}]:${port}` : `${h}:${port}`
}

function splitHostPort(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':')
  const host = (i < 0 ? address : address.slice(0, i)).replace(/^\[|\]$/g, '')
  return { host, port: i < 0 ? 0 : Number(address.slice(i + 1)) }
}

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0)
const numOrNull = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null)
const str = (v: unknown, fallback = ''): string => (typeof v === 'string' ? v : fallback)
const strOrNull = (v: unknown): string | null => (typeof v === 'string' ? v : null)
const list = (v: unknown): Record<string, unknown>[] =>
  Array.isArray(v)
    ? v.filter((x): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x))
    : []

/** The dashboard's view of a worker's /status body (anything missing counts as zero or empty). */
export function parseWorkerStatus(member: string, body: unknown, now: number): WorkerReport {
  const o = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {}
  return {
    member,
    polledAt: now,
    error: null,
    deadLettered: num(o.deadLettered),
    sources: list(o.sources).map((s) => ({
      member,
      name: str(s.name, '?'),
      state: str(s.state, '?'),
      read: num(s.read),
      acked: num(s.acked),
      deadLettered: num(s.deadLettered),
      redelivered: num(s.redelivered),
      backlog: numOrNull(s.backlog),
      inFlight: num(s.inFlight),
      errors: num(s.errors),
      lastError: strOrNull(s.lastError),
    })),
    sinks: list(o.sinks).map((s) => ({
      member,
      name: str(s.name, '?'),
      state: str(s.state, '?'),
      lag: num(s.lag),
      written: num(s.written),
      errors: num(s.errors),
      deadLettered: num(s.deadLettered),
      lastError: strOrNull(s.lastError),
      lastErrorAt: numOrNull(s.lastErrorAt),
    })),
  }
}
