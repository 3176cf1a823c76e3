/**
 * The HTTP server's access control (bearer token), POST routes with a body, and HTTPS: real
 * servers on loopback, real requests.
 */
import { mkdtempSync, writeFileSync } from 'node:fs'
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it, onTestFinished } from 'vitest'
import { PROBE_EXIT, runProbe } from '../../../src/cli/probe.ts'
import { ErrorCodes, InvalidOptionError } from '../../../src/errors.ts'
import {
  startHttpServer,
  type HttpServer,
  type HttpServerOptions,
  type PostRoute,
  type RouteHandler,
} from '../../../src/observability/http.ts'
import { createMetrics } from '../../../src/observability/metrics.ts'
import { testPki } from '../../helpers/certs.ts'

const TOKEN = 'the-cluster-token'

async function start(o: Partial<HttpServerOptions> = {}): Promise<HttpServer> {
  const server = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    liveness: () => ({ ok: true }),
    readiness: () => ({ ok: true }),
    status: () => ({ role: 'test' }),
    registry: createMetrics('worker', { defaultMetrics: false }).registry,
    ...o,
  })
  onTestFinished(() => server.close())
  return server
}

interface Reply {
  status: number
  headers: IncomingHttpHeaders
  text: string
  json: () => Record<string, unknown>
}

/** One request with node:http(s) (fetch cannot take a CA or send a body in chunks). */
function call(
  server: HttpServer,
  path: string,
  o: {
    method?: string
    token?: string
    authorization?: string
    headers?: Record<string, string>
    body?: string | Buffer | (string | Buffer)[]
    ca?: string
  } = {},
): Promise<Reply> {
  const headers: Record<string, string> = { ...o.headers }
  if (o.token !== undefined) headers.authorization = `Bearer ${o.token}`
  if (o.authorization !== undefined) headers.authorization = o.authorization
  if (typeof o.body === 'string' || Buffer.isBuffer(o.body))
    headers['content-length'] = String(Buffer.byteLength(o.body))
  return new Promise((resolve, reject) => {
    const onResponse = (res: IncomingMessage): void => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('error', reject)
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          text,
          json: () => JSON.parse(text) as Record<string, unknown>,
        })
      })
    }
    const opts = {
      host: '127.0.0.1',
      port: server.port,
      path,
      method: o.method ?? 'GET',
      headers,
      agent: false,
    }
    const req =
      server.scheme === 'https'
        ? httpsRequest({ ...opts, ca: o.ca, servername: 'localhost' }, onResponse)
        : httpRequest(opts, onResponse)
    req.on('error', reject)
    if (Array.isArray(o.body)) for (const part of o.body) req.write(part)
    else if (o.body !== undefined) req.write(o.body)
    req.end()
  })
}

function expectUnauthorized(r: Reply, invalidToken: boolean): void {
  expect(r.status).toBe(401)
  expect(r.headers['www-authenticate']).toBe(
    invalidToken ? 'Bearer realm="shoal", error="invalid_token"' : 'Bearer realm="shoal"',
  )
  expect(r.json()).toMatchObject({ error: { code: ErrorCodes.HTTP_UNAUTHORIZED } })
}

const echo: PostRoute = {
  method: 'POST',
  maxBodyBytes: 1024,
  contentTypes: ['application/x-ndjson', 'text/plain'],
  handler: (req) => ({
    body: { method: req.method, bytes: req.body.length, text: req.body.toString('utf8') },
  }),
}

