/**
 * The coordinator's dashboard (docs/dashboard.md): a static page with its script and style
 * sheet, shipped in the package next to this module (./dashboard/), plus its data.
 *
 *   GET /                     the page (public: it holds no data; it asks for the token if needed)
 *   GET /dashboard/app.js     its script (public)
 *   GET /dashboard/style.css  its style sheet (public)
 *   GET /dashboard/state      the whole state as JSON, with the full history (token)
 *   GET /dashboard/events     Server-Sent Events: `event: state` messages, the first with the
 *                             full history, the next ones with the samples since (token)
 *
 * A state message goes out every `sampleIntervalMs` and within ~50 ms of a membership or
 * assignment change. The history is sampled every `sampleIntervalMs` from what the coordinator
 * already knows (heartbeat loads) whether or not anyone watches, so the charts show the last
 * minutes as soon as the page opens. Sources, sinks and dead letters come from the workers'
 * /status, read only while a dashboard is open (dashboard-workers.ts).
 */
import { readFileSync } from 'node:fs'
import type { GetRoute, HttpErrorLogger, RouteHandler, StreamRoute } from './http.ts'
import {
  MoveTracker,
  RecentById,
  SampleRing,
  type HistorySample,
  type MemberFigures,
  type PartitionMove,
} from './dashboard-history.ts'
import {
  WorkerPoller,
  type DeadLetterNote,
  type SinkSummary,
  type SourceSummary,
  type WorkerReport,
} from './dashboard-workers.ts'

/** The part of a heartbeat load the dashboard shows (structurally the protocol's HeartbeatLoad). */
export interface DashboardLoad {
  readonly queueDepth: number
  readonly inFlight: number
  readonly eventsPerSec: number
  readonly rssBytes: number
  readonly lag: number
  readonly ackedPerSec?: number | undefined
  readonly backpressure?: number | undefined
}

export interface DashboardMember {
  readonly id: string
  readonly state: string
  readonly dataAddress: string
  readonly httpAddress: string | null
  readonly capacity: number
  readonly version: string
  readonly partitions: number
  readonly readyPartitions: number
  readonly missedHeartbeats: number
  readonly heartbeatAgeMs: number
  readonly load: DashboardLoad | null
  readonly joinedAt: string
}

export interface DashboardCheckpoint {
  readonly id: number
  readonly partitions: number
  readonly assigned: number
  readonly keys: number
  readonly durationMs: number
  readonly full: boolean
  readonly failedMembers: readonly string[]
  readonly finishedAt: string
}

/** The part of the coordinator's ClusterStatus the dashboard reads (structural, like metrics.ts). */
export interface DashboardClusterStatus {
  readonly definition: {
    readonly jobId: string | null
    readonly sources: readonly string[] | null
    readonly sinks: readonly string[] | null
  } | null
  /** Shown as it is (node id, address, epoch, readiness, and the leader and standbys once replicated). */
  readonly coordinator: Readonly<Record<string, unknown>>
  readonly members: readonly DashboardMember[]
  readonly assignment: {
    readonly epoch: number
    readonly owners: readonly (string | null)[]
    readonly epochs: readonly number[]
  }
  readonly checkpoints: {
    readonly intervalMs: number
    readonly inFlight: boolean
    readonly completed: number
    readonly last: DashboardCheckpoint | null
  }
}

/** Coordinator events after which the dashboard pushes a state message at once. */
export type DashboardChangeEvent =
  'assignment' | 'member-joined' | 'member-suspect' | 'member-dead' | 'member-left'

/** What the dashboard watches (a Coordinator fits). */
export interface DashboardCluster {
  status(): DashboardClusterStatus
  /** Per partition: whether its owner reported it ready (restored). */
  partitionsReady(): readonly boolean[]
  on(event: DashboardChangeEvent, listener: () => void): unknown
  off(event: DashboardChangeEvent, listener: () => void): unknown
}

