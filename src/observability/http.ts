/**
 * The node's HTTP endpoint (contract, see ARCHITECTURE.md "Health"):
 *
 *   GET /healthz  liveness:  200 {"status":"ok",...detail}    or 503 {"status":"unhealthy",...}
 *   GET /readyz   readiness: 200 {"status":"ok",...detail}    or 503 {"status":"not-ready",...}
 *   GET /metrics  Prometheus text exposition (the registry's content type)
 *   GET /status   JSON from status()
 *   extra routes  exact paths, or prefixes when the key ends with '/' (e.g. '/state/');
 *                 the longest matching prefix wins. A route is GET (a RouteHandler) or POST
 *                 (a PostRoute: the whole body is read, up to its maxBodyBytes, before the
 *                 handler runs; above it 413 with `connection: close`; a Content-Type it does
 *                 not list is 415), a GetRoute (a GET route that may be `public`: served
 *                 without the token, for content that reveals nothing about the cluster, such
 *                 as the dashboard's page and script) or a StreamRoute (a GET route that keeps
 *                 the response open and writes to it, e.g. Server-Sent Events; no handler
 *                 timeout applies, the stream ends when the client goes or the server closes).
 *
 * Anything else is 404; a method a route does not take is 405 (with Allow: `GET, HEAD` on GET
 * routes, `POST` on POST routes), always with a JSON body `{"error":{"code":"SHOAL_ERR_...",
 * "message":"..."}}`. A handler that throws or rejects yields 500 (code SHOAL_ERR_INTERNAL, or
 * the error's own Shoal code); one that does not answer within handlerTimeoutMs (counted after
 * the body was read) yields 503 (SHOAL_ERR_TIMEOUT). Nothing a handler does can take the server
 * down. HEAD is answered like GET without a body.
 *
 * Access control: with `auth.token` set, every path except /healthz, /readyz and public routes
 * (and /metrics unless `auth.metrics`) requires `Authorization: Bearer <token>`; otherwise 401 with
 * `WWW-Authenticate: Bearer` and code SHOAL_ERR_HTTP_UNAUTHORIZED, checked before routing (an
 * unauthenticated caller learns nothing about which paths exist). Tokens are compared as
 * SHA-256 digests with timingSafeEqual, so neither length nor content leaks through timing.
 * With `tls` the server speaks HTTPS (the node's transport certificate; no client certificate
 * is asked for, so Kubernetes httpGet probes with `scheme: HTTPS` work).
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerOptions,
  type ServerResponse,
} from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import net from 'node:net'
import { ErrorCodes, InvalidOptionError, ShoalError, type ErrorCode } from '../errors.ts'

/** What a liveness or readiness check returns; `detail` is merged into the JSON body. */
export interface HealthResult {
  ok: boolean
  detail?: Record<string, unknown>
}

