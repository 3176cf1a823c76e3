/**
 * The dashboard's server side: public and streaming routes of the HTTP server, the history
 * ring, move tracking, reading workers' /status, and the dashboard's routes against a fake
 * cluster (real servers on loopback). The page itself is tested in a browser in
 * test/e2e/dashboard.test.ts.
 */
import { EventEmitter } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { describe, expect, it, onTestFinished } from 'vitest'
import { InvalidOptionError } from '../../../src/errors.ts'
import {
  createDashboard,
  type DashboardChangeEvent,
  type DashboardCluster,
  type DashboardClusterStatus,
  type DashboardState,
} from '../../../src/observability/dashboard.ts'
import { MoveTracker, RecentById, SampleRing } from '../../../src/observability/dashboard-history.ts'
import {
  WorkerPoller,
  parseWorkerStatus,
  reachableAddress,
} from '../../../src/observability/dashboard-workers.ts'
import {
  startHttpServer,
  type GetRoute,
  type HttpServer,
  type HttpServerOptions,
  type ResponseStream,
  type RouteHandler,
  type StreamRoute,
} from '../../../src/observability/http.ts'
import { createMetrics } from '../../../src/observability/metrics.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const TOKEN = 'dash-token'

async function start(o: Partial<HttpServerOptions> = {}): Promise<HttpServer> {
  const server = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    liveness: () => ({ ok: true }),
    readiness: () => ({ ok: true }),
    status: () => ({ role: 'test' }),
    registry: createMetrics('coordinator', { defaultMetrics: false }).registry,
    ...o,
  })
  onTestFinished(() => server.close())
  return server
}

const url = (s: HttpServer, path: string): string => `http://${s.address}${path}`
const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

/** Read an SSE response until `count` events arrived; returns their data parsed. */
async function readEvents(res: Response, count: number): Promise<unknown[]> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
  const out: unknown[] = []
  let buf = ''
  while (out.length < count) {
    const { value, done } = await reader.read()
    if (done) break
    buf += value
    let i
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i)
      buf = buf.slice(i + 2)
      const data = block
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trim())
        .join('\n')
      if (data !== '') out.push(JSON.parse(data))
    }
  }
  await reader.cancel()
  return out
}

describe('HTTP server: public and stream routes', () => {
  it('serves a public route without the token, and everything else still needs it', async () => {
    const page: GetRoute = { method: 'GET', public: true, handler: () => ({ body: 'page' }) }
    const data: RouteHandler = () => ({ body: { secret: 1 } })
    const s = await start({
      auth: { token: TOKEN },
      routes: new Map<string, RouteHandler | GetRoute>([
        ['/', page],
        ['/data', data],
      ]),
    })
    const open = await fetch(url(s, '/'))
    expect(open.status).toBe(200)
    expect(await open.text()).toBe('page')
    expect((await fetch(url(s, '/data'))).status).toBe(401)
    expect((await fetch(url(s, '/status'))).status).toBe(401)
    expect((await fetch(url(s, '/nothing'))).status).toBe(401)
    expect((await fetch(url(s, '/data'), { headers: bearer(TOKEN) })).status).toBe(200)
    // Public does not mean any method.
    expect((await fetch(url(s, '/'), { method: 'POST' })).status).toBe(405)
  })

  it('refuses a public prefix route', async () => {
    await expect(
      start({
        routes: new Map([['/assets/', { method: 'GET', public: true, handler: () => ({}) }]]),
      }),
    ).rejects.toThrow(InvalidOptionError)
  })

  it('streams: headers at once, writes as they come, the handler sees the client leave', async () => {
    let stream: ResponseStream | null = null
    const route: StreamRoute = {
      method: 'GET',
      headers: { 'content-type': 'text/event-stream' },
      stream: (_req, st) => {
        stream = st
        st.write('data: 1\n\n')
      },
    }
    const s = await start({ auth: { token: TOKEN }, routes: new Map([['/events', route]]) })
    expect((await fetch(url(s, '/events'))).status).toBe(401)
    const head = await fetch(url(s, '/events'), { method: 'HEAD', headers: bearer(TOKEN) })
    expect(head.status).toBe(200)
    expect(head.headers.get('content-type')).toBe('text/event-stream')

    const ac = new AbortController()
    const res = await fetch(url(s, '/events'), { headers: bearer(TOKEN), signal: ac.signal })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe('text/event-stream')
    expect(res.headers.get('cache-control')).toBe('no-store')
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
    expect((await reader.read()).value).toBe('data: 1\n\n')
    const st = await waitFor(() => stream, 'the stream handler')
    // No handler timeout applies to a stream: write again later.
    expect(st.write('data: 2\n\n')).toBe(true)
    expect((await reader.read()).value).toBe('data: 2\n\n')
    ac.abort()
    await waitFor(() => st.signal.aborted, 'the stream signal aborted when the client left')
    expect(st.write('late')).toBe(false)
  })

  it('ends open streams when the server closes', async () => {
    let stream: ResponseStream | null = null
    const s = await start({
      routes: new Map([['/events', { method: 'GET', stream: (_r, st) => (stream = st) }]]),
    })
    const res = await fetch(url(s, '/events'))
    const st = await waitFor(() => stream, 'the stream handler')
    const reading = res.text().catch(() => 'cut')
    await s.close()
    await waitFor(() => st.signal.aborted, 'the stream signal aborted when the server closed')
    await reading
  })
})

