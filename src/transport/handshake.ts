/**
 * The connection handshake, identical on every transport:
 *   dialer   -> control { op: 'hello', versions, nodeId, role, token? }
 *   listener -> control { op: 'welcome', version, nodeId, role }
 *            or control { op: 'error', code, message, fatal: true } and end
 * The hello is always sent in a version-1 envelope, so any future listener can read it and
 * pick the highest version both ends speak.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { AbortedError, ErrorCodes, ProtocolError, ShoalError, TransportError } from '../errors.ts'
import { decodeEnvelope, encodeFrame, peerErrorCode } from '../protocol/codec.ts'
import { SUPPORTED_VERSIONS, type ControlBody, type Envelope } from '../protocol/messages.ts'
import type { Link } from './link.ts'
import type { ResolvedTransportOptions } from './options.ts'
import type { PeerInfo } from './transport.ts'

export interface HandshakeResult {
  peer: PeerInfo
  /** Frames that arrived right behind the handshake reply, to be processed first. */
  pending: Buffer[]
  /** Set when the link closed after the handshake but before the connection took it over. */
  closed: { error: ShoalError | undefined } | undefined
}

/** Codes after which a dialer must not retry: retrying cannot succeed. */
export const NON_RETRYABLE_CODES: ReadonlySet<string> = new Set([
  ErrorCodes.AUTH_FAILED,
  ErrorCodes.UNSUPPORTED_VERSION,
  ErrorCodes.HANDSHAKE_FAILED,
  ErrorCodes.TLS_FAILED,
])

export function controlFrame(from: string, body: ControlBody, maxFrameBytes: number): Buffer {
  return encodeFrame({ v: 1, kind: 'control', from, seq: 0, ts: Date.now(), body }, maxFrameBytes)
}

/** Best effort: tell the peer why, then end the link. */
export function refuse(link: Link, from: string, err: ShoalError, maxFrameBytes: number): void {
  try {
    link.write(
      controlFrame(from, { op: 'error', code: err.code, message: err.message, fatal: true }, maxFrameBytes),
    )
  } catch {
    // the link is already broken; ending it is all that is left
  }
  link.end()
}

/** Constant-time comparison of tokens of any length (hashing equalizes the lengths). */
export function tokensEqual(expected: string, received: string | undefined): boolean {
  if (received === undefined) return false
  const a = createHash('sha256').update(expected).digest()
  const b = createHash('sha256').update(received).digest()
  return timingSafeEqual(a, b)
}

/**
 * Wait for the first frame on a fresh link; later frames are kept in order. `signal` ends the
 * wait early: a peer that accepted the socket but never answers (a stopped process) would
 * otherwise hold the dialer for the whole handshake timeout.
 */
function firstFrame(
  link: Link,
  timeoutMs: number,
  onTimeout: () => ShoalError,
  signal?: AbortSignal,
): Promise<HandshakeResult & { env: Envelope }> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(new AbortedError(signal.reason))
      return
    }
    const pending: Buffer[] = []
    const result: HandshakeResult & { env: Envelope } = {
      env: undefined as unknown as Envelope,
      pending,
      peer: undefined as unknown as PeerInfo,
      closed: undefined,
    }
    let first: Envelope | undefined
    let settled = false
    const timer = setTimeout(() => fail(onTimeout()), timeoutMs)
    const onAbort = (): void => fail(new AbortedError(signal?.reason))
    signal?.addEventListener('abort', onAbort, { once: true })
    function fail(err: ShoalError): void {
      if (settled) return
      settled = true
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      reject(err)
    }
    link.setHandlers({
      frame(payload) {
        if (settled || first !== undefined) {
          pending.push(payload)
          return
        }
        try {
          first = decodeEnvelope(payload)
        } catch (err) {
          fail(err as ShoalError)
          return
        }
        settled = true
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        // Resolution is async: keep buffering frames (and a close) that arrive before the
        // caller attaches its own handlers.
        result.env = first
        resolve(result)
      },
      drain() {},
      close(error) {
        if (settled) {
          result.closed = { error }
          return
        }
        fail(
          error ??
            new TransportError(ErrorCodes.CONNECTION_LOST, 'connection closed during the handshake', {
              retryable: true,
            }),
        )
      },
    })
  })
}

