/**
 * Shoal's error model. Every error a caller can see carries a stable `code` from
 * {@link ErrorCodes}; branch on `code` or `instanceof`, never on message text.
 * Codes are never reused once retired.
 */

export const ErrorCodes = {
  /** An option or configuration value is invalid. */
  INVALID_OPTION: 'SHOAL_ERR_INVALID_OPTION',
  /** A frame declared a length above maxFrameBytes; nothing beyond the header was buffered. */
  FRAME_TOO_LARGE: 'SHOAL_ERR_FRAME_TOO_LARGE',
  /** A frame's header is invalid (zero length) or the stream ended inside a frame. */
  MALFORMED_FRAME: 'SHOAL_ERR_MALFORMED_FRAME',
  /** A frame's payload is not a valid envelope or its body does not match its kind. */
  MALFORMED_MESSAGE: 'SHOAL_ERR_MALFORMED_MESSAGE',
  /** The envelope names a message kind this node does not know. */
  UNKNOWN_KIND: 'SHOAL_ERR_UNKNOWN_KIND',
  /** The envelope or handshake names a protocol version this node does not speak. */
  UNSUPPORTED_VERSION: 'SHOAL_ERR_UNSUPPORTED_VERSION',
  /** The handshake was refused: missing or wrong cluster token. */
  AUTH_FAILED: 'SHOAL_ERR_AUTH_FAILED',
  /** The peer broke the handshake protocol (wrong first message, duplicate hello, ...). */
  HANDSHAKE_FAILED: 'SHOAL_ERR_HANDSHAKE_FAILED',
  /** The handshake did not complete in time. */
  HANDSHAKE_TIMEOUT: 'SHOAL_ERR_HANDSHAKE_TIMEOUT',
  /** A connection attempt did not complete in time. */
  CONNECT_TIMEOUT: 'SHOAL_ERR_CONNECT_TIMEOUT',
  /** A connection could not be established (refused, unreachable, DNS). */
  CONNECT_FAILED: 'SHOAL_ERR_CONNECT_FAILED',
  /** TLS negotiation or certificate verification failed. */
  TLS_FAILED: 'SHOAL_ERR_TLS_FAILED',
  /** The connection failed or was reset by the peer. */
  CONNECTION_LOST: 'SHOAL_ERR_CONNECTION_LOST',
  /** Nothing was received for longer than idleTimeoutMs. */
  IDLE_TIMEOUT: 'SHOAL_ERR_IDLE_TIMEOUT',
  /** The outbound queue is at its hard limit; the message was not accepted. */
  QUEUE_FULL: 'SHOAL_ERR_QUEUE_FULL',
  /** The component was closed; the operation cannot proceed. */
  CLOSED: 'SHOAL_ERR_CLOSED',
  /** The operation was aborted through its AbortSignal. */
  ABORTED: 'SHOAL_ERR_ABORTED',
  /** The peer refused or ended the connection with a Control error. */
  PEER_ERROR: 'SHOAL_ERR_PEER_ERROR',
  /** The transport's underlying library reported an error not covered by another code. */
  TRANSPORT: 'SHOAL_ERR_TRANSPORT',
  /** A remote call (e.g. a gRPC health Check) did not complete before its deadline. */
  DEADLINE_EXCEEDED: 'SHOAL_ERR_DEADLINE_EXCEEDED',
  /** A well-formed message whose fields are invalid for its op (bad control command, bad request). */
  BAD_MESSAGE: 'SHOAL_ERR_BAD_MESSAGE',
  /** The sender's assignment epoch is stale: it no longer owns what it acted on. */
  FENCED: 'SHOAL_ERR_FENCED',
  /** The receiving worker does not own the partition (re-route with a fresh routing table). */
  NOT_OWNER: 'SHOAL_ERR_NOT_OWNER',
  /** A coordinator replica that does not lead (a standby, or a deposed leader). */
  NOT_LEADER: 'SHOAL_ERR_NOT_LEADER',
  /** No coordinator leads right now (failover in progress): retry. */
  NO_COORDINATOR: 'SHOAL_ERR_NO_COORDINATOR',
  /** The node is not registered with, or not known to, the coordinator. */
  NOT_REGISTERED: 'SHOAL_ERR_NOT_REGISTERED',
  /** A request did not get its reply in time. */
  TIMEOUT: 'SHOAL_ERR_TIMEOUT',
  /** The job module failed to load, or a processing task failed outside the job's own code. */
  JOB_FAILED: 'SHOAL_ERR_JOB_FAILED',
  /** A job module cannot be used: missing file, syntax error, a throw at import, or no default export that is a job; found before the node starts. */
  JOB_INVALID: 'SHOAL_ERR_JOB_INVALID',
  /** The partition is paused by the coordinator; retry later. */
  PAUSED: 'SHOAL_ERR_PAUSED',
  /** The state backend is unreachable or not ready (connection lost, server loading, disk error); retryable. */
  STATE_UNAVAILABLE: 'SHOAL_ERR_STATE_UNAVAILABLE',
  /** A state operation met a key holding another kind of value (e.g. incrBy on non-integer bytes). */
  STATE_WRONG_TYPE: 'SHOAL_ERR_STATE_WRONG_TYPE',
  /** A state key is malformed, or a batch names a key outside its partition or a key twice. */
  STATE_BAD_KEY: 'SHOAL_ERR_STATE_BAD_KEY',
  /** The state backend refused a command (permissions, out of memory, corrupt data); not retryable. */
  STATE_BACKEND: 'SHOAL_ERR_STATE_BACKEND',
  /** A replay-log append or checkpoint was applied on the primary but not confirmed by the requested replicas/AOF fsyncs in time (WAIT/WAITAOF); retryable. */
  DURABILITY_TIMEOUT: 'SHOAL_ERR_DURABILITY_TIMEOUT',
  /** A checkpoint was not committed (its staged data was incomplete or the partition's checkpoint changed under it); nothing was committed; retryable. */
  CHECKPOINT_ABORTED: 'SHOAL_ERR_CHECKPOINT_ABORTED',
  /** The node's configuration (flags, SHOAL_* environment, config file) is invalid; `data.problems` lists every problem. */
  CONFIG_INVALID: 'SHOAL_ERR_CONFIG_INVALID',
  /** A listener could not bind its address (in use, permission denied, unknown host). */
  LISTEN_FAILED: 'SHOAL_ERR_LISTEN_FAILED',
  /** An unexpected failure inside Shoal, e.g. an HTTP route handler threw. */
  INTERNAL: 'SHOAL_ERR_INTERNAL',
  /** HTTP: no route for the requested path. */
  HTTP_NOT_FOUND: 'SHOAL_ERR_HTTP_NOT_FOUND',
  /** HTTP: the route exists but does not accept the request method (only GET and HEAD are served). */
  HTTP_METHOD_NOT_ALLOWED: 'SHOAL_ERR_HTTP_METHOD_NOT_ALLOWED',
  /** HTTP: a token is set and the request has no `Authorization: Bearer` header or a wrong token. */
  HTTP_UNAUTHORIZED: 'SHOAL_ERR_HTTP_UNAUTHORIZED',
  /** HTTP: the request body is malformed (e.g. bad NDJSON lines in POST /events); nothing of it was applied. */
  HTTP_BAD_REQUEST: 'SHOAL_ERR_HTTP_BAD_REQUEST',
  /** A sink's system (Redis, Postgres, a file) cannot be written now; retried with backoff. */
  SINK_UNAVAILABLE: 'SHOAL_ERR_SINK_UNAVAILABLE',
  /** A sink's system refused a record for good (too large, constraint, type); it goes to the dead letter. */
  SINK_REJECTED: 'SHOAL_ERR_SINK_REJECTED',
  /** A sink's target does not fit (a table with missing or wrong columns, a key of another type); a startup error. */
  SINK_SCHEMA: 'SHOAL_ERR_SINK_SCHEMA',
  /** A source's system (e.g. Redis) cannot be read now; retried with backoff. */
  SOURCE_UNAVAILABLE: 'SHOAL_ERR_SOURCE_UNAVAILABLE',
  /** A source entry cannot be decoded or has no key; it goes to the dead-letter stream. */
  SOURCE_DECODE: 'SHOAL_ERR_SOURCE_DECODE',
  /** A batch overlaps what its producer already applied and does not number its events (eventSequences), so the overlap cannot be dropped; not applied, not retryable. */
  SEQUENCE_OVERLAP: 'SHOAL_ERR_SEQUENCE_OVERLAP',
  /** A worker's job, sources or sinks differ from the cluster's; it is refused at join. */
  CONFIG_MISMATCH: 'SHOAL_ERR_CONFIG_MISMATCH',
} as const

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes]