export interface DashboardOptions {
  cluster: DashboardCluster
  /** The HTTP server requires a token: the page asks for it. @default false */
  auth?: boolean
  /** How the coordinator reads the workers' /status (sources, sinks, dead letters). */
  workers?: {
    token?: string | undefined
    /** Workers serve HTTPS; `ca` verifies their certificates. */
    tls?: { ca?: Buffer | string | undefined } | undefined
    /** @default 2000 */
    pollIntervalMs?: number
  }
  /** @default 1000 */
  sampleIntervalMs?: number
  /** Samples kept. @default 600 (10 minutes at 1 s) */
  historySamples?: number
  /** How long a moved partition stays highlighted. @default 30000 */
  moveHighlightMs?: number
  /** Where index.html, app.js and style.css are. @default ./dashboard/ next to this module */
  assetsDir?: URL
  logger?: HttpErrorLogger
}

export interface Dashboard {
  /** Add these to the HTTP server's routes. */
  readonly routes: ReadonlyMap<string, RouteHandler | GetRoute | StreamRoute>
  /** Start sampling (idempotent). */
  start(): void
  /** Stop sampling and end every open stream. */
  close(): void
}

export interface DashboardState {
  version: 1
  /** The coordinator's wall clock (ms since the epoch) when this was built. */
  now: number
  auth: boolean
  sampleIntervalMs: number
  historySamples: number
  moveHighlightMs: number
  coordinator: Readonly<Record<string, unknown>>
  definition: DashboardClusterStatus['definition']
  members: DashboardMember[]
  partitions: {
    count: number
    epoch: number
    /** The owners, each once, in order of first partition. */
    ownerIds: string[]
    /** Per partition: an index into ownerIds, -1 for none (compact: partitions outnumber workers). */
    owners: number[]
    epochs: number[]
    /** 1: the owner reported it ready; 0: restoring (or unowned). */
    ready: (0 | 1)[]
    /** Moves in the last moveHighlightMs, newest last. */
    moves: PartitionMove[]
  }
  checkpoints: DashboardClusterStatus['checkpoints'] & { recent: DashboardCheckpoint[] }
  /** From the workers' /status; empty until a dashboard has been open for a moment. */
  workers: WorkerReport[]
  sources: SourceSummary[]
  sinks: SinkSummary[]
  deadLetters: { total: number; processing: number; sources: number; sinks: number; recent: DeadLetterNote[] }
  /** Samples after the client's last one (all of them when `historyReset`). */
  history: HistorySample[]
  historyReset: boolean
}

const ASSETS = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/dashboard/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
} as const

/** Everything the page loads comes from this origin; nothing runs inline. */
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ')

const CHANGE_EVENTS: readonly DashboardChangeEvent[] = [
  'assignment',
  'member-joined',
  'member-suspect',
  'member-dead',
  'member-left',
]

/** A stream whose client has this much unsent is dropped (it reconnects and starts over). */
const MAX_BUFFERED_BYTES = 8 * 1024 * 1024
/** A dashboard counts as open this long after its last request or message. */
const WATCH_MS = 15_000
const WORKER_REPORT_FRESH_MS = 10_000

interface Client {
  cursor: number
  write(chunk: string): boolean
  readonly bufferedBytes: number
  end(): void
}