export async function dialHandshake(
  link: Link,
  opts: ResolvedTransportOptions,
  signal?: AbortSignal,
): Promise<HandshakeResult> {
  link.write(
    controlFrame(
      opts.nodeId,
      {
        op: 'hello',
        versions: SUPPORTED_VERSIONS.filter((v) => v <= opts.maxProtocolVersion),
        nodeId: opts.nodeId,
        role: opts.role,
        token: opts.token,
      },
      opts.maxFrameBytes,
    ),
  )
  let res: HandshakeResult & { env: Envelope }
  try {
    res = await firstFrame(
      link,
      opts.handshakeTimeoutMs,
      () =>
        new TransportError(
          ErrorCodes.HANDSHAKE_TIMEOUT,
          `no handshake reply within ${opts.handshakeTimeoutMs} ms`,
          {
            retryable: true,
          },
        ),
      signal,
    )
  } catch (err) {
    link.destroy()
    throw err
  }
  const { env, pending } = res
  if (env.kind === 'control' && env.body.op === 'error') {
    const body = env.body as { code: string; message: string }
    link.destroy()
    const code = peerErrorCode(body.code)
    throw new ShoalError(code, `refused by ${env.from}: ${body.message}`, {
      retryable: !NON_RETRYABLE_CODES.has(code),
    })
  }
  if (env.kind !== 'control' || env.body.op !== 'welcome') {
    const err = new ProtocolError(ErrorCodes.HANDSHAKE_FAILED, `expected a welcome, got ${env.kind}`)
    refuse(link, opts.nodeId, err, opts.maxFrameBytes)
    throw err
  }
  const w = env.body as { version: number; nodeId: string; role: PeerInfo['role'] }
  if (!SUPPORTED_VERSIONS.includes(w.version) || w.version > opts.maxProtocolVersion) {
    const err = new ProtocolError(ErrorCodes.UNSUPPORTED_VERSION, `peer chose protocol version ${w.version}`)
    refuse(link, opts.nodeId, err, opts.maxFrameBytes)
    throw err
  }
  return {
    peer: { nodeId: w.nodeId, role: w.role, version: w.version, address: link.remoteAddress },
    pending,
    get closed() {
      return res.closed
    },
  }
}

export async function acceptHandshake(link: Link, opts: ResolvedTransportOptions): Promise<HandshakeResult> {
  let res: HandshakeResult & { env: Envelope }
  try {
    res = await firstFrame(
      link,
      opts.handshakeTimeoutMs,
      () => new TransportError(ErrorCodes.HANDSHAKE_TIMEOUT, `no hello within ${opts.handshakeTimeoutMs} ms`),
    )
  } catch (err) {
    const e = err instanceof ShoalError ? err : new TransportError(ErrorCodes.TRANSPORT, String(err))
    if (e instanceof ProtocolError || e.code === ErrorCodes.HANDSHAKE_TIMEOUT)
      refuse(link, opts.nodeId, e, opts.maxFrameBytes)
    else link.destroy()
    throw e
  }
  const { env, pending } = res
  const fail = (code: (typeof ErrorCodes)[keyof typeof ErrorCodes], message: string): never => {
    const err = new ProtocolError(code, message)
    refuse(link, opts.nodeId, err, opts.maxFrameBytes)
    throw err
  }
  if (env.kind !== 'control' || env.body.op !== 'hello') {
    return fail(ErrorCodes.HANDSHAKE_FAILED, `expected a hello, got ${env.kind}`)
  }
  const hello = env.body as { versions: number[]; nodeId: string; role: PeerInfo['role']; token?: string }
  const mine = SUPPORTED_VERSIONS.filter((v) => v <= opts.maxProtocolVersion)
  const common = hello.versions.filter((v) => mine.includes(v))
  if (common.length === 0) {
    return fail(
      ErrorCodes.UNSUPPORTED_VERSION,
      `no common protocol version: peer speaks ${hello.versions.join(', ') || 'none'}, this node ${mine.join(', ')}`,
    )
  }
  if (opts.token !== undefined && !tokensEqual(opts.token, hello.token)) {
    return fail(
      ErrorCodes.AUTH_FAILED,
      hello.token === undefined ? 'cluster token required' : 'cluster token mismatch',
    )
  }
  const version = Math.max(...common)
  link.write(
    controlFrame(
      opts.nodeId,
      { op: 'welcome', version, nodeId: opts.nodeId, role: opts.role },
      opts.maxFrameBytes,
    ),
  )
  return {
    peer: { nodeId: hello.nodeId, role: hello.role, version, address: link.remoteAddress },
    pending,
    get closed() {
      return res.closed
    },
  }
}
