/**
 * Raw TCP transport: node:net (or node:tls), 4-byte length-prefixed msgpackr frames.
 * TCP_NODELAY is on because the connection layer already coalesces small frames into one
 * write; Nagle would only add latency. Keepalive is the second line of failure detection
 * behind heartbeats: it catches a peer whose host vanished without a FIN or RST.
 */
import net from 'node:net'
import tls from 'node:tls'
import { channels } from '../../diagnostics.ts'
import type { ProtocolError, ShoalError } from '../../errors.ts'
import { ConnectTimeoutError, ErrorCodes, TransportError, AbortedError } from '../../errors.ts'
import { FrameParser } from '../../protocol/framing.ts'
import { LinkConnection } from '../connection.ts'
import { acceptLink } from '../accept.ts'
import { dialHandshake, type HandshakeResult } from '../handshake.ts'
import type { Link, LinkHandlers } from '../link.ts'
import { resolveTransportOptions, type ResolvedTransportOptions } from '../options.ts'
import type {
  ConnectOptions,
  Connection,
  ConnectionHandler,
  ListenAddress,
  Listener,
  Transport,
  TransportOptions,
} from '../transport.ts'
import { parseHostPort, formatHostPort } from '../address.ts'

const TLS_ERROR = /^(ERR_TLS_|ERR_SSL_|UNABLE_TO_|CERT_|DEPTH_ZERO_|SELF_SIGNED_|ERR_OSSL_)|SSL|certificate/i

/** Map a socket error to a Shoal error with a stable code. */
export function socketError(err: NodeJS.ErrnoException, address: string): ShoalError {
  const code = err.code ?? ''
  if (
    TLS_ERROR.test(code) ||
    TLS_ERROR.test(err.message) ||
    (err as { library?: string }).library === 'SSL routines'
  ) {
    return new TransportError(ErrorCodes.TLS_FAILED, `TLS with ${address} failed: ${err.message}`, {
      cause: err,
    })
  }
  if (
    code === 'ECONNREFUSED' ||
    code === 'ENOTFOUND' ||
    code === 'EHOSTUNREACH' ||
    code === 'ENETUNREACH' ||
    code === 'EAI_AGAIN'
  ) {
    return new TransportError(ErrorCodes.CONNECT_FAILED, `cannot connect to ${address}: ${err.message}`, {
      cause: err,
      retryable: true,
    })
  }
  return new TransportError(ErrorCodes.CONNECTION_LOST, `connection to ${address} lost: ${err.message}`, {
    cause: err,
    retryable: true,
  })
}

/** How long an ended socket may wait for the peer's FIN before it is reset. */
const LINGER_MS = 5000

const noHandlers: LinkHandlers = { frame() {}, drain() {}, close() {} }

export class SocketLink implements Link {
  readonly remoteAddress: string
  readonly #socket: net.Socket
  readonly #parser: FrameParser
  #handlers: LinkHandlers = noHandlers
  #error: ShoalError | undefined
  #closed = false
  /** After a framing error: keep reading (to notice the peer's FIN or RST) but drop the bytes. */
  #discard = false
  #lingerTimer: NodeJS.Timeout | null = null

