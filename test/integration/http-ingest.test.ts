/**
 * POST /events: NDJSON into the cluster over HTTP. An in-process cluster (memory transport,
 * real piscina threads, the count job) behind a real HTTP server wired as `shoal coordinator`
 * wires it, and a spawned coordinator with a token for the command-line wiring.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { request as httpsRequest } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../src/client/client.ts'
import { Coordinator } from '../../src/coordinator/coordinator.ts'
import { ErrorCodes } from '../../src/errors.ts'
import { EventIngest, eventsRoute } from '../../src/ingest/http-ingest.ts'
import { startHttpServer, type HttpServer } from '../../src/observability/http.ts'
import { createMetrics } from '../../src/observability/metrics.ts'
import { createTcpTransport } from '../../src/transport/tcp/tcp-transport.ts'
import { createMemoryTransport } from '../../src/transport/memory/memory-transport.ts'
import { createWorkerNode, type WorkerNode } from '../../src/worker/node.ts'
import { testPki } from '../helpers/certs.ts'
import { killAll, startShoal, type ShoalProcess } from '../helpers/processes.ts'
import { expectExactState, type Totals } from '../helpers/totals.ts'
import { waitFor } from '../helpers/wait-for.ts'

const logger = pino({ level: 'silent' })
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
  await killAll()
})
let port = 7000

interface Cluster {
  c: Coordinator
  nodes: WorkerNode[]
  http: HttpServer
  url: string
  ingest: EventIngest
}

/** A coordinator with its HTTP port and `workers` workers, every partition owned and ready. */
async function cluster(workers: number, o: { timeoutMs?: number } = {}): Promise<Cluster> {
  const c = new Coordinator({
    transport: createMemoryTransport({ nodeId: 'coordinator', role: 'coordinator' }),
    listen: { host: 'ingest', port: port++ },
    partitions: 32,
    heartbeatIntervalMs: 50,
    logger,
  })
  await c.start()
  cleanup.push(() => c.stop({ timeoutMs: 200 }))
  const ingest = new EventIngest({
    connect: (opts) =>
      ShoalClient.connect({
        coordinator: c.address,
        transport: createMemoryTransport({ nodeId: 'coordinator-http-ingest', role: 'client' }),
        ...opts,
      }),
    routing: () => c.routing(),
    ready: () => c.readiness().ok,
    timeoutMs: o.timeoutMs,
  })
  cleanup.push(() => ingest.close())
  const http = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    liveness: () => ({ ok: true }),
    readiness: () => c.readiness(),
    status: () => c.status(),
    registry: createMetrics('coordinator', { defaultMetrics: false }).registry,
    routes: new Map([['/events', eventsRoute(ingest)]]),
  })
  cleanup.push(() => http.close())
  const nodes: WorkerNode[] = []
  for (let i = 0; i < workers; i++) {
    const n = createWorkerNode({
      transport: createMemoryTransport({ nodeId: `w${i}`, role: 'worker' }),
      coordinator: c.address,
      listen: { host: 'ingest', port: port++ },
      memberId: `w${i}`,
      version: 'test',
      threads: 1,
      heartbeatIntervalMs: 50,
      logger,
    })
    await n.start()
    cleanup.push(() => n.stop())
    nodes.push(n)
  }
  if (workers > 0) {
    await waitFor(
      () =>
        c.readiness().ok &&
        c.assignment.owners.every((x) => x !== null) &&
        c.status().members.every((m) => m.partitions > 0 && m.readyPartitions === m.partitions),
      'cluster ready',
    )
  }
  return { c, nodes, http, ingest, url: `http://127.0.0.1:${http.port}/events` }
}

async function reader(c: Coordinator): Promise<ShoalClient> {
  const cl = await ShoalClient.connect({
    coordinator: c.address,
    transport: createMemoryTransport({ nodeId: 'reader', role: 'client' }),
  })
  cleanup.push(() => cl.close())
  return cl
}

/** NDJSON for events from..to-1 (the same keys and values as test/helpers/totals.ts), added to `expected`. */
function ndjson(from: number, to: number, expected: Totals, keys = 500): string[] {
  const lines: string[] = []
  for (let i = from; i < to; i++) {
    const key = `key-${(i * 7919) % keys}`
    const value = (i % 17) - 5
    lines.push(JSON.stringify({ key, value, i }))
    const e = expected.get(key) ?? { count: 0, sum: 0 }
    e.count++
    e.sum += value
    expected.set(key, e)
  }
  return lines
}

async function post(
  url: string,
  body: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const res = await fetch(url, {
    method: 'POST',
    body,
    headers: { 'content-type': 'application/x-ndjson', ...headers },
  })
  return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers }
}

