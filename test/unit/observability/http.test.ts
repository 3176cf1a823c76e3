import { request as httpRequest, Agent } from 'node:http'
import { describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes, InvalidOptionError, ShoalError } from '../../../src/errors.ts'
import {
  startHttpServer,
  type HealthResult,
  type HttpServer,
  type HttpServerOptions,
  type RouteHandler,
} from '../../../src/observability/http.ts'
import { createMetrics, METRIC_NAMES } from '../../../src/observability/metrics.ts'

async function start(
  o: Partial<HttpServerOptions> = {},
): Promise<{ server: HttpServer; url: (p: string) => string }> {
  const server = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    liveness: () => ({ ok: true, detail: { loop: 'ticking' } }),
    readiness: () => ({ ok: true }),
    status: () => ({ role: 'test', n: 1 }),
    registry: createMetrics('worker', { defaultMetrics: false }).registry,
    ...o,
  })
  onTestFinished(() => server.close())
  return { server, url: (p) => `http://127.0.0.1:${server.port}${p}` }
}

async function json(res: Response): Promise<Record<string, unknown>> {
  expect(res.headers.get('content-type')).toBe('application/json; charset=utf-8')
  return (await res.json()) as Record<string, unknown>
}

describe('startHttpServer', () => {
  it('listens on port 0 and reports the real port', async () => {
    const { server } = await start()
    expect(server.port).toBeGreaterThan(0)
    expect(server.host).toBe('127.0.0.1')
    expect(server.address).toBe(`127.0.0.1:${server.port}`)
  })

  it('GET /healthz: 200 with detail, 503 when not live', async () => {
    let live: HealthResult = { ok: true, detail: { loop: 'ticking', status: 'ignored' } }
    const { url } = await start({ liveness: () => live })
    const ok = await fetch(url('/healthz'))
    expect(ok.status).toBe(200)
    expect(await json(ok)).toEqual({ status: 'ok', loop: 'ticking' })
    live = { ok: false, detail: { reasons: ['event loop blocked'] } }
    const bad = await fetch(url('/healthz'))
    expect(bad.status).toBe(503)
    expect(await json(bad)).toEqual({ status: 'unhealthy', reasons: ['event loop blocked'] })
    expect(bad.headers.get('cache-control')).toBe('no-store')
  })

  it('GET /readyz: 200, 503 with reasons; async checks', async () => {
    let ready = false
    const { url } = await start({
      readiness: async () => {
        await Promise.resolve()
        return ready
          ? { ok: true, detail: { partitions: 3 } }
          : { ok: false, detail: { reasons: ['not registered'] } }
      },
    })
    const no = await fetch(url('/readyz'))
    expect(no.status).toBe(503)
    expect(await json(no)).toEqual({ status: 'not-ready', reasons: ['not registered'] })
    ready = true
    const yes = await fetch(url('/readyz'))
    expect(yes.status).toBe(200)
    expect(await json(yes)).toEqual({ status: 'ok', partitions: 3 })
  })

  it('GET /metrics: Prometheus text with the registry content type', async () => {
    const metrics = createMetrics('coordinator')
    metrics.heartbeatsReceived.inc(3)
    const { url } = await start({ registry: metrics.registry })
    const res = await fetch(url('/metrics'))
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe(metrics.registry.contentType)
    const text = await res.text()
    for (const name of Object.values(METRIC_NAMES)) expect(text).toContain(`# TYPE ${name} `)
    expect(text).toContain('shoal_heartbeats_received_total{role="coordinator"} 3')
    expect(text).toContain('process_cpu_user_seconds_total')
  })

  it('GET /status: JSON (bigints as strings; undefined as null)', async () => {
    let status: unknown = { members: [{ id: 'w1' }], big: 10n }
    const { url } = await start({ status: () => status })
    expect(await json(await fetch(url('/status')))).toEqual({ members: [{ id: 'w1' }], big: '10' })
    status = undefined
    expect(await json(await fetch(url('/status')))).toBeNull()
  })

  it('extra routes: exact and prefix, longest prefix wins, query in url', async () => {
    const seen: string[] = []
    const routes = new Map<string, RouteHandler>([
      ['/version', () => ({ body: '1.2.3' })],
      [
        '/state/',
        (req) => {
          seen.push(req.url.pathname + req.url.search)
          return { status: 404, body: { key: decodeURIComponent(req.url.pathname.slice(7)), found: false } }
        },
      ],
      ['/state/special/', () => ({ body: new Uint8Array([1, 2, 3]), headers: { 'x-kind': 'special' } })],
    ])
    const { url } = await start({ routes })
    const v = await fetch(url('/version'))
    expect(v.headers.get('content-type')).toBe('text/plain; charset=utf-8')
    expect(await v.text()).toBe('1.2.3')
    const s = await fetch(url('/state/user%201?x=1'))
    expect(s.status).toBe(404)
    expect(await json(s)).toEqual({ key: 'user 1', found: false })
    expect(seen).toEqual(['/state/user%201?x=1'])
    const sp = await fetch(url('/state/special/k'))
    expect(sp.headers.get('content-type')).toBe('application/octet-stream')
    expect(sp.headers.get('x-kind')).toBe('special')
    expect(new Uint8Array(await sp.arrayBuffer())).toEqual(new Uint8Array([1, 2, 3]))
    // The prefix itself without a trailing part, and a path that only looks like it, are 404.
    expect((await fetch(url('/state'))).status).toBe(404)
    expect((await fetch(url('/statex/y'))).status).toBe(404)
  })

  it('404 JSON for unknown paths', async () => {
    const { url } = await start()
    const res = await fetch(url('/nope'))
    expect(res.status).toBe(404)
    expect(await json(res)).toEqual({
      error: { code: ErrorCodes.HTTP_NOT_FOUND, message: 'no route for /nope' },
    })
  })

  it('405 for methods other than GET/HEAD, with Allow', async () => {
    const { url } = await start()
    for (const method of ['POST', 'PUT', 'DELETE']) {
      const res = await fetch(url('/healthz'), { method, body: method === 'DELETE' ? null : 'x' })
      expect(res.status).toBe(405)
      expect(res.headers.get('allow')).toBe('GET, HEAD')
      expect(await json(res)).toMatchObject({ error: { code: ErrorCodes.HTTP_METHOD_NOT_ALLOWED } })
    }
  })

  it('HEAD answers like GET without a body', async () => {
    const { url } = await start({ readiness: () => ({ ok: false }) })
    const res = await fetch(url('/readyz'), { method: 'HEAD' })
    expect(res.status).toBe(503)
    expect(Number(res.headers.get('content-length'))).toBeGreaterThan(0)
    expect(await res.text()).toBe('')
  })

  it('a throwing handler yields 500 JSON with a code, and the server stays up', async () => {
    const routes = new Map<string, RouteHandler>([
      [
        '/sync-throw',
        () => {
          throw new Error('boom')
        },
      ],
      ['/async-throw', () => Promise.reject(new ShoalError(ErrorCodes.STATE_UNAVAILABLE, 'redis down'))],
      ['/throw-string', () => Promise.reject(new Error('x', { cause: 'y' }))],
      [
        '/circular',
        () => {
          const a: Record<string, unknown> = {}
          a.self = a
          return { body: a }
        },
      ],
    ])
    const logged: unknown[] = []
    const { url } = await start({
      routes,
      liveness: () => {
        throw new TypeError('liveness broke')
      },
      logger: { error: (obj) => logged.push(obj) },
    })
    const a = await fetch(url('/sync-throw'))
    expect(a.status).toBe(500)
    expect(await json(a)).toEqual({ error: { code: ErrorCodes.INTERNAL, message: 'boom' } })
    const b = await fetch(url('/async-throw'))
    expect(b.status).toBe(500)
    expect(await json(b)).toEqual({ error: { code: ErrorCodes.STATE_UNAVAILABLE, message: 'redis down' } })
    expect((await fetch(url('/throw-string'))).status).toBe(500)
    const c = await fetch(url('/circular'))
    expect(c.status).toBe(500)
    expect(await json(c)).toMatchObject({ error: { code: ErrorCodes.INTERNAL } })
    const h = await fetch(url('/healthz'))
    expect(h.status).toBe(500)
    expect(await json(h)).toEqual({ error: { code: ErrorCodes.INTERNAL, message: 'liveness broke' } })
    expect(logged.length).toBe(5)
    // Still serving.
    expect((await fetch(url('/readyz'))).status).toBe(200)
  })

  it('a handler that never answers yields 503 after handlerTimeoutMs, and its signal aborts', async () => {
    let signal: AbortSignal | undefined
    const routes = new Map<string, RouteHandler>([
      [
        '/hang',
        (req) => {
          signal = req.signal
          return new Promise(() => {})
        },
      ],
    ])
    const { url } = await start({ routes, handlerTimeoutMs: 50, status: () => new Promise(() => {}) })
    const res = await fetch(url('/hang'))
    expect(res.status).toBe(503)
    expect(await json(res)).toMatchObject({ error: { code: ErrorCodes.TIMEOUT } })
    expect(signal?.aborted).toBe(true)
    expect((await fetch(url('/status'))).status).toBe(503)
    expect((await fetch(url('/healthz'))).status).toBe(200)
  })

  it('close() also closes keep-alive connections, promptly, and is idempotent', async () => {
    const { server } = await start()
    const agent = new Agent({ keepAlive: true })
    onTestFinished(() => agent.destroy())
    const get = (): Promise<number> =>
      new Promise((resolve, reject) => {
        const req = httpRequest({ host: '127.0.0.1', port: server.port, path: '/healthz', agent }, (res) => {
          res.resume()
          res.on('end', () => resolve(res.statusCode ?? 0))
        })
        req.on('error', reject)
        req.end()
      })
    expect(await get()).toBe(200)
    expect(await get()).toBe(200)
    await Promise.all([server.close(), server.close()])
    await server.close()
    await expect(get()).rejects.toThrow()
  })

  it('close() does not wait for requests in flight', async () => {
    let entered!: () => void
    const inHandler = new Promise<void>((r) => (entered = r))
    const routes = new Map<string, RouteHandler>([
      [
        '/hang',
        () => {
          entered()
          return new Promise(() => {})
        },
      ],
    ])
    const { server, url } = await start({ routes, handlerTimeoutMs: 60_000 })
    const pending = fetch(url('/hang')).then(
      (r) => r.status,
      (e: unknown) => e,
    )
    await inHandler
    await server.close()
    expect(await pending).toBeInstanceOf(Error)
  })

  it('refuses a port in use with SHOAL_ERR_LISTEN_FAILED', async () => {
    const { server } = await start()
    const err = await startHttpServer({
      host: '127.0.0.1',
      port: server.port,
      liveness: () => ({ ok: true }),
      readiness: () => ({ ok: true }),
      status: () => null,
      registry: createMetrics('worker', { defaultMetrics: false }).registry,
    }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ShoalError)
    expect((err as ShoalError).code).toBe(ErrorCodes.LISTEN_FAILED)
    expect((err as ShoalError).message).toContain('EADDRINUSE')
  })

  it('rejects bad options', async () => {
    const base = {
      liveness: () => ({ ok: true }),
      readiness: () => ({ ok: true }),
      status: () => null,
      registry: createMetrics('worker', { defaultMetrics: false }).registry,
    }
    await expect(startHttpServer({ ...base, port: 70000 })).rejects.toBeInstanceOf(InvalidOptionError)
    await expect(startHttpServer({ ...base, port: 0, handlerTimeoutMs: 0 })).rejects.toBeInstanceOf(
      InvalidOptionError,
    )
    await expect(
      startHttpServer({ ...base, port: 0, routes: new Map([['/metrics', () => ({})]]) }),
    ).rejects.toThrow('already served')
    await expect(startHttpServer({ ...base, port: 0, routes: new Map([['x', () => ({})]]) })).rejects.toThrow(
      "must start with '/'",
    )
  })
})