describe('dashboard history', () => {
  it('keeps the last samples and hands out those after a seq', () => {
    const ring = new SampleRing(3)
    const empty = { m: {}, sinkLag: null, sourceBacklog: null, deadLetters: null }
    expect(ring.since(0)).toEqual([])
    for (let t = 1; t <= 5; t++) ring.push({ t, ...empty })
    expect(ring.since(0).map((s) => s.t)).toEqual([3, 4, 5])
    expect(ring.since(4).map((s) => s.t)).toEqual([5])
    expect(ring.since(5)).toEqual([])
    // An old cursor (its samples dropped): everything kept.
    expect(ring.since(1).map((s) => s.seq)).toEqual([3, 4, 5])
    expect(() => new SampleRing(0)).toThrow(RangeError)
  })

  it('tracks moves after a baseline, and forgets them after keepMs', () => {
    const t = new MoveTracker({ keepMs: 1000 })
    expect(t.observe([null, null], [0, 0], 0)).toEqual([]) // nothing owned: no baseline yet
    expect(t.observe(['a', 'a'], [1, 1], 10)).toEqual([]) // baseline: not a move
    expect(t.observe(['a', 'b'], [1, 2], 20)).toEqual([
      { partition: 1, from: 'a', to: 'b', epoch: 2, at: 20 },
    ])
    expect(t.recent(500)).toHaveLength(1)
    expect(t.recent(1021)).toHaveLength(0)
  })

  it('keeps the last items by id', () => {
    const r = new RecentById<{ id: number }>(2)
    expect(r.add(null)).toBe(false)
    expect(r.add({ id: 1 })).toBe(true)
    expect(r.add({ id: 1 })).toBe(false)
    r.add({ id: 2 })
    r.add({ id: 3 })
    expect(r.list().map((x) => x.id)).toEqual([2, 3])
  })
})

describe("reading workers' /status", () => {
  it('dials a wildcard HTTP bind at the data address host', () => {
    expect(reachableAddress('10.0.0.5:9400', '10.0.0.5:7402')).toBe('10.0.0.5:9400')
    expect(reachableAddress('0.0.0.0:9400', '10.0.0.7:7402')).toBe('10.0.0.7:9400')
    expect(reachableAddress('[::]:9400', '[fd00::1]:7402')).toBe('[fd00::1]:9400')
    expect(reachableAddress('0.0.0.0:9400', '0.0.0.0:7402')).toBe('127.0.0.1:9400')
    expect(reachableAddress(null, '10.0.0.7:7402')).toBeNull()
  })

  it('takes what it knows from a /status body and ignores the rest', () => {
    const r = parseWorkerStatus(
      'w1',
      {
        deadLettered: 2,
        sources: [{ name: 'redis', state: 'reading', backlog: 5, deadLettered: 1, lastError: null }, 7],
        sinks: [{ name: 'pg', state: 'retrying', lag: 10, errors: 3, lastError: 'X: down', lastErrorAt: 9 }],
      },
      100,
    )
    expect(r.deadLettered).toBe(2)
    expect(r.sources).toEqual([expect.objectContaining({ member: 'w1', name: 'redis', backlog: 5, read: 0 })])
    expect(r.sinks).toEqual([
      expect.objectContaining({ name: 'pg', lag: 10, errors: 3, lastError: 'X: down' }),
    ])
    expect(parseWorkerStatus('w2', 'junk', 1)).toMatchObject({ sources: [], sinks: [], deadLettered: 0 })
  })

  it('sends the token, and notes new dead letters with their reason', async () => {
    let body: unknown = { deadLettered: 0, sources: [], sinks: [{ name: 'pg', deadLettered: 0 }] }
    const auth: (string | undefined)[] = []
    const worker = createServer((req, res) => {
      auth.push(req.headers.authorization)
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify(body))
    })
    await new Promise<void>((r) => worker.listen(0, '127.0.0.1', r))
    onTestFinished(() => new Promise<void>((r) => worker.close(() => r())))
    const port = (worker.address() as AddressInfo).port
    const poller = new WorkerPoller({
      targets: () => [{ id: 'w1', httpAddress: `127.0.0.1:${port}`, dataAddress: '127.0.0.1:1' }],
      token: TOKEN,
    })
    onTestFinished(() => poller.close())
    await poller.pollOnce()
    expect(auth).toEqual([`Bearer ${TOKEN}`])
    body = {
      deadLettered: 1,
      sources: [],
      sinks: [{ name: 'pg', deadLettered: 3, lastError: 'REJECTED: bad row' }],
    }
    await poller.pollOnce()
    expect(poller.notes()).toEqual([
      expect.objectContaining({ member: 'w1', where: 'processing', count: 1, reason: null }),
      expect.objectContaining({ member: 'w1', where: 'pg', count: 3, reason: 'REJECTED: bad row' }),
    ])
    expect(poller.reports()[0]).toMatchObject({ member: 'w1', error: null, deadLettered: 1 })
  })

  it('reports a worker it cannot read', async () => {
    const poller = new WorkerPoller({
      targets: () => [{ id: 'w1', httpAddress: '127.0.0.1:1', dataAddress: '127.0.0.1:1' }],
      timeoutMs: 500,
    })
    await poller.pollOnce()
    expect(poller.reports()[0]?.error).toMatch(/ECONNREFUSED/)
  })
})

