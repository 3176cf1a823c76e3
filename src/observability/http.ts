/**
 * The node's HTTP endpoint (contract, see ARCHITECTURE.md "Health"):
 *
 *   GET /healthz  liveness:  200 {"status":"ok",...detail}    or 503 {"status":"unhealthy",...}
 *   GET /readyz   readiness: 200 {"status":"ok",...detail}    or 503 {"status":"not-ready",...}
 *   GET /metrics  Prometheus text exposition (the registry's content type)
 *   GET /status   JSON from status()
 *   extra routes  exact paths, or prefixes when the key ends with '/' (e.g. '/state/');
 *                 the longest matching prefix wins
 *
 * Anything else is 404, a method other than GET or HEAD on a known path is 405 (with Allow),
 * always with a JSON body `{"error":{"code":"SHOAL_ERR_...","message":"..."}}`. A handler
 * that throws or rejects yields 500 (code SHOAL_ERR_INTERNAL, or the error's own Shoal code);
 * one that does not answer within handlerTimeoutMs yields 503 (SHOAL_ERR_TIMEOUT). Nothing a
 * handler does can take the server down. HEAD is answered like GET without a body.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import net from 'node:net'
import { ErrorCodes, InvalidOptionError, ShoalError, type ErrorCode } from '../errors.ts'

/** What a liveness or readiness check returns; `detail` is merged into the JSON body. */
export interface HealthResult {
  ok: boolean
  detail?: Record<string, unknown>
}

export interface RouteRequest {
  readonly method: 'GET' | 'HEAD'
  readonly url: URL
  readonly headers: IncomingHttpHeaders
  /** Aborted when the client goes away or the handler timed out. */
  readonly signal: AbortSignal
}

export interface RouteResponse {
  /** @default 200 */
  status?: number
  /**
   * A string (text/plain), bytes (application/octet-stream) or anything else (JSON; bigints
   * become strings). undefined sends an empty body.
   */
  body?: unknown
  headers?: Readonly<Record<string, string>>
}

export type RouteHandler = (request: RouteRequest) => RouteResponse | Promise<RouteResponse>

/** The part of a prom-client Registry the server needs. */
export interface MetricsSource {
  readonly contentType: string
  metrics(): Promise<string>
}

/** Where failed handlers are reported (a pino logger fits). */
export interface HttpErrorLogger {
  error(obj: object, msg?: string): void
}

export interface HttpServerOptions {
  /** @default '0.0.0.0' */
  host?: string
  /** 0 picks a free port; the bound one is in the result. */
  port: number
  liveness(): HealthResult | Promise<HealthResult>
  readiness(): HealthResult | Promise<HealthResult>
  status(): unknown
  registry: MetricsSource
  routes?: ReadonlyMap<string, RouteHandler>
  /** @default 5000 */
  handlerTimeoutMs?: number
  logger?: HttpErrorLogger
}

export interface HttpServer {
  /** host:port actually bound ([v6]:port for IPv6). */
  readonly address: string
  readonly host: string
  readonly port: number
  /** Stop listening and close every connection, keep-alive ones included. Idempotent. */
  close(): Promise<void>
}

export const DEFAULT_HTTP_HANDLER_TIMEOUT_MS = 5000

const BUILTIN_PATHS = ['/healthz', '/readyz', '/metrics', '/status'] as const

class HttpStatusError extends ShoalError {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  constructor(status: number, code: ErrorCode, message: string, headers: Record<string, string> = {}) {
    super(code, message)
    this.status = status
    this.headers = headers
  }
}