const ALL_CODES: ReadonlySet<string> = new Set(Object.values(ErrorCodes))
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && ALL_CODES.has(value)
}

const kShoalError = Symbol.for('shoal.error')

export interface ShoalErrorOptions {
  cause?: unknown
  retryable?: boolean
  data?: Record<string, unknown>
}

export class ShoalError extends Error {
  readonly code: ErrorCode
  readonly retryable: boolean
  readonly data: Record<string, unknown> | undefined
  declare readonly [kShoalError]: true

  constructor(code: ErrorCode, message: string, options: ShoalErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = new.target.name
    this.code = code
    this.retryable = options.retryable ?? false
    this.data = options.data
    Object.defineProperty(this, kShoalError, { value: true })
  }

  /** `instanceof` works across duplicate installs of the package (undici, Temporal). */
  static override [Symbol.hasInstance](value: unknown): boolean {
    if (this !== ShoalError) return Function.prototype[Symbol.hasInstance].call(this, value)
    return (
      typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[kShoalError] === true
    )
  }

  /** Errors cross threads and the wire as plain objects and are rebuilt on arrival. */
  toJSON(): SerializedError {
    return {
      name: this.name,
      code: this.code,
      message: this.message,
      retryable: this.retryable,
      data: this.data,
    }
  }
}

