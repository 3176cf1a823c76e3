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