export function createDashboard(options: DashboardOptions): Dashboard {
  const cluster = options.cluster
  const auth = options.auth === true
  const sampleIntervalMs = options.sampleIntervalMs ?? 1000
  const historySamples = options.historySamples ?? 600
  const moveHighlightMs = options.moveHighlightMs ?? 30_000
  const assetsDir = options.assetsDir ?? new URL('./dashboard/', import.meta.url)
  const ring = new SampleRing(historySamples)
  const moves = new MoveTracker({ keepMs: moveHighlightMs })
  const checkpoints = new RecentById<DashboardCheckpoint>(20)
  const clients = new Set<Client>()
  const poller = new WorkerPoller({
    targets: () =>
      cluster
        .status()
        .members.filter((m) => m.state === 'alive' || m.state === 'suspect')
        .map((m) => ({ id: m.id, httpAddress: m.httpAddress, dataAddress: m.dataAddress })),
    token: options.workers?.token,
    tls: options.workers?.tls,
    intervalMs: options.workers?.pollIntervalMs ?? 2000,
  })

  const assets = new Map<string, { body: string; type: string } | { error: string }>()
  for (const [path, { file, type }] of Object.entries(ASSETS)) {
    const url = new URL(file, assetsDir)
    try {
      let body = readFileSync(url, 'utf8')
      if (file === 'index.html') body = body.replace('%SHOAL_AUTH%', auth ? 'token' : 'none')
      assets.set(path, { body, type })
    } catch (err) {
      const error = `dashboard file ${url.pathname} is missing (${(err as NodeJS.ErrnoException).code ?? String(err)}): the package is incomplete; npm run build copies src/observability/dashboard/`
      options.logger?.error({ err }, error)
      assets.set(path, { error })
    }
  }

  const workersView = (
    live: ReadonlySet<string>,
  ): Pick<DashboardState, 'workers' | 'sources' | 'sinks' | 'deadLetters'> & { fresh: boolean } => {
    const now = Date.now()
    const workers = poller.reports().filter((r) => live.has(r.member))
    const sources = workers.flatMap((r) => r.sources)
    const sinks = workers.flatMap((r) => r.sinks)
    const processing = workers.reduce((n, r) => n + r.deadLettered, 0)
    const fromSources = sources.reduce((n, s) => n + s.deadLettered, 0)
    const fromSinks = sinks.reduce((n, s) => n + s.deadLettered, 0)
    return {
      fresh: workers.some((r) => r.polledAt !== null && now - r.polledAt < WORKER_REPORT_FRESH_MS),
      workers,
      sources,
      sinks,
      deadLetters: {
        total: processing + fromSources + fromSinks,
        processing,
        sources: fromSources,
        sinks: fromSinks,
        recent: poller.notes(),
      },
    }
  }

  const liveIds = (s: DashboardClusterStatus): Set<string> =>
    new Set(s.members.filter((m) => m.state === 'alive' || m.state === 'suspect').map((m) => m.id))

  /** Everything but the history. */
  const build = (): Omit<DashboardState, 'history' | 'historyReset'> => {
    const s = cluster.status()
    const now = Date.now()
    const ready = cluster.partitionsReady()
    moves.observe(s.assignment.owners, s.assignment.epochs, now)
    checkpoints.add(s.checkpoints.last)
    const { fresh: _fresh, ...workers } = workersView(liveIds(s))
    poller.retain(new Set(s.members.map((m) => m.id)))
    return {
      version: 1,
      now,
      auth,
      sampleIntervalMs,
      historySamples,
      moveHighlightMs,
      coordinator: s.coordinator,
      definition: s.definition,
      members: [...s.members],
      partitions: {
        count: s.assignment.owners.length,
        epoch: s.assignment.epoch,
        ...compactOwners(s.assignment.owners),
        epochs: [...s.assignment.epochs],
        ready: s.assignment.owners.map((_o, p) => (ready[p] === true ? 1 : 0)),
        moves: moves.recent(now),
      },
      checkpoints: { ...s.checkpoints, recent: checkpoints.list() },
      ...workers,
    }
  }

  const sample = (): void => {
    const s = cluster.status()
    const now = Date.now()
    moves.observe(s.assignment.owners, s.assignment.epochs, now)
    checkpoints.add(s.checkpoints.last)
    const m: Record<string, MemberFigures> = {}
    for (const x of s.members) {
      if ((x.state !== 'alive' && x.state !== 'suspect') || x.load === null) continue
      const l = x.load
      m[x.id] = [
        l.eventsPerSec,
        l.lag,
        l.queueDepth,
        l.inFlight,
        l.rssBytes,
        l.ackedPerSec ?? null,
        l.backpressure ?? null,
      ]
    }
    const w = workersView(liveIds(s))
    const backlogs = w.sources.map((x) => x.backlog).filter((b): b is number => b !== null)
    ring.push({
      t: now,
      m,
      sinkLag: w.fresh && w.sinks.length > 0 ? w.sinks.reduce((n, x) => n + x.lag, 0) : null,
      sourceBacklog: w.fresh && backlogs.length > 0 ? backlogs.reduce((n, b) => n + b, 0) : null,
      deadLetters: w.fresh ? w.deadLetters.total : null,
    })
  }

  const broadcast = (): void => {
    if (clients.size === 0) return
    poller.watch(WATCH_MS)
    let base: Omit<DashboardState, 'history' | 'historyReset'>
    try {
      base = build()
    } catch (err) {
      options.logger?.error({ err }, 'dashboard state failed')
      return
    }
    const byCursor = new Map<number, string>()
    for (const c of clients) {
      if (c.bufferedBytes > MAX_BUFFERED_BYTES) {
        clients.delete(c)
        c.end()
        continue
      }
      let chunk = byCursor.get(c.cursor)
      if (chunk === undefined) {
        const history = ring.since(c.cursor)
        const state: DashboardState = { ...base, history, historyReset: c.cursor === 0 }
        chunk = `event: state\ndata: ${JSON.stringify(state)}\n\n`
        byCursor.set(c.cursor, chunk)
      }
      c.write(chunk)
      c.cursor = ring.lastSeq
    }
  }

  let changeTimer: NodeJS.Timeout | null = null
  const onChange = (): void => {
    if (changeTimer !== null || clients.size === 0) return
    changeTimer = setTimeout(() => {
      changeTimer = null
      broadcast()
    }, 50)
    changeTimer.unref()
  }

  let sampler: NodeJS.Timeout | null = null
  const tick = (): void => {
    try {
      sample()
    } catch (err) {
      options.logger?.error({ err }, 'dashboard sample failed')
    }
    broadcast()
  }

  const asset = (path: keyof typeof ASSETS): GetRoute => ({
    method: 'GET',
    public: true,
    handler: () => {
      const a = assets.get(path)
      if (a === undefined || 'error' in a) {
        return { status: 503, body: a?.error ?? 'dashboard unavailable' }
      }
      return {
        body: a.body,
        headers: {
          'content-type': a.type,
          'cache-control': 'no-cache',
          'x-content-type-options': 'nosniff',
          'referrer-policy': 'no-referrer',
          ...(path === '/' ? { 'content-security-policy': CSP, 'x-frame-options': 'DENY' } : {}),
        },
      }
    },
  })

  const routes = new Map<string, RouteHandler | GetRoute | StreamRoute>([
    ['/', asset('/')],
    ['/dashboard/app.js', asset('/dashboard/app.js')],
    ['/dashboard/style.css', asset('/dashboard/style.css')],
    [
      '/dashboard/state',
      () => {
        poller.watch(WATCH_MS)
        const state: DashboardState = { ...build(), history: ring.since(0), historyReset: true }
        return { body: state }
      },
    ],
    [
      '/dashboard/events',
      {
        method: 'GET',
        headers: { 'content-type': 'text/event-stream; charset=utf-8' },
        stream: (_req, stream) => {
          const client: Client = {
            cursor: 0,
            write: (chunk) => stream.write(chunk),
            get bufferedBytes() {
              return stream.bufferedBytes
            },
            end: () => stream.end(),
          }
          clients.add(client)
          stream.signal.addEventListener('abort', () => clients.delete(client), { once: true })
          // The first message at once, with the whole history.
          poller.watch(WATCH_MS)
          setImmediate(broadcastTo, client)
        },
      },
    ],
  ])

  const broadcastTo = (client: Client): void => {
    if (!clients.has(client)) return
    try {
      const state: DashboardState = { ...build(), history: ring.since(0), historyReset: true }
      client.write(`event: state\ndata: ${JSON.stringify(state)}\n\n`)
      client.cursor = ring.lastSeq
    } catch (err) {
      options.logger?.error({ err }, 'dashboard state failed')
    }
  }

  let started = false
  return {
    routes,
    start() {
      if (started) return
      started = true
      for (const e of CHANGE_EVENTS) cluster.on(e, onChange)
      tick()
      sampler = setInterval(tick, sampleIntervalMs)
      sampler.unref()
    },
    close() {
      if (sampler !== null) clearInterval(sampler)
      sampler = null
      if (changeTimer !== null) clearTimeout(changeTimer)
      changeTimer = null
      if (started) for (const e of CHANGE_EVENTS) cluster.off(e, onChange)
      started = false
      poller.close()
      for (const c of clients) c.end()
      clients.clear()
    },
  }
}

function compactOwners(owners: readonly (string | null)[]): { ownerIds: string[]; owners: number[] } {
  const ids = new Map<string, number>()
  const out = owners.map((o) => {
    if (o === null) return -1
    let i = ids.get(o)
    if (i === undefined) ids.set(o, (i = ids.size))
    return i
  })
  return { ownerIds: [...ids.keys()], owners: out }
}
