/**
 * LinkConnection: the transport-independent half of every Connection. It owns the outbound
 * queue (encode at send time, coalesce small frames into one write, bounded by bytes), the
 * inbound queue (pause the link when the consumer is behind), the goodbye protocol, idle
 * timeouts, status reporting and, on the dialing side, reconnection with jittered backoff.
 *
 * States:
 *   connecting   - never used here: a LinkConnection is built after the first handshake
 *   ready        - a link is attached and handshaken
 *   reconnecting - the link was lost; the dialer is backing off or redialing; sends queue up
 *   closing      - close() was called: flushing, then goodbye, then end
 *   closed       - final; closed() has resolved
 */
import { randomUUID } from 'node:crypto'
import {
  AbortedError,
  ErrorCodes,
  ProtocolError,
  QueueFullError,
  ShoalError,
  TransportClosedError,
  TransportError,
} from '../errors.ts'
import { decodeEnvelope, encodeFrame, peerErrorCode } from '../protocol/codec.ts'
import type { Envelope } from '../protocol/messages.ts'
import { AsyncQueue } from '../util/async-queue.ts'
import { exponentialBackoff, type RetryDelay } from '../util/backoff.ts'
import { abortableSleep, deferred, type Deferred } from '../util/deferred.ts'
import { NON_RETRYABLE_CODES, refuse, type HandshakeResult } from './handshake.ts'
import type { Link } from './link.ts'
import type { ResolvedTransportOptions } from './options.ts'
import type {
  ConnectOptions,
  Connection,
  ConnectionState,
  ConnectionStatus,
  OutboundMessage,
  PeerInfo,
} from './transport.ts'

/** Frames at most this large are merged with their neighbours into one write. */
const COALESCE_FRAME_BYTES = 16 * 1024
/** Upper bound of one merged write. */
const COALESCE_WRITE_BYTES = 64 * 1024

export type Redial = (signal: AbortSignal) => Promise<{ link: Link; handshake: HandshakeResult }>

export interface LinkConnectionInit {
  options: ResolvedTransportOptions
  link: Link
  handshake: HandshakeResult
  /** Dialing side only: how to get a new link after a loss. */
  redial?: Redial | undefined
  reconnect?: ConnectOptions['reconnect']
}

export function toRetryDelay(reconnect: ConnectOptions['reconnect']): RetryDelay | null {
  if (reconnect === undefined || reconnect === false) return null
  if (reconnect === true) return exponentialBackoff()
  if (typeof reconnect === 'function') return reconnect
  return exponentialBackoff(reconnect)
}

export class LinkConnection implements Connection {
  readonly id = randomUUID()
  readonly #opts: ResolvedTransportOptions
  #state: ConnectionState = 'ready'
  #link: Link | null
  #peer: PeerInfo
  #seq = 0

  // Outbound: encoded frames not yet handed to the link.
  #queue: Buffer[] = []
  #queueHead = 0
  #queueBytes = 0
  #linkBlocked = false
  #flushScheduled = false
  #drainWaiters: Deferred<void>[] = []
  /** Resolved when the outbound queue is empty (used by close() to end after the goodbye). */
  #flushedWaiter: Deferred<void> | null = null

  // Inbound.
  readonly #inbox: AsyncQueue<Envelope>
  #paused = false
  #lastReceived = performance.now()
  #idleTimer: NodeJS.Timeout | null = null

  // Lifecycle.
  #sawGoodbye = false
  #closePromise: Promise<void> | null = null
  readonly #closed = deferred<ShoalError | undefined>()
  readonly #statusSubs = new Set<AsyncQueue<ConnectionStatus>>()
  readonly #redial: Redial | undefined
  readonly #retryDelay: RetryDelay | null
  readonly #lifetime = new AbortController()