describe('HTTP access control (bearer token)', () => {
  it('/healthz and /readyz are open; every other endpoint needs the token', async () => {
    const routes = new Map<string, RouteHandler | PostRoute>([
      ['/state/', () => ({ body: { found: false } })],
      ['/events', echo],
    ])
    const server = await start({ auth: { token: TOKEN }, routes })
    for (const p of ['/healthz', '/readyz']) {
      expect((await call(server, p)).status).toBe(200)
      expect((await call(server, p, { token: 'wrong' })).status).toBe(200)
    }
    for (const p of ['/status', '/state/k', '/nope']) {
      expectUnauthorized(await call(server, p), false)
      expectUnauthorized(await call(server, p, { token: 'wrong' }), true)
      // Same length as the real token, one character off.
      expectUnauthorized(await call(server, p, { token: TOKEN.slice(0, -1) + 'X' }), true)
      expectUnauthorized(await call(server, p, { token: TOKEN + TOKEN }), true)
      expectUnauthorized(await call(server, p, { authorization: `Basic ${btoa(`u:${TOKEN}`)}` }), false)
      expectUnauthorized(await call(server, p, { authorization: TOKEN }), false)
      expectUnauthorized(await call(server, p, { authorization: 'Bearer' }), false)
    }
    expect((await call(server, '/status', { token: TOKEN })).json()).toEqual({ role: 'test' })
    expect((await call(server, '/status', { authorization: `bearer   ${TOKEN}` })).status).toBe(200)
    expect((await call(server, '/state/k', { token: TOKEN })).status).toBe(200)
    // Routing comes after the token check: unknown paths are 404 only for a caller with it.
    expect((await call(server, '/nope', { token: TOKEN })).status).toBe(404)
    // POST routes too; a refused request's body is never handed to the route.
    expectUnauthorized(await call(server, '/events', { method: 'POST', body: '{"key":"a"}' }), false)
    const posted = await call(server, '/events', { method: 'POST', body: '{"key":"a"}', token: TOKEN })
    expect(posted.json()).toEqual({ method: 'POST', bytes: 11, text: '{"key":"a"}' })
    // HEAD: the same status, no body.
    const head = await call(server, '/status', { method: 'HEAD' })
    expect(head.status).toBe(401)
    expect(head.text).toBe('')
  })

  it('/metrics is open unless auth.metrics', async () => {
    const open = await start({ auth: { token: TOKEN } })
    expect((await call(open, '/metrics')).status).toBe(200)
    const closed = await start({ auth: { token: TOKEN, metrics: true } })
    expectUnauthorized(await call(closed, '/metrics'), false)
    expectUnauthorized(await call(closed, '/metrics', { token: 'nope' }), true)
    const ok = await call(closed, '/metrics', { token: TOKEN })
    expect(ok.status).toBe(200)
    expect(ok.headers['content-type']).toContain('text/plain')
    expect((await call(closed, '/healthz')).status).toBe(200)
  })

  it('without a token everything is open', async () => {
    const server = await start()
    for (const p of ['/healthz', '/readyz', '/metrics', '/status'])
      expect((await call(server, p)).status).toBe(200)
  })

  it('rejects an empty token', async () => {
    await expect(start({ auth: { token: '' } })).rejects.toBeInstanceOf(InvalidOptionError)
  })
})