describe('POST /events (in-process cluster)', () => {
  it('10k events: {"acked":10000}, and the state is exact', async () => {
    const { c, url } = await cluster(3)
    const expected: Totals = new Map()
    const lines = ndjson(0, 10_000, expected)
    const r = await post(url, lines.join('\n') + '\n')
    expect(r.status).toBe(200)
    expect(r.body).toEqual({ acked: 10_000 })
    await expectExactState(await reader(c), expected)

    // Concurrent requests share the coordinator's client; each answers for its own events.
    const more = await Promise.all(
      [0, 1, 2, 3].map((k) =>
        post(url, ndjson(10_000 + k * 2500, 10_000 + (k + 1) * 2500, expected).join('\r\n'), {
          'content-type': k % 2 === 0 ? 'text/plain' : 'application/json',
        }),
      ),
    )
    for (const m of more) expect(m).toMatchObject({ status: 200, body: { acked: 2500 } })
    await expectExactState(await reader(c), expected)
  })

  it('malformed lines: 400 naming exactly those lines, and nothing applied', async () => {
    const { c, url } = await cluster(2)
    const expected: Totals = new Map()
    const good = ndjson(0, 1000, expected)
    expect((await post(url, good.join('\n'))).body).toEqual({ acked: 1000 })

    const unchanged = new Map(expected)
    const lines = ndjson(1000, 2000, new Map())
    lines[41] = '{"key":"key-1","value":' // line 42: cut short
    lines[776] = '{"value":3}' // line 777: no key
    const r = await post(url, lines.join('\n'))
    expect(r.status).toBe(400)
    const error = r.body.error as {
      code: string
      message: string
      lines: { line: number }[]
      malformed: number
    }
    expect(error.code).toBe(ErrorCodes.HTTP_BAD_REQUEST)
    expect(error.lines.map((l) => l.line)).toEqual([42, 777])
    expect(error.malformed).toBe(2)
    expect(error.message).toContain('nothing was applied')
    await expectExactState(await reader(c), unchanged)

    // An empty body is fine; a wrong content type is not.
    expect((await post(url, '')).body).toEqual({ acked: 0 })
    expect((await post(url, good[0]!, { 'content-type': 'application/x-www-form-urlencoded' })).status).toBe(
      415,
    )
    // key-field, like `shoal send --key-field`.
    const byUser = await post(`${url}?key-field=user`, '{"user":"key-1","value":5}\n')
    expect(byUser.body).toEqual({ acked: 1 })
    const k1 = expected.get('key-1') ?? { count: 0, sum: 0 }
    expected.set('key-1', { count: k1.count + 1, sum: k1.sum + 5 })
    // (The event carries a `user` field but the count job only reads `value`.)
    await expectExactState(await reader(c), expected)
  })

  it('a cluster that does not ack in time: 503 retryable; later requests use a fresh producer', async () => {
    const { c, nodes, ingest, url } = await cluster(2, { timeoutMs: 3000 })
    const expected: Totals = new Map()
    expect((await post(url, ndjson(0, 200, expected).join('\n'))).body).toEqual({ acked: 200 })
    const first = ingest.status().producerId
    expect(first).not.toBeNull()
    // Every batch is refused (PAUSED, retryable) until the client gives up on it.
    for (const n of nodes) n.dataPlane.pause(null)
    const r = await post(url, ndjson(200, 400, new Map()).join('\n'))
    expect(r.status).toBe(503)
    expect(r.headers.get('retry-after')).toBe('1')
    expect(r.body).toMatchObject({ error: { retryable: true } })
    // Its client is retired once it gives up; nothing of the refused request was applied.
    await waitFor(() => ingest.status().retired === 1, 'the ingest client retired')
    for (const n of nodes) n.dataPlane.resume(null)
    expect((await post(url, ndjson(400, 600, expected).join('\n'))).body).toEqual({ acked: 200 })
    expect(ingest.status().producerId).toBe(`${first}.1`)
    await expectExactState(await reader(c), expected)
  })

  it('no workers: 503 with a retryable code, and nothing is queued for later', async () => {
    const { c, url } = await cluster(0)
    const first = await post(url, '{"key":"a","value":1}\n')
    expect(first.status).toBe(503)
    expect(first.headers.get('retry-after')).toBe('1')
    expect(first.body).toMatchObject({ error: { code: ErrorCodes.NOT_OWNER, retryable: true } })
    await waitFor(() => c.readiness().ok, 'recovery window over')
    const second = await post(url, '{"key":"a","value":1}\n')
    expect(second.status).toBe(503)
    expect((second.body.error as { message: string }).message).toContain('no owner')
  })
})