  constructor(socket: net.Socket, maxFrameBytes: number) {
    this.#socket = socket
    this.remoteAddress = formatHostPort(socket.remoteAddress ?? 'unknown', socket.remotePort ?? 0)
    this.#parser = new FrameParser(maxFrameBytes, (payload) => this.#handlers.frame(payload))
    socket.on('data', (chunk: Buffer) => {
      if (this.#closed || this.#discard) return
      try {
        this.#parser.push(chunk)
      } catch (err) {
        // The connection layer sends the error and ends the link; what follows is garbage.
        this.#discard = true
        this.#report(err as ProtocolError)
      }
    })
    socket.on('end', () => {
      if (this.#discard) return
      try {
        this.#parser.end()
      } catch (err) {
        this.#error ??= err as ProtocolError
      }
    })
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.#error ??= socketError(err, this.remoteAddress)
    })
    socket.on('drain', () => this.#handlers.drain())
    socket.on('close', () => {
      if (this.#lingerTimer !== null) clearTimeout(this.#lingerTimer)
      this.#report(this.#error)
    })
  }

  get writableLength(): number {
    return this.#socket.writableLength
  }

  setHandlers(handlers: LinkHandlers): void {
    this.#handlers = handlers
  }

  write(frame: Buffer): boolean {
    if (this.#socket.destroyed || this.#socket.writableEnded) return true
    return this.#socket.write(frame)
  }

  pause(): void {
    this.#socket.pause()
  }
  resume(): void {
    if (!this.#closed) this.#socket.resume()
  }
  /** Half-close, and reset if the peer has not closed its side within LINGER_MS. */
  end(): void {
    const s = this.#socket
    if (s.destroyed) return
    s.end()
    if (this.#discard) s.resume()
    if (this.#lingerTimer === null) {
      this.#lingerTimer = setTimeout(() => s.destroy(), LINGER_MS)
      this.#lingerTimer.unref()
    }
  }

  destroy(error?: ShoalError): void {
    this.#error ??= error
    const s = this.#socket
    if (s.destroyed) return
    // A reset, not a FIN: the peer must see an abrupt end, not a clean one.
    if (typeof s.resetAndDestroy === 'function' && !(s instanceof tls.TLSSocket) && !s.connecting) {
      try {
        s.resetAndDestroy()
        return
      } catch {
        // fall through
      }
    }
    s.destroy()
  }

  #report(error: ShoalError | undefined): void {
    if (this.#socket.destroyed && this.#lingerTimer !== null) clearTimeout(this.#lingerTimer)
    if (this.#closed) return
    this.#closed = true
    this.#handlers.close(error)
  }
}

function configureSocket(socket: net.Socket, opts: ResolvedTransportOptions): void {
  socket.setNoDelay(true)
  if (opts.keepAliveMs > 0) socket.setKeepAlive(true, opts.keepAliveMs)
}

class TcpListener implements Listener {
  readonly address: string
  readonly port: number
  readonly connections = new Set<Connection>()
  readonly #server: net.Server
  readonly #handshaking = new Set<net.Socket>()
  #closing: Promise<void> | null = null

  constructor(server: net.Server, host: string) {
    this.#server = server
    const addr = server.address() as net.AddressInfo
    this.port = addr.port
    this.address = formatHostPort(host, addr.port)
  }

  track(socket: net.Socket): void {
    this.#handshaking.add(socket)
    socket.once('close', () => this.#handshaking.delete(socket))
  }
  untrack(socket: net.Socket): void {
    this.#handshaking.delete(socket)
  }
  get closing(): boolean {
    return this.#closing !== null
  }

  close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#closing !== null) return this.#closing
    const serverClosed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    for (const s of this.#handshaking) s.destroy()
    this.#closing = Promise.all([...this.connections].map((c) => c.close(options))).then(() => serverClosed)
    return this.#closing
  }
}

export class TcpTransport implements Transport {
  readonly name = 'tcp' as const
  readonly #opts: ResolvedTransportOptions

  constructor(options: TransportOptions) {
    this.#opts = resolveTransportOptions(options)
    const t = this.#opts.tls
    if (t !== undefined && t.requestCert === true && t.ca === undefined) {
      throw new TransportError(
        ErrorCodes.INVALID_OPTION,
        'options.tls.requestCert needs options.tls.ca to verify clients',
      )
    }
  }

  get options(): ResolvedTransportOptions {
    return this.#opts
  }

  async listen(address: ListenAddress, onConnection: ConnectionHandler): Promise<Listener> {
    const opts = this.#opts
    const host = address.host ?? '127.0.0.1'
    const t = opts.tls
    let server: net.Server
    if (t !== undefined) {
      if (t.cert === undefined || t.key === undefined) {
        throw new TransportError(
          ErrorCodes.INVALID_OPTION,
          'options.tls.cert and options.tls.key are required to listen with TLS',
        )
      }
      server = tls.createServer({
        cert: t.cert,
        key: t.key,
        ca: t.ca,
        requestCert: t.requestCert ?? false,
        rejectUnauthorized: true,
        minVersion: 'TLSv1.2',
        handshakeTimeout: opts.handshakeTimeoutMs,
      })
      // A client that fails TLS never reaches us; nothing to clean up but the socket.
      server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
        if (channels.handshakeFailed.hasSubscribers) {
          channels.handshakeFailed.publish({
            transport: 'tcp',
            remoteAddress: socket.remoteAddress,
            error: err,
          })
        }
      })
    } else {
      server = net.createServer()
    }
    let listener: TcpListener | undefined
    const accept = (socket: net.Socket): void => {
      if (listener === undefined || listener.closing) {
        socket.destroy()
        return
      }
      const l = listener
      configureSocket(socket, opts)
      l.track(socket)
      const link = new SocketLink(socket, opts.maxFrameBytes)
      acceptLink(link, opts, l, 'tcp', () => l.untrack(socket), onConnection)
    }
    server.on(t !== undefined ? 'secureConnection' : 'connection', accept)
    // A server-level error after listen (rare: EMFILE on accept) must not crash the process.
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(address.port, host, () => {
        server.off('error', reject)
        server.on('error', () => {})
        resolve()
      })
    }).catch((err: NodeJS.ErrnoException) => {
      throw new TransportError(
        ErrorCodes.CONNECT_FAILED,
        `cannot listen on ${formatHostPort(host, address.port)}: ${err.message}`,
        {
          cause: err,
        },
      )
    })
    listener = new TcpListener(server, host)
    return listener
  }

  async connect(address: string, options: ConnectOptions = {}): Promise<Connection> {
    const { host, port } = parseHostPort(address)
    const dial = async (
      signal: AbortSignal | undefined,
    ): Promise<{ link: Link; handshake: HandshakeResult }> => {
      const socket = await this.#dialSocket(host, port, signal)
      const link = new SocketLink(socket, this.#opts.maxFrameBytes)
      const handshake = await dialHandshake(link, this.#opts, signal)
      return { link, handshake }
    }
    const { link, handshake } = await dial(options.signal)
    return new LinkConnection({
      options: this.#opts,
      link,
      handshake,
      redial: dial,
      reconnect: options.reconnect,
    })
  }

  #dialSocket(host: string, port: number, signal: AbortSignal | undefined): Promise<net.Socket> {
    const opts = this.#opts
    const address = formatHostPort(host, port)
    return new Promise<net.Socket>((resolve, reject) => {
      if (signal?.aborted === true) {
        reject(new AbortedError(signal.reason))
        return
      }
      const t = opts.tls
      const socket =
        t !== undefined
          ? tls.connect({
              host,
              port,
              ca: t.ca,
              cert: t.cert,
              key: t.key,
              servername: t.servername ?? (net.isIP(host) === 0 ? host : undefined),
              minVersion: 'TLSv1.2',
            })
          : net.connect({ host, port })
      const readyEvent = t !== undefined ? 'secureConnect' : 'connect'
      const timer = setTimeout(
        () => fail(new ConnectTimeoutError(address, opts.connectTimeoutMs)),
        opts.connectTimeoutMs,
      )
      const onAbort = (): void => fail(new AbortedError(signal?.reason))
      signal?.addEventListener('abort', onAbort, { once: true })
      const onError = (err: NodeJS.ErrnoException): void => fail(socketError(err, address))
      socket.once('error', onError)
      socket.once(readyEvent, () => {
        done()
        configureSocket(socket, opts)
        resolve(socket)
      })
      function done(): void {
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        socket.off('error', onError)
      }
      function fail(err: ShoalError): void {
        done()
        socket.destroy()
        reject(err)
      }
    })
  }
}

export function createTcpTransport(options: TransportOptions): TcpTransport {
  return new TcpTransport(options)
}