describe('POST routes', () => {
  it('hands the whole body to the handler; 405 with Allow for other methods', async () => {
    const server = await start({ routes: new Map([['/events', echo]]) })
    const body = ['{"key":"a"}\n', '{"key":"b"}\n', '{"key":"c"}']
    // Chunked, no content-length.
    const r = await call(server, '/events', {
      method: 'POST',
      body: body.map((b) => Buffer.from(b)),
      headers: { 'content-type': 'application/x-ndjson; charset=utf-8' },
    })
    expect(r.status).toBe(200)
    expect(r.json()).toEqual({ method: 'POST', bytes: body.join('').length, text: body.join('') })
    for (const method of ['GET', 'HEAD', 'PUT', 'DELETE']) {
      const res = await call(server, '/events', { method })
      expect(res.status).toBe(405)
      expect(res.headers.allow).toBe('POST')
    }
    // GET routes keep answering 405 to POST.
    const onGet = await call(server, '/healthz', { method: 'POST', body: 'x' })
    expect(onGet.status).toBe(405)
    expect(onGet.headers.allow).toBe('GET, HEAD')
    // An empty body is a body.
    expect((await call(server, '/events', { method: 'POST' })).json()).toMatchObject({ bytes: 0 })
  })

  it('413 above maxBodyBytes, declared or streamed; the server stays up', async () => {
    const server = await start({ routes: new Map([['/events', echo]]) })
    const declared = await call(server, '/events', { method: 'POST', body: 'x'.repeat(1025) })
    expect(declared.status).toBe(413)
    expect(declared.headers.connection).toBe('close')
    expect(declared.json()).toMatchObject({ error: { code: ErrorCodes.HTTP_BAD_REQUEST } })
    const streamed = await call(server, '/events', {
      method: 'POST',
      body: [Buffer.alloc(600, 0x61), Buffer.alloc(600, 0x61)],
    })
    expect(streamed.status).toBe(413)
    const exact = await call(server, '/events', { method: 'POST', body: 'x'.repeat(1024) })
    expect(exact.json()).toMatchObject({ bytes: 1024 })
  })

  it('415 for an unlisted Content-Type or a Content-Encoding', async () => {
    const server = await start({ routes: new Map([['/events', echo]]) })
    const t = await call(server, '/events', {
      method: 'POST',
      body: 'a=1',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    })
    expect(t.status).toBe(415)
    expect(t.json()).toMatchObject({ error: { code: ErrorCodes.HTTP_BAD_REQUEST } })
    const e = await call(server, '/events', {
      method: 'POST',
      body: 'x',
      headers: { 'content-type': 'text/plain', 'content-encoding': 'gzip' },
    })
    expect(e.status).toBe(415)
    const ok = await call(server, '/events', {
      method: 'POST',
      body: 'x',
      headers: { 'content-type': 'TEXT/PLAIN' },
    })
    expect(ok.status).toBe(200)
  })

  it('validates POST route options', async () => {
    const bad = (spec: Partial<PostRoute>): Promise<HttpServer> =>
      start({ routes: new Map([['/p', { ...echo, ...spec }]]) })
    await expect(bad({ maxBodyBytes: 0 })).rejects.toBeInstanceOf(InvalidOptionError)
    await expect(bad({ handlerTimeoutMs: -1 })).rejects.toBeInstanceOf(InvalidOptionError)
    await expect(bad({ method: 'PUT' as 'POST' })).rejects.toBeInstanceOf(InvalidOptionError)
  })
})

describe('HTTPS', () => {
  it('serves HTTPS with the node certificate, with the same token rule; probes work', async () => {
    const pki = testPki()
    const server = await start({
      tls: { cert: pki.serverCert, key: pki.serverKey },
      auth: { token: TOKEN },
    })
    expect(server.scheme).toBe('https')
    expect((await call(server, '/healthz', { ca: pki.ca })).status).toBe(200)
    expect((await call(server, '/readyz', { ca: pki.ca })).status).toBe(200)
    expectUnauthorized(await call(server, '/status', { ca: pki.ca }), false)
    expect((await call(server, '/status', { ca: pki.ca, token: TOKEN })).json()).toEqual({ role: 'test' })
    // An untrusted CA, and plain HTTP to the HTTPS port, get no answer.
    await expect(call(server, '/healthz', { ca: pki.rogueCa })).rejects.toThrow()
    await expect(
      new Promise((resolve, reject) => {
        const req = httpRequest(
          { host: '127.0.0.1', port: server.port, path: '/healthz', agent: false },
          resolve,
        )
        req.on('error', reject)
        req.end()
      }),
    ).rejects.toThrow()

    const dir = mkdtempSync(join(tmpdir(), 'shoal-probe-'))
    writeFileSync(join(dir, 'ca.pem'), pki.ca)
    const lines: string[] = []
    const io = { out: (l: string) => lines.push(l), err: (l: string) => lines.push(l) }
    const url = `https://localhost:${server.port}/readyz`
    expect(await runProbe(['http', url, '--ca', join(dir, 'ca.pem')], io)).toBe(PROBE_EXIT.SERVING)
    expect(await runProbe(['http', `https://127.0.0.1:${server.port}/healthz`, '--insecure'], io)).toBe(
      PROBE_EXIT.SERVING,
    )
    // Not trusted without --ca: a connection failure, like grpc_health_probe's TLS errors.
    expect(await runProbe(['http', url], io)).toBe(PROBE_EXIT.CONNECTION_FAILURE)
    expect(await runProbe(['http', url.replace('https', 'http'), '--insecure'], io)).toBe(
      PROBE_EXIT.BAD_ARGUMENTS,
    )
    expect(await runProbe(['http', url, '--insecure', '--ca', join(dir, 'ca.pem')], io)).toBe(
      PROBE_EXIT.BAD_ARGUMENTS,
    )
  })
})
