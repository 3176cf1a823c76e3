/**
 * Native gRPC health checking (grpc.health.v1.Health) for Shoal's gRPC servers, and typed client
 * helpers for probes and tests.
 *
 * Server side: a thin wrapper over grpc-health-check's HealthImplementation. Every name starts
 * NOT_SERVING; readiness (registered, partitions restored, state backend reachable) flips ''
 * (what Kubernetes' gRPC probe and grpc_health_probe ask by default) and 'shoal.v1.Shoal'
 * together with one `setServing(ready)` call.
 *
 * Client side: `checkHealth` (unary Check) and `watchHealth` (server-streaming Watch), built on
 * `grpc.Client` with the request/response serializers of grpc-health-check's own definition,
 * so no untyped client object leaks out. Failures are ShoalErrors:
 *   UNAVAILABLE        -> SHOAL_ERR_CONNECTION_LOST (retryable)
 *   DEADLINE_EXCEEDED  -> SHOAL_ERR_DEADLINE_EXCEEDED (retryable)
 *   cancelled by signal-> SHOAL_ERR_ABORTED
 *   any other status   -> SHOAL_ERR_TRANSPORT, with `grpcCode` (e.g. NOT_FOUND for an unknown service)
 */
import * as grpc from '@grpc/grpc-js'
import { HealthImplementation, service as healthServiceDefinition } from 'grpc-health-check'
import {
  AbortedError,
  ErrorCodes,
  InvalidOptionError,
  TransportError,
  type ShoalError,
} from '../../errors.ts'
import { SHOAL_SERVICE_NAME } from './proto.ts'

/** A status a server can be set to. */
export type ServingStatus = 'SERVING' | 'NOT_SERVING'
/** A status a client can observe: `SERVICE_UNKNOWN` only from Watch, for a name not (yet) registered. */
export type HealthStatus = 'UNKNOWN' | 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN'
const HEALTH_STATUSES: ReadonlySet<string> = new Set(['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'])

export const HEALTH_SERVICE_NAME = 'grpc.health.v1.Health'

// -------------------------------------------------------------------------------------------
// Server side.

export interface HealthServiceOptions {
  /**
   * Further service names that follow `setServing` together with '' and 'shoal.v1.Shoal'.
   * @default []
   */
  services?: readonly string[]
}

export interface HealthService {
  /** Register grpc.health.v1.Health on a server (next to the Shoal service). Call before bindAsync. */
  addToServer(server: grpc.Server): void
  /** Readiness: sets '' and 'shoal.v1.Shoal' (and `options.services`) to SERVING or NOT_SERVING. */
  setServing(ready: boolean): void
  /** Set one name independently (it becomes known to Check from then on). */
  setStatus(service: string, status: ServingStatus): void
  /** The status last set for a name; undefined when never set (Check answers NOT_FOUND). */
  getStatus(service: string): ServingStatus | undefined
  /** Whether the last setServing call was `true`. */
  readonly serving: boolean
  /** The names `setServing` controls. */
  readonly services: readonly string[]
}

/** Create the health service. Every controlled name starts NOT_SERVING. */
export function createHealthService(options: HealthServiceOptions = {}): HealthService {
  const names = [...new Set(['', SHOAL_SERVICE_NAME, ...(options.services ?? [])])]
  const statuses = new Map<string, ServingStatus>(names.map((n) => [n, 'NOT_SERVING']))
  const impl = new HealthImplementation(Object.fromEntries(statuses))
  let serving = false

  const setStatus = (service: string, status: ServingStatus): void => {
    if (typeof service !== 'string') {
      throw new InvalidOptionError(`service must be a string (got ${typeof service})`)
    }
    if (status !== 'SERVING' && status !== 'NOT_SERVING') {
      throw new InvalidOptionError(`status must be SERVING or NOT_SERVING (got ${String(status)})`)
    }
    // HealthImplementation notifies watchers on every call; only real changes are streamed.
    if (statuses.get(service) === status) return
    statuses.set(service, status)
    impl.setStatus(service, status)
  }

  return {
    addToServer(server) {
      impl.addToServer(server)
    },
    setServing(ready) {
      serving = ready
      for (const name of names) setStatus(name, ready ? 'SERVING' : 'NOT_SERVING')
    },
    setStatus,
    getStatus: (service) => statuses.get(service),
    get serving() {
      return serving
    },
    services: Object.freeze(names),
  }
}

// -------------------------------------------------------------------------------------------
// Client side.

/** A failed health RPC. `code` is the Shoal code; `grpcCode` is the gRPC status it came from. */
export class GrpcCallError extends TransportError {
  readonly grpcCode: grpc.status
  constructor(
    code: ShoalError['code'],
    message: string,
    grpcCode: grpc.status,
    options: { retryable?: boolean; cause?: unknown } = {},
  ) {
    super(code, message, { ...options, data: { grpcCode, grpcStatus: grpc.status[grpcCode] } })
    this.grpcCode = grpcCode
  }
}

/** Map a grpc-js call error to a ShoalError (see the module comment for the mapping). */
export function fromGrpcError(err: grpc.ServiceError | grpc.StatusObject, what: string): GrpcCallError {
  const name = grpc.status[err.code] ?? String(err.code)
  const message = `${what}: ${name} ${err.details}`
  if (err.code === grpc.status.UNAVAILABLE) {
    return new GrpcCallError(ErrorCodes.CONNECTION_LOST, message, err.code, { retryable: true, cause: err })
  }
  if (err.code === grpc.status.DEADLINE_EXCEEDED) {
    return new GrpcCallError(ErrorCodes.DEADLINE_EXCEEDED, message, err.code, { retryable: true, cause: err })
  }
  return new GrpcCallError(ErrorCodes.TRANSPORT, message, err.code, { cause: err })
}