export interface RouteRequest {
  readonly method: 'GET' | 'HEAD' | 'POST'
  readonly url: URL
  readonly headers: IncomingHttpHeaders
  /** Aborted when the client goes away or the handler timed out. */
  readonly signal: AbortSignal
  /** POST routes: the whole request body (at most the route's maxBodyBytes). Empty otherwise. */
  readonly body: Buffer
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

/** A route that takes POST with a body (anything else on its path is 405). */
export interface PostRoute {
  readonly method: 'POST'
  readonly handler: RouteHandler
  /** Largest body accepted; above it 413. @default 1 MiB ({@link DEFAULT_HTTP_MAX_BODY_BYTES}) */
  readonly maxBodyBytes?: number
  /**
   * Media types accepted (lower case, without parameters); any other Content-Type is 415. A
   * request without one is accepted. @default any
   */
  readonly contentTypes?: readonly string[]
  /** Overrides the server's handlerTimeoutMs for this route (counted after the body was read). */
  readonly handlerTimeoutMs?: number
}

/** A GET route with options (a plain RouteHandler is a GET route without them). */
export interface GetRoute {
  readonly method: 'GET'
  readonly handler: RouteHandler
  /**
   * Served without the token even when auth is on. Only for content that reveals nothing about
   * the cluster: a browser cannot send a bearer token when it navigates to a page, so the
   * dashboard's page, script and style sheet are public and the data they fetch is not. Exact
   * paths only. @default false
   */
  readonly public?: boolean
}

/**
 * The open response of a StreamRoute. Writes after the client went away, or after end(), are
 * dropped.
 */
export interface ResponseStream {
  /** Write a chunk; false when it was dropped or the client is not keeping up (kernel buffer full). */
  write(chunk: string): boolean
  /** Bytes written and not yet handed to the kernel (a slow client makes this grow). */
  readonly bufferedBytes: number
  /** End the response. */
  end(): void
  /** Aborted when the client goes away, the response ends or the server closes. */
  readonly signal: AbortSignal
}

export type StreamHandler = (request: RouteRequest, stream: ResponseStream) => void

/**
 * A GET route that answers 200 with `headers` at once and keeps the response open for `stream`
 * to write to (Server-Sent Events, with `content-type: text/event-stream`). HEAD gets the
 * headers and no body. An exception from `stream` ends the response (and is logged).
 */
export interface StreamRoute {
  readonly method: 'GET'
  readonly stream: StreamHandler
  readonly headers?: Readonly<Record<string, string>>
}

/** Bearer-token access control (see the module comment). */
export interface HttpAuthOptions {
  /** The cluster token every protected request must present. */
  token: string
  /** Protect /metrics too. @default false */
  metrics?: boolean
}

/** HTTPS: the node's certificate chain and key (PEM). */
export interface HttpTlsOptions {
  cert: string | Buffer
  key: string | Buffer
}

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
  routes?: ReadonlyMap<string, RouteHandler | PostRoute | GetRoute | StreamRoute>
  /** @default 5000 */
  handlerTimeoutMs?: number
  /**
   * Time to receive a whole request, headers and body (node's requestTimeout); raise it for
   * large POST bodies from slow clients. @default 15000
   */
  requestTimeoutMs?: number
  /** Require a bearer token (undefined: every endpoint is open). */
  auth?: HttpAuthOptions
  /** Serve HTTPS instead of HTTP. */
  tls?: HttpTlsOptions
  logger?: HttpErrorLogger
}

export interface HttpServer {
  /** host:port actually bound ([v6]:port for IPv6). */
  readonly address: string
  readonly host: string
  readonly port: number
  readonly scheme: 'http' | 'https'
  /** Stop listening and close every connection, keep-alive ones included. Idempotent. */
  close(): Promise<void>
}

export const DEFAULT_HTTP_HANDLER_TIMEOUT_MS = 5000
export const DEFAULT_HTTP_REQUEST_TIMEOUT_MS = 15_000
/** A POST route's body limit unless it sets its own. */
export const DEFAULT_HTTP_MAX_BODY_BYTES = 1024 * 1024

const BUILTIN_PATHS = ['/healthz', '/readyz', '/metrics', '/status'] as const
/** Never behind the token: orchestrators probe these without credentials. */
const ALWAYS_OPEN: ReadonlySet<string> = new Set(['/healthz', '/readyz'])

