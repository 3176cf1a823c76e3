/**
 * Request/reply over a Connection: a request carries a fresh correlation id, the reply echoes
 * it. The owner of the connection's inbound loop hands every inbound envelope to settle()
 * first; whatever is not a reply it handles itself.
 */
import { AbortedError, ErrorCodes, ShoalError, TransportClosedError, reviveError } from '../errors.ts'
import type { Envelope } from '../protocol/messages.ts'
import type { Connection, OutboundMessage } from './transport.ts'

interface Pending {
  /** For a streamed reply: called with each part; returns true on the last. */
  part?: (env: Envelope) => boolean
  resolve: (env: Envelope) => void
  reject: (err: ShoalError) => void
  timer: NodeJS.Timeout
  /** The requests pending on the same connection (see #watch). */
  onConn: Set<number>
}

export class Requests {
  readonly #first: number
  #next: number
  readonly #pending = new Map<number, Pending>()
  /** Per connection, its pending requests: they fail as soon as it closes, not at their timeout. */
  readonly #byConn = new WeakMap<Connection, Set<number>>()

  /**
   * `firstCorr`: where this side's correlation ids start. Both peers of a connection send
   * requests, and settle() matches by id alone, so a side that sends requests to peers which
   * also send it requests (the coordinator) numbers from a disjoint range.
   */
  constructor(firstCorr = 1) {
    this.#first = firstCorr
    this.#next = firstCorr
  }

  /**
   * Send `message` on `conn` and wait for the envelope that echoes its correlation id. `signal`
   * gives up early (AbortedError); a reply that comes later is ignored.
   */
  request(
    conn: Connection,
    message: OutboundMessage,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<Envelope> {
    return this.#start(conn, message, timeoutMs, undefined, signal)
  }

  /**
   * A request answered by several envelopes with its correlation id: `part` sees each and
   * returns true for the last one, whose envelope the promise resolves with. The timeout
   * restarts with every part.
   */
  requestStream(
    conn: Connection,
    message: OutboundMessage,
    timeoutMs: number,
    part: (env: Envelope) => boolean,
    signal?: AbortSignal,
  ): Promise<Envelope> {
    return this.#start(conn, message, timeoutMs, part, signal)
  }

  #start(
    conn: Connection,
    message: OutboundMessage,
    timeoutMs: number,
    part: ((env: Envelope) => boolean) | undefined,
    signal: AbortSignal | undefined,
  ): Promise<Envelope> {
    if (signal?.aborted === true) return Promise.reject(new AbortedError(signal.reason))
    const corr = this.#next++
    if (this.#next > 0x7fffffff) this.#next = this.#first
    const onConn = this.#watch(conn)
    return new Promise<Envelope>((resolve, reject) => {
      const onAbort = (): void => p.reject(new AbortedError(signal?.reason))
      // Every way out (reply, error, timeout, abort, closed connection) goes through p, so the
      // request leaves the maps and the abort listener never outlives it.
      const finish = (): void => {
        clearTimeout(p.timer)
        this.#pending.delete(corr)
        onConn.delete(corr)
        signal?.removeEventListener('abort', onAbort)
      }
      const p: Pending = {
        resolve: (env) => {
          finish()
          resolve(env)
        },
        reject: (err) => {
          finish()
          reject(err)
        },
        timer: setTimeout(
          () =>
            p.reject(
              new ShoalError(ErrorCodes.TIMEOUT, `no reply to ${describe(message)} within ${timeoutMs} ms`, {
                retryable: true,
              }),
            ),
          timeoutMs,
        ),
        part,
        onConn,
      }
      p.timer.unref()
      this.#pending.set(corr, p)
      onConn.add(corr)
      signal?.addEventListener('abort', onAbort, { once: true })
      try {
        conn.send({ ...message, corr })
      } catch (err) {
        p.reject(err instanceof ShoalError ? err : new TransportClosedError(String(err)))
      }
    })
  }

  /**
   * If `env` answers a pending request, settle it and return true. A Control error reply
   * rejects the request with the error it carries.
   */
  settle(env: Envelope): boolean {
    if (env.corr === undefined || env.corr === null) return false
    const p = this.#pending.get(env.corr)
    if (p === undefined) return false
    if (p.part !== undefined && !(env.kind === 'control' && env.body.op === 'error') && !p.part(env)) {
      p.timer.refresh()
      return true
    }
    this.#pending.delete(env.corr)
    p.onConn.delete(env.corr)
    clearTimeout(p.timer)
    if (env.kind === 'control' && env.body.op === 'error') {
      const b = env.body as { code: string; message: string }
      p.reject(reviveError({ code: b.code, message: b.message }))
    } else {
      p.resolve(env)
    }
    return true
  }

  /**
   * The set of requests pending on `conn`, watched once: when the connection closes (the peer
   * died, or was declared dead and cut off) they fail with CONNECTION_LOST at once, so nobody
   * waits out a long timeout for a reply that cannot come.
   */
  #watch(conn: Connection): Set<number> {
    let set = this.#byConn.get(conn)
    if (set === undefined) {
      const mine = new Set<number>()
      set = mine
      this.#byConn.set(conn, mine)
      void conn.closed().then(() => {
        const lost = new ShoalError(ErrorCodes.CONNECTION_LOST, 'the connection closed before the reply', {
          retryable: true,
        })
        for (const corr of mine) {
          const p = this.#pending.get(corr)
          if (p === undefined) continue
          this.#pending.delete(corr)
          clearTimeout(p.timer)
          p.reject(lost)
        }
        mine.clear()
      })
    }
    return set
  }

  /** Reject every pending request, e.g. when their connection is gone. */
  rejectAll(err: ShoalError): void {
    for (const [corr, p] of this.#pending) {
      this.#pending.delete(corr)
      p.onConn.delete(corr)
      clearTimeout(p.timer)
      p.reject(err)
    }
  }
}

function describe(m: OutboundMessage): string {
  const op = (m.body as { op?: unknown }).op
  return typeof op === 'string' ? `${m.kind} ${op}` : m.kind
}

/** Reply to `to` on `conn`, echoing its correlation id. */
export function reply(conn: Connection, to: Envelope, message: OutboundMessage): void {
  conn.send({ ...message, corr: to.corr ?? undefined })
}

/** Reply with a non-fatal Control error carrying the error's code. */
export function replyError(conn: Connection, to: Envelope, err: ShoalError): void {
  conn.send({
    kind: 'control',
    body: { op: 'error', code: err.code, message: err.message, fatal: false },
    corr: to.corr ?? undefined,
  })
}

/** Control ops that only ever answer a request. */
const REPLY_OPS: ReadonlySet<string> = new Set(['error', 'joined', 'revoked', 'drained'])
const CHECKPOINT_REPLY_OPS: ReadonlySet<string> = new Set(['ack', 'abort'])

/**
 * True when `env` is a reply (or an error report) rather than a request. A loop that rejects
 * an inbound message must never answer one of these with an error: a reply that arrives after
 * its request timed out would otherwise start an error ping-pong between two peers that each
 * answer the other's error.
 */
export function isReplyOrError(env: Envelope): boolean {
  return (
    (env.kind === 'control' && REPLY_OPS.has(env.body.op)) ||
    (env.kind === 'checkpoint' && CHECKPOINT_REPLY_OPS.has(env.body.op))
  )
}