interface HealthRequest {
  service: string
}

function methodOf(name: 'Check' | 'Watch') {
  const method = healthServiceDefinition[name]
  if (method === undefined) {
    throw new TransportError(
      ErrorCodes.TRANSPORT,
      `grpc-health-check does not define ${HEALTH_SERVICE_NAME}/${name}`,
    )
  }
  return {
    path: method.path,
    serialize: (req: HealthRequest): Buffer => method.requestSerialize(req),
    deserialize: (buf: Buffer): HealthStatus => toHealthStatus(method.responseDeserialize(buf)),
  }
}

/** Narrow a decoded HealthCheckResponse (enums as strings) to a HealthStatus. */
function toHealthStatus(res: unknown): HealthStatus {
  const status = typeof res === 'object' && res !== null ? (res as { status?: unknown }).status : undefined
  return typeof status === 'string' && HEALTH_STATUSES.has(status) ? (status as HealthStatus) : 'UNKNOWN'
}

const CHECK = methodOf('Check')
const WATCH = methodOf('Watch')

/**
 * Channel options for one-shot health clients: a private subchannel pool, so closing the
 * client closes its connection, and no retries (a probe reports, it does not insist).
 */
const PROBE_CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.use_local_subchannel_pool': 1,
  'grpc.enable_retries': 0,
}

export interface CheckHealthOptions {
  signal?: AbortSignal
  /** @default grpc.credentials.createInsecure() (Kubernetes' gRPC probe is plaintext only) */
  credentials?: grpc.ChannelCredentials
}

/**
 * One health Check against `addr` (`host:port`) for `service` ('' = the whole server). Resolves
 * with the status; rejects with a ShoalError (connection refused fails at once with
 * CONNECTION_LOST, it does not wait for the deadline).
 */
export function checkHealth(
  addr: string,
  service = '',
  timeoutMs = 1000,
  options: CheckHealthOptions = {},
): Promise<HealthStatus> {
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    return Promise.reject(new InvalidOptionError(`timeoutMs must be > 0 (got ${timeoutMs})`))
  }
  const { signal } = options
  if (signal?.aborted) return Promise.reject(new AbortedError(signal.reason))
  let client: grpc.Client
  try {
    client = new grpc.Client(
      addr,
      options.credentials ?? grpc.credentials.createInsecure(),
      PROBE_CHANNEL_OPTIONS,
    )
  } catch (err) {
    return Promise.reject(new InvalidOptionError(`invalid address ${JSON.stringify(addr)}`, { cause: err }))
  }
  return new Promise<HealthStatus>((resolve, reject) => {
    let aborted = false
    const call = client.makeUnaryRequest(
      CHECK.path,
      CHECK.serialize,
      CHECK.deserialize,
      { service },
      new grpc.Metadata(),
      { deadline: Date.now() + timeoutMs },
      (err, status) => {
        signal?.removeEventListener('abort', onAbort)
        client.close()
        if (aborted) reject(new AbortedError(signal?.reason))
        else if (err !== null)
          reject(fromGrpcError(err, `health Check of ${JSON.stringify(service)} at ${addr}`))
        else resolve(status ?? 'UNKNOWN')
      },
    )
    function onAbort(): void {
      aborted = true
      call.cancel()
    }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

export interface WatchHealthOptions {
  signal?: AbortSignal
  credentials?: grpc.ChannelCredentials
  /**
   * Called once if the stream ends for any reason other than `stop()`/abort (server gone,
   * UNIMPLEMENTED, ...). The watch does not reconnect; start a new one.
   */
  onError?: (err: ShoalError) => void
}

/**
 * Watch `service` at `addr`: `onStatus` receives the current status first (SERVICE_UNKNOWN for
 * a name the server has not registered), then every change. Returns `stop()`, which cancels the
 * stream and closes the channel (idempotent).
 */
export function watchHealth(
  addr: string,
  service: string,
  onStatus: (status: HealthStatus) => void,
  options: WatchHealthOptions = {},
): () => void {
  const { signal, onError } = options
  const client = new grpc.Client(
    addr,
    options.credentials ?? grpc.credentials.createInsecure(),
    PROBE_CHANNEL_OPTIONS,
  )
  const call = client.makeServerStreamRequest(WATCH.path, WATCH.serialize, WATCH.deserialize, { service })
  let stopped = false
  const stop = (): void => {
    if (stopped) return
    stopped = true
    signal?.removeEventListener('abort', stop)
    call.cancel()
    client.close()
  }
  call.on('data', (status: HealthStatus) => {
    if (!stopped) onStatus(status)
  })
  // Every way the stream ends arrives as one 'status' (OK, the server's error, or CANCELLED
  // after stop()); 'error' repeats non-OK statuses and is only swallowed here.
  call.on('error', () => {})
  call.on('status', (st: grpc.StatusObject) => {
    if (stopped) return
    stop()
    onError?.(
      st.code === grpc.status.OK
        ? new TransportError(
            ErrorCodes.CONNECTION_LOST,
            `health Watch of ${JSON.stringify(service)} at ${addr} ended`,
          )
        : fromGrpcError(st, `health Watch of ${JSON.stringify(service)} at ${addr}`),
    )
  })
  if (signal?.aborted) stop()
  else signal?.addEventListener('abort', stop, { once: true })
  return stop
}