interface Route {
  method: 'GET' | 'POST'
  handler: RouteHandler
  maxBodyBytes: number
  contentTypes: ReadonlySet<string> | null
  timeoutMs: number
  stream: { handler: StreamHandler; headers: Readonly<Record<string, string>> } | null
}

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
  const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_HTTP_REQUEST_TIMEOUT_MS
  if (!Number.isSafeInteger(options.port) || options.port < 0 || options.port > 65535) {
    throw new InvalidOptionError(
      `options.port must be an integer in [0, 65535] (got ${String(options.port)})`,
    )
  }
  positiveInt('options.handlerTimeoutMs', timeoutMs)
  positiveInt('options.requestTimeoutMs', requestTimeoutMs)
  const auth = options.auth
  if (auth !== undefined && (typeof auth.token !== 'string' || auth.token === '')) {
    throw new InvalidOptionError('options.auth.token must be a non-empty string')
  }
  const expectedDigest = auth === undefined ? null : sha256(auth.token)
  const publicPaths = new Set<string>()
  const isOpen = (pathname: string): boolean =>
    auth === undefined ||
    ALWAYS_OPEN.has(pathname) ||
    publicPaths.has(pathname) ||
    (pathname === '/metrics' && auth.metrics !== true)

  const exact = new Map<string, Route>()
  const prefixes: Array<[string, Route]> = []
  const get = (handler: RouteHandler): Route => ({
    method: 'GET',
    handler,
    maxBodyBytes: 0,
    contentTypes: null,
    timeoutMs,
    stream: null,
  })
  const builtins: Record<(typeof BUILTIN_PATHS)[number], RouteHandler> = {
    '/healthz': async () => health(await options.liveness(), 'unhealthy'),
    '/readyz': async () => health(await options.readiness(), 'not-ready'),
    '/metrics': async () => {
      const text = await options.registry.metrics()
      return { body: text, headers: { 'content-type': options.registry.contentType } }
    },
    '/status': async () => ({ body: (await options.status()) ?? null }),
  }
  for (const p of BUILTIN_PATHS) exact.set(p, get(builtins[p]))
  for (const [p, spec] of options.routes ?? []) {
    if (!p.startsWith('/')) throw new InvalidOptionError(`route ${JSON.stringify(p)} must start with '/'`)
    if (exact.has(p) || prefixes.some(([q]) => q === p)) {
      throw new InvalidOptionError(`route ${JSON.stringify(p)} is already served`)
    }
    const route =
      typeof spec === 'function'
        ? get(spec)
        : spec.method === 'GET'
          ? getRoute(p, spec, get)
          : postRoute(p, spec, timeoutMs)
    if (typeof spec !== 'function' && 'public' in spec && spec.public === true) {
      if (p.endsWith('/') && p.length > 1) {
        throw new InvalidOptionError(`route ${JSON.stringify(p)}: a public route must be an exact path`)
      }
      publicPaths.add(p)
    }
    if (p.endsWith('/') && p.length > 1) prefixes.push([p, route])
    else exact.set(p, route)
  }
  prefixes.sort((a, b) => b[0].length - a[0].length)

  const route = (pathname: string): Route | undefined =>
    exact.get(pathname) ?? prefixes.find(([p]) => pathname.startsWith(p))?.[1]

  const serverOptions: ServerOptions = {
    requestTimeout: requestTimeoutMs,
    headersTimeout: Math.min(10_000, requestTimeoutMs),
    keepAliveTimeout: 5000,
  }
  const server: Server =
    options.tls === undefined
      ? createServer(serverOptions)
      : createHttpsServer({ ...serverOptions, cert: options.tls.cert, key: options.tls.key })

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const ac = new AbortController()
    res.once('close', () => ac.abort(new Error('response closed')))
    let isHead = req.method === 'HEAD'
    let timer: NodeJS.Timeout | undefined
    try {
      const url = new URL(req.url ?? '/', 'http://localhost')
      if (!isOpen(url.pathname)) checkBearer(req.headers.authorization, expectedDigest!)
      const r = route(url.pathname)
      if (r === undefined) {
        throw new HttpStatusError(404, ErrorCodes.HTTP_NOT_FOUND, `no route for ${url.pathname}`)
      }
      let body: Buffer = EMPTY
      if (r.method === 'GET') {
        if (req.method !== 'GET' && req.method !== 'HEAD') {
          throw new HttpStatusError(
            405,
            ErrorCodes.HTTP_METHOD_NOT_ALLOWED,
            `${String(req.method)} is not allowed on ${url.pathname}; use GET`,
            { allow: 'GET, HEAD' },
          )
        }
        if (r.stream !== null) {
          openStream(req, res, r.stream, url, isHead, ac, options.logger)
          return
        }
      } else {
        isHead = false
        if (req.method !== 'POST') {
          throw new HttpStatusError(
            405,
            ErrorCodes.HTTP_METHOD_NOT_ALLOWED,
            `${String(req.method)} is not allowed on ${url.pathname}; use POST`,
            { allow: 'POST' },
          )
        }
        checkContent(req.headers, r, url.pathname)
        body = await readBody(req, r.maxBodyBytes, url.pathname)
      }
      const method = r.method === 'POST' ? 'POST' : isHead ? 'HEAD' : 'GET'
      const timeout = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => {
          reject(
            new HttpStatusError(
              503,
              ErrorCodes.TIMEOUT,
              `handler for ${url.pathname} did not answer in ${r.timeoutMs} ms`,
            ),
          )
        }, r.timeoutMs)
        timer.unref()
      })
      const result = await Promise.race([
        Promise.resolve().then(() =>
          r.handler({ method, url, headers: req.headers, signal: ac.signal, body }),
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
  // A failed TLS handshake (a plain-HTTP client, an untrusted certificate) only ends that socket.
  server.on('tlsClientError', () => {})

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
    scheme: options.tls === undefined ? 'http' : 'https',
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      })
      return closing
    },
  }
}

