/**
 * The connection pool and transaction helper shared by the Postgres sinks.
 *
 * - The pool always has an 'error' listener: pg emits 'error' when the server ends an idle
 *   connection (restart, pg_terminate_backend), and without a listener the process dies.
 * - Every way of hanging has a bound: connecting (connectTimeoutMs), a statement on the server
 *   (statement_timeout), and the wait for a reply (query_timeout, for a server that stopped
 *   answering at all). Each surfaces as SINK_UNAVAILABLE, retryable.
 * - A connection that failed at the connection level is destroyed instead of going back to the
 *   pool.
 */
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import pg from 'pg'
import { from as copyFrom } from 'pg-copy-streams'
import { ErrorCodes, InvalidOptionError, ShoalError } from '../../errors.ts'
import { isConnectionBroken, toSinkError } from './errors.ts'

export interface PostgresSinkOptions {
  /** Connections in the pool. @default 4 */
  poolMax?: number
  /** A connection not established after this long fails with SINK_UNAVAILABLE. @default 5000 */
  connectTimeoutMs?: number
  /** The server's statement_timeout for the sink's sessions. @default 60000 */
  statementTimeoutMs?: number
  /** No reply from the server after this long fails with SINK_UNAVAILABLE. @default statementTimeoutMs + 5000 */
  queryTimeoutMs?: number
  /** Rows per INSERT statement (array parameters). @default 10000 */
  chunkRows?: number
  /** From this many rows in one write, rows go through COPY into a staging table. @default 5000 */
  copyThresholdRows?: number
  /**
   * State sink, writes of copyThresholdRows rows and more: split by partition over this many
   * connections, one transaction each (at most poolMax). 1 keeps every call one transaction.
   * @default 1
   */
  parallelism?: number
  /** Called with errors of idle pooled connections (the pool replaces them); no caller sees them otherwise. */
  onConnectionError?: (err: ShoalError) => void
}

export interface ResolvedPostgresSinkOptions extends Required<
  Omit<PostgresSinkOptions, 'onConnectionError'>
> {
  readonly onConnectionError: ((err: ShoalError) => void) | undefined
}

export const DEFAULT_POSTGRES_SINK_OPTIONS = Object.freeze({
  poolMax: 4,
  connectTimeoutMs: 5000,
  statementTimeoutMs: 60_000,
  chunkRows: 10_000,
  copyThresholdRows: 5000,
  parallelism: 1,
})

export function resolvePostgresSinkOptions(
  o: PostgresSinkOptions = {},
): Readonly<ResolvedPostgresSinkOptions> {
  const d = DEFAULT_POSTGRES_SINK_OPTIONS
  const statementTimeoutMs = o.statementTimeoutMs ?? d.statementTimeoutMs
  const r: ResolvedPostgresSinkOptions = {
    poolMax: o.poolMax ?? d.poolMax,
    connectTimeoutMs: o.connectTimeoutMs ?? d.connectTimeoutMs,
    statementTimeoutMs,
    queryTimeoutMs: o.queryTimeoutMs ?? statementTimeoutMs + 5000,
    chunkRows: o.chunkRows ?? d.chunkRows,
    copyThresholdRows: o.copyThresholdRows ?? d.copyThresholdRows,
    parallelism: o.parallelism ?? d.parallelism,
    onConnectionError: o.onConnectionError,
  }
  for (const k of [
    'poolMax',
    'connectTimeoutMs',
    'statementTimeoutMs',
    'queryTimeoutMs',
    'chunkRows',
    'parallelism',
  ] as const) {
    if (!Number.isInteger(r[k]) || r[k] <= 0) {
      throw new InvalidOptionError(`options.${k} must be a positive integer (got ${String(r[k])})`)
    }
  }
  if (!Number.isInteger(r.copyThresholdRows) || r.copyThresholdRows < 0) {
    throw new InvalidOptionError(
      `options.copyThresholdRows must be an integer >= 0 (got ${String(r.copyThresholdRows)})`,
    )
  }
  if (r.parallelism > r.poolMax) {
    throw new RangeError(
      `options.parallelism (${r.parallelism}) must not exceed options.poolMax (${r.poolMax})`,
    )
  }
  if (r.queryTimeoutMs <= r.statementTimeoutMs) {
    throw new RangeError(
      `options.queryTimeoutMs (${r.queryTimeoutMs}) must exceed options.statementTimeoutMs (${r.statementTimeoutMs}), ` +
        'so the server reports its own timeout first',
    )
  }
  return Object.freeze(r)
}

