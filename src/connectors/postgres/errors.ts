/**
 * node-postgres failures mapped onto the Sink error contract (sink.ts):
 *
 *   SINK_UNAVAILABLE (retryable)  the server cannot be reached or cannot serve now: Node socket
 *                                 errors, pg's own "Connection terminated" / timeouts, SQLSTATE
 *                                 08 (connection), 53 (resources), 57 (shutdown, cancel,
 *                                 statement_timeout), 58 (I/O), 40001/40P01 (serialization,
 *                                 deadlock), 55P03 (lock timeout), 25P03 (idle in transaction)
 *   SINK_REJECTED                 the data will never be accepted: 22 (data), 23 (constraints),
 *                                 54000 (too large), 21000 (cardinality)
 *   SINK_SCHEMA                   the target does not fit: 42 (undefined table or column, wrong
 *                                 type, no privilege), 3F000 (no such schema), 28 (login
 *                                 refused), 3D000 (no such database)
 *
 * Anything else is SINK_UNAVAILABLE too: the contract treats unknown errors as transient.
 */
import { ErrorCodes, ShoalError } from '../../errors.ts'

/** Node socket and DNS errors that mean "not reachable now". */
const NODE_UNAVAILABLE = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EADDRNOTAVAIL',
])

const UNAVAILABLE_STATES = new Set(['40001', '40P01', '55P03', '25P03', '55006', '55000'])
const REJECTED_STATES = new Set(['54000', '54001', '21000'])
const SCHEMA_STATES = new Set(['3F000', '3D000', '0A000'])

export type SinkErrorKind = 'unavailable' | 'rejected' | 'schema'

interface PgLikeError {
  code?: unknown
  message?: unknown
  table?: unknown
  column?: unknown
  constraint?: unknown
  detail?: unknown
  hint?: unknown
}

/** A five-character SQLSTATE, if the error carries one. */
export function sqlState(err: unknown): string | undefined {
  const code = (err as PgLikeError | null)?.code
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined
}

export function classify(err: unknown): SinkErrorKind {
  const state = sqlState(err)
  if (state !== undefined) {
    const cls = state.slice(0, 2)
    if (UNAVAILABLE_STATES.has(state)) return 'unavailable'
    if (REJECTED_STATES.has(state) || cls === '22' || cls === '23') return 'rejected'
    if (SCHEMA_STATES.has(state) || cls === '42' || cls === '28') return 'schema'
    // 08 connection, 53 resources, 57 operator intervention, 58 system, XX internal, and the rest
    return 'unavailable'
  }
  return 'unavailable'
}

/** Words a reader can act on, for pg's connection-level failures without a SQLSTATE. */
function explain(err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const code = (err as NodeJS.ErrnoException).code
  if (typeof code === 'string' && NODE_UNAVAILABLE.has(code)) return `${code}: ${err.message}`
  if (err.message === 'Query read timeout') return 'no reply within queryTimeoutMs (server hung?)'
  if (err.message.startsWith('timeout exceeded when trying to connect')) {
    return 'no connection within connectTimeoutMs'
  }
  return err.message
}

/** Map any failure of a Postgres operation (`what`, e.g. "upsert into shoal_state") to a ShoalError. */
export function toSinkError(err: unknown, what: string): ShoalError {
  if (err instanceof ShoalError) return err
  const e = (typeof err === 'object' && err !== null ? err : {}) as PgLikeError
  const state = sqlState(err)
  const data: Record<string, unknown> = {}
  if (state !== undefined) data.sqlstate = state
  for (const k of ['table', 'column', 'constraint', 'detail'] as const) {
    if (typeof e[k] === 'string') data[k] = e[k]
  }
  const detail = state === undefined ? explain(err) : `${state} ${String(e.message)}`
  switch (classify(err)) {
    case 'rejected':
      return new ShoalError(ErrorCodes.SINK_REJECTED, `postgres refused ${what}: ${detail}`, {
        cause: err,
        data,
      })
    case 'schema':
      return new ShoalError(ErrorCodes.SINK_SCHEMA, `postgres ${what}: ${detail}`, { cause: err, data })
    case 'unavailable':
      return new ShoalError(ErrorCodes.SINK_UNAVAILABLE, `postgres ${what} failed: ${detail}`, {
        cause: err,
        data,
        retryable: true,
      })
  }
}

/** True when the connection that produced `err` must not go back to the pool. */
export function isConnectionBroken(err: unknown): boolean {
  const state = sqlState(err)
  if (state === undefined) return true // socket errors, timeouts, protocol confusion
  return state.startsWith('08') || state.startsWith('57') || state.startsWith('XX')
}

export function schemaError(message: string, data?: Record<string, unknown>): ShoalError {
  return new ShoalError(ErrorCodes.SINK_SCHEMA, message, data === undefined ? {} : { data })
}

export function rejectedError(
  message: string,
  o: { cause?: unknown; data?: Record<string, unknown> } = {},
): ShoalError {
  return new ShoalError(ErrorCodes.SINK_REJECTED, message, o)
}