class FakeCluster extends EventEmitter<Record<DashboardChangeEvent, []>> implements DashboardCluster {
  current: DashboardClusterStatus
  constructor() {
    super()
    this.current = {
      definition: { jobId: 'count', sources: [], sinks: [] },
      coordinator: { nodeId: 'coordinator', epoch: 1, ready: true },
      members: [
        {
          id: 'w1',
          state: 'alive',
          dataAddress: '127.0.0.1:1',
          httpAddress: null,
          capacity: 2,
          version: '0.1.0',
          partitions: 4,
          readyPartitions: 4,
          missedHeartbeats: 0,
          heartbeatAgeMs: 10,
          load: {
            queueDepth: 1,
            inFlight: 2,
            eventsPerSec: 300,
            rssBytes: 1e8,
            lag: 4,
            ackedPerSec: 290,
            backpressure: 0.25,
          },
          joinedAt: new Date().toISOString(),
        },
      ],
      assignment: { epoch: 1, owners: ['w1', 'w1', 'w1', 'w1'], epochs: [1, 1, 1, 1] },
      checkpoints: { intervalMs: 5000, inFlight: false, completed: 0, last: null },
    }
  }
  status(): DashboardClusterStatus {
    return this.current
  }
  partitionsReady(): boolean[] {
    return [true, true, false, true]
  }
}

describe('dashboard routes', () => {
  async function serve(auth: boolean): Promise<{ s: HttpServer; cluster: FakeCluster }> {
    const cluster = new FakeCluster()
    const dashboard = createDashboard({ cluster, auth, sampleIntervalMs: 100 })
    dashboard.start()
    onTestFinished(() => dashboard.close())
    const s = await start({ auth: auth ? { token: TOKEN } : undefined, routes: dashboard.routes })
    return { s, cluster }
  }

  it('serves the page, script and style without the token, with a strict CSP', async () => {
    const { s } = await serve(true)
    const page = await fetch(url(s, '/'))
    expect(page.status).toBe(200)
    expect(page.headers.get('content-type')).toContain('text/html')
    expect(page.headers.get('content-security-policy')).toContain("connect-src 'self'")
    const html = await page.text()
    expect(html).toContain('<meta name="shoal-auth" content="token" />')
    expect(html).not.toContain('%SHOAL_AUTH%')
    expect((await fetch(url(s, '/dashboard/app.js'))).headers.get('content-type')).toContain('javascript')
    expect((await fetch(url(s, '/dashboard/style.css'))).headers.get('content-type')).toContain('text/css')
    expect((await fetch(url(s, '/dashboard/state'))).status).toBe(401)
    expect((await fetch(url(s, '/dashboard/events'))).status).toBe(401)
  })

  it('answers the state with history, compact owners and partition readiness', async () => {
    const { s } = await serve(false)
    await new Promise((r) => setTimeout(r, 250))
    const state = (await (await fetch(url(s, '/dashboard/state'))).json()) as DashboardState
    expect(state.auth).toBe(false)
    expect(state.members.map((m) => m.id)).toEqual(['w1'])
    expect(state.partitions).toMatchObject({
      count: 4,
      ownerIds: ['w1'],
      owners: [0, 0, 0, 0],
      ready: [1, 1, 0, 1],
    })
    expect(state.historyReset).toBe(true)
    expect(state.history.length).toBeGreaterThanOrEqual(2)
    expect(state.history.at(-1)?.m.w1).toEqual([300, 4, 1, 2, 1e8, 290, 0.25])
  })

  it('streams the whole history first, then new samples, and pushes a change at once', async () => {
    const { s, cluster } = await serve(false)
    await new Promise((r) => setTimeout(r, 150))
    const res = await fetch(url(s, '/dashboard/events'))
    expect(res.headers.get('content-type')).toContain('text/event-stream')
    const reader = readEvents(res, 3)
    // A move: pushed within the debounce, not at the next sample.
    setTimeout(() => {
      cluster.current = {
        ...cluster.current,
        assignment: { epoch: 2, owners: ['w1', 'w1', 'w2', 'w1'], epochs: [1, 1, 2, 1] },
      }
      cluster.emit('assignment')
    }, 20)
    const [first, ...rest] = (await reader) as DashboardState[]
    expect(first?.historyReset).toBe(true)
    expect(first?.history.length).toBeGreaterThanOrEqual(1)
    for (const m of rest) expect(m.historyReset).toBe(false)
    const moved = rest.find((m) => m.partitions.moves.length > 0)
    expect(moved?.partitions.moves).toEqual([expect.objectContaining({ partition: 2, from: 'w1', to: 'w2' })])
  })
})