const EMPTY: Buffer = Buffer.alloc(0)

function positiveInt(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new InvalidOptionError(`${name} must be a positive integer (got ${String(value)})`)
  }
}

function getRoute(path: string, spec: GetRoute | StreamRoute, get: (h: RouteHandler) => Route): Route {
  if ('stream' in spec) {
    if (typeof spec.stream !== 'function') {
      throw new InvalidOptionError(`route ${JSON.stringify(path)}: stream must be a function`)
    }
    return {
      ...get(() => ({ status: 500 })),
      stream: { handler: spec.stream, headers: spec.headers ?? {} },
    }
  }
  if (typeof spec.handler !== 'function') {
    throw new InvalidOptionError(`route ${JSON.stringify(path)}: handler must be a function`)
  }
  return get(spec.handler)
}

/** Answer 200 with the stream route's headers and hand the open response to its handler. */
function openStream(
  req: IncomingMessage,
  res: ServerResponse,
  route: NonNullable<Route['stream']>,
  url: URL,
  isHead: boolean,
  ac: AbortController,
  logger: HttpErrorLogger | undefined,
): void {
  res.statusCode = 200
  res.setHeader('cache-control', 'no-store')
  // Proxies (nginx) must not buffer the stream.
  res.setHeader('x-accel-buffering', 'no')
  for (const [k, v] of Object.entries(route.headers)) res.setHeader(k, v)
  if (isHead) {
    res.end()
    return
  }
  res.flushHeaders()
  const stream: ResponseStream = {
    write(chunk) {
      if (ac.signal.aborted || res.writableEnded || res.destroyed) return false
      return res.write(chunk)
    },
    get bufferedBytes() {
      return res.writableLength
    },
    end() {
      if (!res.writableEnded) res.end()
      ac.abort(new Error('stream ended'))
    },
    signal: ac.signal,
  }
  try {
    route.handler({ method: 'GET', url, headers: req.headers, signal: ac.signal, body: EMPTY }, stream)
  } catch (err) {
    logger?.error({ err, path: req.url }, 'http stream handler failed')
    stream.end()
  }
}

function postRoute(path: string, spec: PostRoute, defaultTimeoutMs: number): Route {
  if (spec.method !== 'POST') {
    throw new InvalidOptionError(
      `route ${JSON.stringify(path)}: method must be 'POST' (got ${JSON.stringify(spec.method)})`,
    )
  }
  const maxBodyBytes = spec.maxBodyBytes ?? DEFAULT_HTTP_MAX_BODY_BYTES
  positiveInt(`route ${JSON.stringify(path)}: maxBodyBytes`, maxBodyBytes)
  const timeoutMs = spec.handlerTimeoutMs ?? defaultTimeoutMs
  positiveInt(`route ${JSON.stringify(path)}: handlerTimeoutMs`, timeoutMs)
  return {
    method: 'POST',
    handler: spec.handler,
    maxBodyBytes,
    contentTypes:
      spec.contentTypes === undefined ? null : new Set(spec.contentTypes.map((t) => t.toLowerCase())),
    timeoutMs,
    stream: null,
  }
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest()
}