  constructor(init: LinkConnectionInit) {
    this.#opts = init.options
    this.#link = init.link
    this.#peer = init.handshake.peer
    this.#redial = init.redial
    this.#retryDelay = init.redial === undefined ? null : toRetryDelay(init.reconnect)
    this.#inbox = new AsyncQueue<Envelope>({
      highWaterBytes: this.#opts.inboundHighWaterBytes,
      onHigh: () => {
        this.#paused = true
        this.#link?.pause()
      },
      onLow: () => {
        this.#paused = false
        this.#link?.resume()
      },
    })
    this.#attach(init.link, init.handshake)
    if (this.#opts.idleTimeoutMs > 0) this.#armIdleTimer()
  }

  get state(): ConnectionState {
    return this.#state
  }
  get peer(): PeerInfo {
    return this.#peer
  }
  /**
   * Bytes queued here and not yet handed to the link. The link's own buffer is bounded
   * separately (we stop writing when it says it is full), so total outbound memory stays below
   * maxQueueBytes plus one link buffer.
   */
  get queuedBytes(): number {
    return this.#queueBytes
  }

  // --- sending ---------------------------------------------------------------------------------

  send(message: OutboundMessage): boolean {
    if (this.#state === 'closing' || this.#state === 'closed') {
      throw new TransportClosedError(`cannot send on a ${this.#state} connection`)
    }
    const frame = encodeFrame(
      { v: this.#peer.version, from: this.#opts.nodeId, seq: this.#seq + 1, ts: Date.now(), ...message },
      this.#opts.maxFrameBytes,
    )
    if (this.queuedBytes + frame.length > this.#opts.maxQueueBytes)
      throw new QueueFullError(this.#opts.maxQueueBytes)
    this.#seq++
    this.#enqueue(frame)
    return this.queuedBytes < this.#opts.highWaterMarkBytes
  }

  drain(options: { signal?: AbortSignal } = {}): Promise<void> {
    const { signal } = options
    if (signal?.aborted === true) return Promise.reject(new AbortedError(signal.reason))
    if (this.#state === 'closed') return Promise.reject(new TransportClosedError())
    if (this.queuedBytes < this.#opts.highWaterMarkBytes) return Promise.resolve()
    const d = deferred<void>()
    this.#drainWaiters.push(d)
    if (signal === undefined) return d.promise
    const onAbort = (): void => {
      this.#drainWaiters = this.#drainWaiters.filter((w) => w !== d)
      d.reject(new AbortedError(signal.reason))
    }
    signal.addEventListener('abort', onAbort, { once: true })
    return d.promise.finally(() => signal.removeEventListener('abort', onAbort))
  }

  async write(message: OutboundMessage, options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.drain(options)
    this.send(message)
  }

  #enqueue(frame: Buffer): void {
    this.#queue.push(frame)
    this.#queueBytes += frame.length
    if (!this.#flushScheduled && this.#link !== null && !this.#linkBlocked) {
      this.#flushScheduled = true
      // Coalescing: every send() of this synchronous run goes out in one write.
      queueMicrotask(this.#flush)
    }
  }

  readonly #flush = (): void => {
    this.#flushScheduled = false
    const link = this.#link
    if (link === null) return
    const q = this.#queue
    while (!this.#linkBlocked && this.#queueHead < q.length) {
      let frame = q[this.#queueHead++]!
      let bytes = frame.length
      if (
        bytes <= COALESCE_FRAME_BYTES &&
        this.#queueHead < q.length &&
        q[this.#queueHead]!.length <= COALESCE_FRAME_BYTES
      ) {
        const parts = [frame]
        while (this.#queueHead < q.length) {
          const next = q[this.#queueHead]!
          if (next.length > COALESCE_FRAME_BYTES || bytes + next.length > COALESCE_WRITE_BYTES) break
          parts.push(next)
          bytes += next.length
          this.#queueHead++
        }
        frame = Buffer.concat(parts, bytes)
      }
      this.#queueBytes -= bytes
      if (!link.write(frame)) this.#linkBlocked = true
    }
    if (this.#queueHead === q.length) {
      q.length = 0
      this.#queueHead = 0
      const flushed = this.#flushedWaiter
      this.#flushedWaiter = null
      flushed?.resolve()
    } else if (this.#queueHead > 1024) {
      this.#queue = q.slice(this.#queueHead)
      this.#queueHead = 0
    }
    this.#releaseDrainWaiters()
  }

  #releaseDrainWaiters(): void {
    if (this.#drainWaiters.length === 0 || this.queuedBytes >= this.#opts.highWaterMarkBytes) return
    const waiters = this.#drainWaiters
    this.#drainWaiters = []
    for (const w of waiters) w.resolve()
  }

  // --- receiving -------------------------------------------------------------------------------

  [Symbol.asyncIterator](): AsyncIterator<Envelope> {
    return this.#inbox[Symbol.asyncIterator]()
  }

  #onFrame(link: Link, payload: Buffer): void {
    if (link !== this.#link) return
    this.#lastReceived = performance.now()
    let env: Envelope
    try {
      env = decodeEnvelope(payload)
    } catch (err) {
      this.#protocolFailure(link, err as ProtocolError)
      return
    }
    if (env.kind === 'control') {
      const op = env.body.op
      if (op === 'goaway') {
        this.#sawGoodbye = true
        return
      }
      if (op === 'hello' || op === 'welcome') {
        this.#protocolFailure(
          link,
          new ProtocolError(ErrorCodes.HANDSHAKE_FAILED, `unexpected ${op} after the handshake`),
        )
        return
      }
      if (op === 'error' && (env.body as { fatal: boolean }).fatal) {
        const b = env.body as { code: string; message: string }
        this.#sawGoodbye = true
        this.#linkLost(
          link,
          new ShoalError(peerErrorCode(b.code), `peer ${env.from} closed the connection: ${b.message}`, {
            data: { peerCode: b.code },
          }),
        )
        link.destroy()
        return
      }
    }
    this.#inbox.push(env, payload.length)
  }

  /** A bad frame or message: tell the peer (best effort), close the link, fail the connection. */
  #protocolFailure(link: Link, err: ProtocolError): void {
    // Detach first so #finish does not reset the link before the error frame is flushed.
    if (this.#link === link) this.#link = null
    refuse(link, this.#opts.nodeId, err, this.#opts.maxFrameBytes)
    // Do not redial a peer that speaks garbage: the error is final for this connection.
    this.#finish(err)
  }

  // --- link lifecycle --------------------------------------------------------------------------

  #attach(link: Link, hs: HandshakeResult): void {
    this.#link = link
    this.#linkBlocked = false
    link.setHandlers({
      frame: (payload) => this.#onFrame(link, payload),
      drain: () => {
        if (link !== this.#link) return
        this.#linkBlocked = false
        this.#flush()
      },
      close: (error) => this.#onLinkClose(link, error),
    })
    if (this.#paused) link.pause()
    for (const payload of hs.pending) this.#onFrame(link, payload)
    hs.pending.length = 0
    if (hs.closed !== undefined) this.#onLinkClose(link, hs.closed.error)
    else if (this.#queue.length > this.#queueHead) queueMicrotask(this.#flush)
  }

  #onLinkClose(link: Link, error: ShoalError | undefined): void {
    if (link !== this.#link) return
    if (error instanceof ProtocolError) {
      this.#protocolFailure(link, error)
      return
    }
    if (error === undefined && this.#sawGoodbye) {
      // The peer said goodbye: a graceful end (a dialer with reconnect still comes back).
      this.#linkLost(link, undefined)
      return
    }
    this.#linkLost(
      link,
      error ??
        new TransportError(
          ErrorCodes.CONNECTION_LOST,
          `connection to ${this.#peer.nodeId} ended without goodbye`,
          {
            retryable: true,
          },
        ),
    )
  }

  #linkLost(link: Link, error: ShoalError | undefined): void {
    if (link !== this.#link) return
    this.#link = null
    if (this.#state === 'closing' || this.#state === 'closed') {
      this.#finish(this.#state === 'closing' ? undefined : error)
      return
    }
    const fatal = error !== undefined && NON_RETRYABLE_CODES.has(error.code)
    if (this.#retryDelay === null || this.#redial === undefined || fatal) {
      this.#finish(error)
      return
    }
    const lost =
      error ??
      new TransportError(ErrorCodes.CONNECTION_LOST, `peer ${this.#peer.nodeId} closed the connection`, {
        retryable: true,
      })
    this.#state = 'reconnecting'
    this.#emit({ type: 'disconnected', error: lost })
    void this.#reconnectLoop(this.#redial, this.#retryDelay)
  }

  async #reconnectLoop(redial: Redial, retryDelay: RetryDelay): Promise<void> {
    const signal = this.#lifetime.signal
    let lastError: ShoalError | undefined
    for (let attempt = 1; ; attempt++) {
      const delayMs = retryDelay(attempt)
      if (delayMs === null) {
        this.#finish(
          lastError ??
            new TransportError(ErrorCodes.CONNECTION_LOST, 'gave up reconnecting', { retryable: true }),
        )
        return
      }
      this.#emit({ type: 'reconnecting', attempt, delayMs })
      try {
        await abortableSleep(delayMs, signal)
        const { link, handshake } = await redial(signal)
        if (this.#state !== 'reconnecting') {
          link.destroy()
          return
        }
        this.#peer = handshake.peer
        this.#sawGoodbye = false
        this.#state = 'ready'
        this.#lastReceived = performance.now()
        this.#attach(link, handshake)
        if (this.#state === 'ready') this.#emit({ type: 'ready', peer: this.#peer })
        return
      } catch (err) {
        if (signal.aborted || this.#state !== 'reconnecting') return
        lastError = err instanceof ShoalError ? err : new TransportError(ErrorCodes.TRANSPORT, String(err))
        if (NON_RETRYABLE_CODES.has(lastError.code)) {
          this.#finish(lastError)
          return
        }
      }
    }
  }

  #armIdleTimer(): void {
    const idle = this.#opts.idleTimeoutMs
    const check = (): void => {
      this.#idleTimer = null
      if (this.#state === 'closed') return
      const silentMs = performance.now() - this.#lastReceived
      const link = this.#link
      if (link !== null && this.#state === 'ready' && silentMs >= idle) {
        const err = new TransportError(
          ErrorCodes.IDLE_TIMEOUT,
          `nothing received for ${Math.round(silentMs)} ms`,
          {
            retryable: true,
          },
        )
        link.destroy(err)
        this.#linkLost(link, err)
      }
      this.#idleTimer = setTimeout(check, Math.max(10, idle - (performance.now() - this.#lastReceived)))
      this.#idleTimer.unref()
    }
    this.#idleTimer = setTimeout(check, idle)
    this.#idleTimer.unref()
  }

  // --- status and closing ----------------------------------------------------------------------

  status(): AsyncIterable<ConnectionStatus> {
    const q = new AsyncQueue<ConnectionStatus>({ highWaterBytes: Infinity })
    if (this.#state === 'closed') q.end()
    else this.#statusSubs.add(q)
    return q
  }

  #emit(s: ConnectionStatus): void {
    for (const q of this.#statusSubs) {
      q.push(s)
      if (s.type === 'closed') q.end()
    }
    if (s.type === 'closed') this.#statusSubs.clear()
  }

  close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#closePromise !== null) return this.#closePromise
    if (this.#state === 'closed') return (this.#closePromise = Promise.resolve())
    const timeoutMs = options.timeoutMs ?? 5000
    const wasReconnecting = this.#state === 'reconnecting'
    this.#state = 'closing'
    this.#lifetime.abort()
    const link = this.#link
    if (link === null || wasReconnecting) {
      this.#finish(undefined)
      return (this.#closePromise = Promise.resolve())
    }
    // Goodbye goes behind everything already queued, then the link ends once flushed.
    this.#enqueue(
      encodeFrame(
        {
          v: this.#peer.version,
          from: this.#opts.nodeId,
          seq: ++this.#seq,
          ts: Date.now(),
          kind: 'control',
          body: { op: 'goaway' },
        },
        this.#opts.maxFrameBytes,
      ),
    )
    const ended = this.closed()
    // The goodbye was just queued, so #flush resolves this once it has reached the link.
    const flushed = (this.#flushedWaiter = deferred<void>())
    void flushed.promise.then(() => {
      if (this.#link === link) link.end()
    })
    const timer = setTimeout(
      () => this.destroy(new TransportError(ErrorCodes.CLOSED, `close timed out after ${timeoutMs} ms`)),
      timeoutMs,
    )
    timer.unref()
    this.#closePromise = ended.then(() => clearTimeout(timer))
    return this.#closePromise
  }

  destroy(error?: Error): void {
    if (this.#state === 'closed') return
    const err =
      error === undefined
        ? undefined
        : error instanceof ShoalError
          ? error
          : new TransportError(ErrorCodes.CLOSED, error.message, { cause: error })
    const link = this.#link
    this.#link = null
    this.#lifetime.abort()
    link?.destroy(err)
    this.#finish(err)
  }

  closed(): Promise<ShoalError | undefined> {
    return this.#closed.promise
  }

  /** Enter 'closed' exactly once: drop queued output, end the inbox, wake everyone. */
  #finish(error: ShoalError | undefined): void {
    if (this.#state === 'closed') return
    this.#state = 'closed'
    this.#lifetime.abort()
    if (this.#idleTimer !== null) clearTimeout(this.#idleTimer)
    const link = this.#link
    this.#link = null
    if (link !== null) {
      if (error === undefined) link.end()
      else link.destroy(error)
    }
    this.#queue = []
    this.#queueHead = 0
    this.#queueBytes = 0
    this.#flushedWaiter = null
    const waiters = this.#drainWaiters
    this.#drainWaiters = []
    for (const w of waiters) w.reject(error ?? new TransportClosedError())
    this.#inbox.end(error)
    this.#emit({ type: 'closed', error })
    this.#closed.resolve(error)
  }
}