export function createPool(url: string, o: Readonly<ResolvedPostgresSinkOptions>): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max: o.poolMax,
    connectionTimeoutMillis: o.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    statement_timeout: o.statementTimeoutMs,
    query_timeout: o.queryTimeoutMs,
    // A transaction left open by a vanished client would hold its partition locks.
    idle_in_transaction_session_timeout: o.queryTimeoutMs,
    keepAlive: true,
    application_name: 'shoal-sink',
  })
  pool.on('error', (err) => {
    o.onConnectionError?.(toSinkError(err, 'idle connection'))
  })
  return pool
}

/** Run `fn` in one transaction on a pooled connection (see withClient). */
export async function inTransaction<T>(
  pool: pg.Pool,
  what: string,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  return withClient(pool, what, async (client) => {
    await client.query('begin')
    try {
      const result = await fn(client)
      await client.query('commit')
      return result
    } catch (err) {
      // On a broken connection there is nothing to roll back: withClient destroys it.
      if (err instanceof ShoalError || !isConnectionBroken(err))
        await client.query('rollback').catch(() => {})
      throw err
    }
  })
}

/**
 * Run `fn` on a pooled connection. Failures become sink errors (`what` names the operation);
 * a connection broken by the failure is destroyed, not reused.
 */
export async function withClient<T>(
  pool: pg.Pool,
  what: string,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  let client: pg.PoolClient
  try {
    client = await pool.connect()
  } catch (err) {
    throw toSinkError(err, `${what}: connect`)
  }
  // pg emits a checked-out client's socket errors as 'error' events, and the pool listens only
  // while the client is idle: without this listener a server crash mid-query kills the process.
  // The pending query fails with the same error, so recording it is enough.
  let broken: Error | undefined
  const onError = (err: Error): void => {
    broken ??= err
  }
  client.on('error', onError)
  try {
    return await fn(client)
  } catch (err) {
    if (broken === undefined && !(err instanceof ShoalError) && isConnectionBroken(err)) {
      broken = err instanceof Error ? err : new Error(String(err))
    }
    throw toSinkError(err, what)
  } finally {
    client.removeListener('error', onError)
    client.release(broken)
  }
}

// --- COPY -----------------------------------------------------------------------------------------

const COPY_SPECIAL = /[\\\n\r\t]/

/** A value in COPY's text format: backslash, newline, CR and tab escaped; null is \N. */
export function copyText(v: string | null): string {
  if (v === null) return '\\N'
  if (!COPY_SPECIAL.test(v)) return v
  return v.replace(/[\\\n\r\t]/g, (c) =>
    c === '\\' ? '\\\\' : c === '\n' ? '\\n' : c === '\r' ? '\\r' : '\\t',
  )
}

/** `copy <target> from stdin` with `rows` lines (already tab-separated and escaped, no newline). */
export async function copyLines(
  client: pg.ClientBase,
  target: string,
  lines: Iterable<string>,
): Promise<void> {
  const BATCH = 2000
  function* chunks(): Generator<string> {
    let buf: string[] = []
    for (const line of lines) {
      buf.push(line)
      if (buf.length === BATCH) {
        yield buf.join('\n') + '\n'
        buf = []
      }
    }
    if (buf.length > 0) yield buf.join('\n') + '\n'
  }
  await pipeline(Readable.from(chunks()), client.query(copyFrom(`copy ${target} from stdin`)))
}

export function closedError(name: string): ShoalError {
  return new ShoalError(ErrorCodes.CLOSED, `${name} is closed`)
}