/** Throws 401 unless `header` is `Bearer <token>` with the expected token's digest. */
function checkBearer(header: string | undefined, expected: Buffer): void {
  const m = header === undefined ? null : /^bearer[ \t]+(\S.*)$/i.exec(header)
  if (m === null) {
    throw new HttpStatusError(
      401,
      ErrorCodes.HTTP_UNAUTHORIZED,
      'this endpoint needs the cluster token: send Authorization: Bearer <token>',
      { 'www-authenticate': 'Bearer realm="shoal"' },
    )
  }
  // Equal-length digests: timingSafeEqual never throws, and the token's length does not leak.
  if (!timingSafeEqual(sha256(m[1]!.trimEnd()), expected)) {
    throw new HttpStatusError(401, ErrorCodes.HTTP_UNAUTHORIZED, 'wrong token', {
      'www-authenticate': 'Bearer realm="shoal", error="invalid_token"',
    })
  }
}

/** 415 for an unlisted Content-Type or any Content-Encoding; 413 for a declared length above the limit. */
function checkContent(headers: IncomingHttpHeaders, r: Route, path: string): void {
  const encoding = headers['content-encoding']?.trim().toLowerCase()
  if (encoding !== undefined && encoding !== '' && encoding !== 'identity') {
    throw new HttpStatusError(
      415,
      ErrorCodes.HTTP_BAD_REQUEST,
      `Content-Encoding ${JSON.stringify(encoding)} is not supported on ${path}; send the body uncompressed`,
      { connection: 'close' },
    )
  }
  const type = headers['content-type']?.split(';')[0]?.trim().toLowerCase()
  if (r.contentTypes !== null && type !== undefined && type !== '' && !r.contentTypes.has(type)) {
    throw new HttpStatusError(
      415,
      ErrorCodes.HTTP_BAD_REQUEST,
      `Content-Type ${JSON.stringify(type)} is not accepted on ${path}; use one of ${[...r.contentTypes].join(', ')}`,
      { connection: 'close' },
    )
  }
  const declared = headers['content-length']
  if (declared !== undefined && Number(declared) > r.maxBodyBytes) {
    throw tooLarge(r.maxBodyBytes, path)
  }
}

function tooLarge(maxBodyBytes: number, path: string): HttpStatusError {
  return new HttpStatusError(
    413,
    ErrorCodes.HTTP_BAD_REQUEST,
    `the body of a request to ${path} may be at most ${maxBodyBytes} bytes; split it`,
    // The rest of the body is not read: the connection cannot be reused.
    { connection: 'close' },
  )
}

/** The whole body, or a 413 as soon as it passes maxBodyBytes (the rest is never buffered). */
function readBody(req: IncomingMessage, maxBodyBytes: number, path: string): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const done = (): void => {
      req.off('data', onData)
      req.off('end', onEnd)
      req.off('error', onError)
      req.off('close', onClose)
    }
    const onData = (chunk: Buffer): void => {
      size += chunk.length
      if (size > maxBodyBytes) {
        done()
        req.pause()
        reject(tooLarge(maxBodyBytes, path))
        return
      }
      chunks.push(chunk)
    }
    const onEnd = (): void => {
      done()
      resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size))
    }
    const onError = (err: Error): void => {
      done()
      reject(new HttpStatusError(400, ErrorCodes.HTTP_BAD_REQUEST, `request body failed: ${err.message}`))
    }
    const onClose = (): void => {
      if (req.complete) return
      done()
      reject(new HttpStatusError(400, ErrorCodes.HTTP_BAD_REQUEST, 'the request body ended early'))
    }
    req.on('data', onData)
    req.on('end', onEnd)
    req.on('error', onError)
    req.on('close', onClose)
  })
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