/** A coordinator (16 partitions) and workers as processes, each with `flags` (token, TLS). */
async function spawnedCluster(workers: string[], flags: string[]): Promise<ShoalProcess> {
  const fast = ['--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--heartbeat-interval', '100']
  const coord = await startShoal(['coordinator', ...fast, '--partitions', '16', ...flags])
  for (const id of workers) {
    await startShoal([
      'worker',
      '--coordinator',
      coord.info.address,
      ...fast,
      '--node-id',
      id,
      '--threads',
      '1',
      ...flags,
    ])
  }
  return coord
}

describe('POST /events (spawned coordinator with a token)', () => {
  it('401 without the token; with it, every event is acked and applied once', async () => {
    const token = 'ingest-test-token'
    const coord = await spawnedCluster(['w1', 'w2'], ['--token', token])
    const base = `http://${coord.info.http}`
    const auth = { authorization: `Bearer ${token}` }
    await waitFor(
      async () => {
        const res = await fetch(`${base}/status`, { headers: auth })
        const s = (await res.json()) as {
          coordinator: { ready: boolean }
          assignment: { owners: (string | null)[] }
          members: { partitions: number; readyPartitions: number }[]
        }
        return (
          s.coordinator.ready &&
          s.assignment.owners.every((o) => o !== null) &&
          s.members.length === 2 &&
          s.members.every((m) => m.readyPartitions === m.partitions)
        )
      },
      'spawned cluster ready',
      20_000,
    )
    expect((await fetch(`${base}/readyz`)).status).toBe(200)
    expect((await fetch(`${base}/status`)).status).toBe(401)

    const expected: Totals = new Map()
    const body = ndjson(0, 10_000, expected).join('\n')
    const denied = await post(`${base}/events`, body)
    expect(denied.status).toBe(401)
    expect(denied.headers.get('www-authenticate')).toContain('Bearer')
    expect(denied.body).toMatchObject({ error: { code: ErrorCodes.HTTP_UNAUTHORIZED } })
    expect((await post(`${base}/events`, body, { authorization: 'Bearer wrong' })).status).toBe(401)

    const ok = await post(`${base}/events`, body, auth)
    expect(ok).toMatchObject({ status: 200, body: { acked: 10_000 } })
    const cl = await ShoalClient.connect({
      coordinator: coord.info.address,
      transport: createTcpTransport({ nodeId: 'ingest-reader', role: 'client', token }),
    })
    cleanup.push(() => cl.close())
    // The denied requests applied nothing: the counts are those of one request.
    await expectExactState(cl, expected)
  }, 60_000)

  it("over TLS: the ingest thread dials its own coordinator with the node's certificate; every event applied", async () => {
    const pki = testPki()
    const dir = mkdtempSync(join(tmpdir(), 'shoal-ingest-tls-'))
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }))
    const file = (name: string, text: string): string => {
      writeFileSync(join(dir, name), text)
      return join(dir, name)
    }
    const tls = [
      '--tls-cert',
      file('server.crt', pki.serverCert),
      '--tls-key',
      file('server.key', pki.serverKey),
      '--tls-ca',
      file('ca.crt', pki.ca),
    ]
    const coord = await spawnedCluster(['w1'], tls)
    const expected: Totals = new Map()
    const body = ndjson(0, 5000, expected).join('\n')
    const httpsPost = (): Promise<{ status: number; text: string }> =>
      new Promise((resolve, reject) => {
        const req = httpsRequest(
          `https://${coord.info.http}/events`,
          { method: 'POST', ca: pki.ca, headers: { 'content-type': 'application/x-ndjson' } },
          (res) => {
            let text = ''
            res.setEncoding('utf8').on('data', (d: string) => (text += d))
            res.on('end', () => resolve({ status: res.statusCode ?? 0, text }))
          },
        )
        req.on('error', reject)
        req.end(body)
      })
    let r = { status: 0, text: '' }
    // 503 (no owner yet) until the worker has joined and owns every partition.
    await waitFor(
      async () => {
        r = await httpsPost()
        return r.status !== 503
      },
      'an owner for every partition',
      20_000,
    )
    expect(r.status, r.text).toBe(200)
    expect(JSON.parse(r.text)).toEqual({ acked: 5000 })
    const cl = await ShoalClient.connect({
      coordinator: coord.info.address,
      transport: createTcpTransport({
        nodeId: 'ingest-tls-reader',
        role: 'client',
        tls: { ca: pki.ca },
      }),
    })
    cleanup.push(() => cl.close())
    await expectExactState(cl, expected)
  }, 60_000)
})