export interface SerializedError {
  name: string
  code: ErrorCode
  message: string
  retryable: boolean
  data?: Record<string, unknown> | undefined
}

export class InvalidOptionError extends ShoalError {
  constructor(message: string, options?: ShoalErrorOptions) {
    super(ErrorCodes.INVALID_OPTION, message, options)
  }
}

/** Frame- and message-level violations. The connection that produced one is closed. */
export class ProtocolError extends ShoalError {}

export class FrameTooLargeError extends ProtocolError {
  constructor(declared: number, max: number) {
    super(ErrorCodes.FRAME_TOO_LARGE, `frame of ${declared} bytes exceeds maxFrameBytes (${max})`, {
      data: { declared, max },
    })
  }
}

export class TransportError extends ShoalError {}
export class ConnectTimeoutError extends TransportError {
  constructor(address: string, timeoutMs: number) {
    super(ErrorCodes.CONNECT_TIMEOUT, `connect to ${address} timed out after ${timeoutMs} ms`, {
      retryable: true,
    })
  }
}
export class TransportClosedError extends TransportError {
  constructor(message = 'connection is closed', options?: ShoalErrorOptions) {
    super(ErrorCodes.CLOSED, message, options)
  }
}
export class QueueFullError extends TransportError {
  constructor(limit: number) {
    super(
      ErrorCodes.QUEUE_FULL,
      `outbound queue is full (${limit} bytes); wait for drain before sending more`,
      {
        retryable: true,
        data: { limit },
      },
    )
  }
}

export class AbortedError extends ShoalError {
  constructor(reason?: unknown) {
    super(ErrorCodes.ABORTED, 'operation aborted', { cause: reason })
  }
}

/** Rebuild an error that crossed a thread or the wire. Unknown codes become TRANSPORT errors. */
export function reviveError(plain: unknown): ShoalError {
  if (typeof plain === 'object' && plain !== null) {
    const p = plain as Partial<SerializedError>
    const code = isErrorCode(p.code) ? p.code : ErrorCodes.TRANSPORT
    const err = new ShoalError(code, typeof p.message === 'string' ? p.message : 'unknown error', {
      retryable: p.retryable === true,
      ...(p.data !== undefined && typeof p.data === 'object' && p.data !== null ? { data: p.data } : {}),
    })
    if (typeof p.name === 'string') err.name = p.name
    return err
  }
  return new ShoalError(ErrorCodes.TRANSPORT, String(plain))
}