/** Start the HTTP server; resolves once it listens. Rejects with SHOAL_ERR_LISTEN_FAILED. */
export async function startHttpServer(options: HttpServerOptions): Promise<HttpServer> {
  const host = options.host ?? '0.0.0.0'
  const timeoutMs = options.handlerTimeoutMs ?? DEFAULT_HTTP_HANDLER_TIMEOUT_MS
  if (!Number.isSafeInteger(options.port) || options.port < 0 || options.port > 65535) {
    throw new InvalidOptionError(
      `options.port must be an integer in [0, 65535] (got ${String(options.port)})`,
    )
  }
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) {
    throw new InvalidOptionError(
      `options.handlerTimeoutMs must be a positive integer (got ${String(timeoutMs)})`,
    )
  }

  const exact = new Map<string, RouteHandler>()
  const prefixes: Array<[string, RouteHandler]> = []
  const builtins: Record<(typeof BUILTIN_PATHS)[number], RouteHandler> = {
    '/healthz': async () => health(await options.liveness(), 'unhealthy'),
    '/readyz': async () => health(await options.readiness(), 'not-ready'),
    '/metrics': async () => {
      const text = await options.registry.metrics()
      return { body: text, headers: { 'content-type': options.registry.contentType } }
    },
    '/status': async () => ({ body: (await options.status()) ?? null }),
  }
  for (const p of BUILTIN_PATHS) exact.set(p, builtins[p])
  for (const [p, handler] of options.routes ?? []) {
    if (!p.startsWith('/')) throw new InvalidOptionError(`route ${JSON.stringify(p)} must start with '/'`)
    if (exact.has(p) || prefixes.some(([q]) => q === p)) {
      throw new InvalidOptionError(`route ${JSON.stringify(p)} is already served`)
    }
    if (p.endsWith('/') && p.length > 1) prefixes.push([p, handler])
    else exact.set(p, handler)
  }
  prefixes.sort((a, b) => b[0].length - a[0].length)

  const route = (pathname: string): RouteHandler | undefined =>
    exact.get(pathname) ?? prefixes.find(([p]) => pathname.startsWith(p))?.[1]

  const server = createServer({ requestTimeout: 15_000, headersTimeout: 10_000, keepAliveTimeout: 5000 })

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const ac = new AbortController()
    res.once('close', () => ac.abort(new Error('response closed')))
    let isHead = false
    let timer: NodeJS.Timeout | undefined
    try {
      const url = new URL(req.url ?? '/', 'http://localhost')
      const handler = route(url.pathname)
      if (handler === undefined) {
        throw new HttpStatusError(404, ErrorCodes.HTTP_NOT_FOUND, `no route for ${url.pathname}`)
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        throw new HttpStatusError(
          405,
          ErrorCodes.HTTP_METHOD_NOT_ALLOWED,
          `${String(req.method)} is not allowed on ${url.pathname}; use GET`,
          { allow: 'GET, HEAD' },
        )
      }
      isHead = req.method === 'HEAD'
      const timeout = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => {
          reject(
            new HttpStatusError(
              503,
              ErrorCodes.TIMEOUT,
              `handler for ${url.pathname} did not answer in ${timeoutMs} ms`,
            ),
          )
        }, timeoutMs)
        timer.unref()
      })
      const result = await Promise.race([
        Promise.resolve().then(() =>
          handler({ method: isHead ? 'HEAD' : 'GET', url, headers: req.headers, signal: ac.signal }),
        ),
        timeout,
      ])
      send(res, result.status ?? 200, result.body, result.headers ?? {}, isHead)
    } catch (err) {
      if (err instanceof HttpStatusError) {
        send(res, err.status, errorBody(err.code, err.message), err.headers, isHead)
        if (err.code === ErrorCodes.TIMEOUT) ac.abort(err)
        return
      }
      const code = err instanceof ShoalError ? err.code : ErrorCodes.INTERNAL
      const message = err instanceof Error ? err.message : String(err)
      options.logger?.error({ err, path: req.url }, 'http handler failed')
      send(res, 500, errorBody(code, message), {}, isHead)
    } finally {
      clearTimeout(timer)
    }
  }

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res).catch((err: unknown) => {
      // send() itself failed (e.g. unserializable body): last resort, never throw.
      options.logger?.error({ err }, 'http response failed')
      if (!res.headersSent) {
        try {
          send(res, 500, errorBody(ErrorCodes.INTERNAL, 'response could not be sent'), {}, false)
          return
        } catch {
          // fall through
        }
      }
      res.destroy()
    })
  })

  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      reject(
        new ShoalError(
          ErrorCodes.LISTEN_FAILED,
          `HTTP server cannot listen on ${formatAddress(host, options.port)}: ${err.code ?? err.message}`,
          { cause: err },
        ),
      )
    }
    server.once('error', onError)
    server.listen({ host, port: options.port }, () => {
      server.off('error', onError)
      resolve()
    })
  })
  // Errors after listening (rare: e.g. EMFILE on accept) must not crash the process.
  server.on('error', (err) => options.logger?.error({ err }, 'http server error'))

  const bound = server.address() as net.AddressInfo
  let closing: Promise<void> | undefined
  return {
    address: formatAddress(bound.address, bound.port),
    host: bound.address,
    port: bound.port,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      })
      return closing
    },
  }
}

function health(r: HealthResult, failure: string): RouteResponse {
  const { status: _ignored, ...detail } = r.detail ?? {}
  return { status: r.ok ? 200 : 503, body: { status: r.ok ? 'ok' : failure, ...detail } }
}

function errorBody(code: ErrorCode, message: string): { error: { code: ErrorCode; message: string } } {
  return { error: { code, message } }
}

function send(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Readonly<Record<string, string>>,
  isHead: boolean,
): void {
  if (res.headersSent || res.writableEnded || res.destroyed) return
  let payload: Buffer
  let contentType: string
  if (typeof body === 'string') {
    payload = Buffer.from(body, 'utf8')
    contentType = 'text/plain; charset=utf-8'
  } else if (body instanceof Uint8Array) {
    payload = Buffer.from(body.buffer, body.byteOffset, body.byteLength)
    contentType = 'application/octet-stream'
  } else if (body === undefined) {
    payload = Buffer.alloc(0)
    contentType = 'text/plain; charset=utf-8'
  } else {
    const json = JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) as
      string | undefined
    payload = Buffer.from((json ?? 'null') + '\n', 'utf8')
    contentType = 'application/json; charset=utf-8'
  }
  res.statusCode = status
  res.setHeader('content-type', contentType)
  res.setHeader('cache-control', 'no-store')
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v)
  res.setHeader('content-length', payload.byteLength)
  res.end(isHead ? undefined : payload)
}

function formatAddress(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`
}
