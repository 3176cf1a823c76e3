/**
 * In-process transport for unit tests. It is faithful where it matters: frames are encoded,
 * length-prefixed and parsed exactly as on TCP, delivery is asynchronous, each direction has a
 * bounded in-flight window (so a paused reader pushes back on the writer), end() flushes then
 * closes both directions, and destroy() drops what is in flight and resets the peer.
 * It has no TLS: there is no wire to protect.
 */
import type { ProtocolError } from '../../errors.ts'
import { ErrorCodes, TransportError, type ShoalError } from '../../errors.ts'
import { FrameParser } from '../../protocol/framing.ts'
import { LinkConnection } from '../connection.ts'
import { acceptHandshake, dialHandshake, type HandshakeResult } from '../handshake.ts'
import type { Link, LinkHandlers } from '../link.ts'
import { resolveTransportOptions, type ResolvedTransportOptions } from '../options.ts'
import { formatHostPort, parseHostPort } from '../address.ts'
import type {
  ConnectOptions,
  Connection,
  ConnectionHandler,
  ListenAddress,
  Listener,
  Transport,
  TransportOptions,
} from '../transport.ts'

/** Bytes one direction holds in flight before write() reports the link full. */
const WINDOW_BYTES = 64 * 1024

const noHandlers: LinkHandlers = { frame() {}, drain() {}, close() {} }

class MemoryLink implements Link {
  peer!: MemoryLink
  readonly remoteAddress: string
  #handlers: LinkHandlers = noHandlers
  readonly #parser: FrameParser
  /** Chunks the peer wrote to us, not yet parsed. */
  #incoming: Buffer[] = []
  #incomingBytes = 0
  #paused = false
  #scheduled = false
  #peerEnded = false
  #writeEnded = false
  #peerWantsDrain = false
  #closed = false
  #error: ShoalError | undefined

  constructor(remoteAddress: string, maxFrameBytes: number) {
    this.remoteAddress = remoteAddress
    this.#parser = new FrameParser(maxFrameBytes, (p) => this.#handlers.frame(p))
  }

  get writableLength(): number {
    return this.peer.#incomingBytes
  }

  setHandlers(handlers: LinkHandlers): void {
    this.#handlers = handlers
  }

  write(frame: Buffer): boolean {
    if (this.#closed || this.#writeEnded) return true
    const p = this.peer
    p.#incoming.push(frame)
    p.#incomingBytes += frame.length
    p.#schedule()
    if (p.#incomingBytes > WINDOW_BYTES) {
      p.#peerWantsDrain = true
      return false
    }
    return true
  }

  pause(): void {
    this.#paused = true
  }
  resume(): void {
    this.#paused = false
    this.#schedule()
  }

  end(): void {
    if (this.#closed || this.#writeEnded) return
    this.#writeEnded = true
    this.peer.#peerEnded = true
    this.peer.#schedule()
  }

  destroy(error?: ShoalError): void {
    if (this.#closed) return
    this.#error ??= error
    this.#close(undefined)
    this.peer.#close(
      new TransportError(ErrorCodes.CONNECTION_LOST, 'connection reset by peer', { retryable: true }),
    )
  }

  #schedule(): void {
    if (this.#scheduled || this.#closed) return
    this.#scheduled = true
    setImmediate(() => {
      this.#scheduled = false
      this.#deliver()
    })
  }

  #deliver(): void {
    while (!this.#paused && !this.#closed && this.#incoming.length > 0) {
      const chunk = this.#incoming.shift()!
      this.#incomingBytes -= chunk.length
      try {
        this.#parser.push(chunk)
      } catch (err) {
        this.#incoming = []
        this.#incomingBytes = 0
        this.#paused = true
        this.#handlers.close(err as ProtocolError)
        return
      }
    }
    if (this.#peerWantsDrain && this.#incomingBytes <= WINDOW_BYTES / 2) {
      this.#peerWantsDrain = false
      const p = this.peer
      setImmediate(() => p.#handlers.drain())
    }
    if (this.#peerEnded && this.#incoming.length === 0 && !this.#closed) {
      // EOF. Like TCP with allowHalfOpen=false, answer it by ending our side too; once the peer
      // has read what we wrote, both directions are closed.
      let err: ShoalError | undefined
      try {
        this.#parser.end()
      } catch (e) {
        err = e as ProtocolError
      }
      this.#peerEnded = false
      if (!this.#writeEnded) this.end()
      this.#eof = err ?? null
      this.#maybeClose()
      this.peer.#maybeClose()
    }
  }

  #eof: ShoalError | null | undefined = undefined

  #maybeClose(): void {
    if (this.#closed || this.#eof === undefined || !this.#writeEnded || this.peer.#incoming.length > 0) return
    if (this.peer.#eof === undefined && !this.peer.#closed) return
    this.#close(this.#eof ?? undefined)
  }

  #close(error: ShoalError | undefined): void {
    if (this.#closed) return
    this.#closed = true
    this.#incoming = []
    this.#incomingBytes = 0
    const handlers = this.#handlers
    setImmediate(() => handlers.close(this.#error ?? error))
  }
}

interface MemoryServer {
  opts: ResolvedTransportOptions
  accept(link: MemoryLink): void
}

/** Listeners of all memory transports in this process, by "host:port". */
const registry = new Map<string, MemoryServer>()
let nextPort = 40_000

class MemoryListener implements Listener {
  readonly connections = new Set<Connection>()
  #closing: Promise<void> | null = null
  constructor(
    readonly address: string,
    readonly port: number,
  ) {}
  get closing(): boolean {
    return this.#closing !== null
  }
  close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#closing !== null) return this.#closing
    registry.delete(this.address)
    this.#closing = Promise.all([...this.connections].map((c) => c.close(options))).then(() => {})
    return this.#closing
  }
}

export class MemoryTransport implements Transport {
  readonly name = 'memory' as const
  readonly #opts: ResolvedTransportOptions

  constructor(options: TransportOptions) {
    if (options.tls !== undefined) {
      throw new TransportError(
        ErrorCodes.INVALID_OPTION,
        'the memory transport has no TLS: options.tls must be unset',
      )
    }
    this.#opts = resolveTransportOptions(options)
  }

  listen(address: ListenAddress, onConnection: ConnectionHandler): Promise<Listener> {
    const host = address.host ?? '127.0.0.1'
    const port = address.port === 0 ? nextPort++ : address.port
    const key = formatHostPort(host, port)
    if (registry.has(key)) {
      return Promise.reject(
        new TransportError(ErrorCodes.CONNECT_FAILED, `cannot listen on ${key}: address in use`),
      )
    }
    const listener = new MemoryListener(key, port)
    const opts = this.#opts
    registry.set(key, {
      opts,
      accept: (link) => {
        acceptHandshake(link, opts).then(
          (hs) => {
            const conn = new LinkConnection({ options: opts, link, handshake: hs })
            listener.connections.add(conn)
            void conn.closed().then(() => listener.connections.delete(conn))
            if (listener.closing) {
              conn.destroy()
              return
            }
            try {
              onConnection(conn)
            } catch (err) {
              conn.destroy(err as Error)
            }
          },
          () => {},
        )
      },
    })
    return Promise.resolve(listener)
  }

  async connect(address: string, options: ConnectOptions = {}): Promise<Connection> {
    const { host, port } = parseHostPort(address)
    const key = formatHostPort(host, port)
    const dial = async (
      signal: AbortSignal | undefined = options.signal,
    ): Promise<{ link: Link; handshake: HandshakeResult }> => {
      signal?.throwIfAborted()
      const server = registry.get(key)
      if (server === undefined) {
        throw new TransportError(ErrorCodes.CONNECT_FAILED, `cannot connect to ${key}: connection refused`, {
          retryable: true,
        })
      }
      const client = new MemoryLink(key, this.#opts.maxFrameBytes)
      const remote = new MemoryLink(`memory:${this.#opts.nodeId}`, server.opts.maxFrameBytes)
      client.peer = remote
      remote.peer = client
      server.accept(remote)
      const handshake = await dialHandshake(client, this.#opts, signal)
      return { link: client, handshake }
    }
    const { link, handshake } = await dial()
    return new LinkConnection({
      options: this.#opts,
      link,
      handshake,
      redial: dial,
      reconnect: options.reconnect,
    })
  }
}

export function createMemoryTransport(options: TransportOptions): MemoryTransport {
  return new MemoryTransport(options)
}

/**
 * Test hook: a raw link to a memory listener with no handshake, so conformance tests can speak
 * bad protocol to it exactly as they do over a TCP socket.
 */
export function dialMemoryLink(address: string, maxFrameBytes = 8 * 1024 * 1024): Link {
  const { host, port } = parseHostPort(address)
  const key = formatHostPort(host, port)
  const server = registry.get(key)
  if (server === undefined) throw new TransportError(ErrorCodes.CONNECT_FAILED, `cannot connect to ${key}`)
  const client = new MemoryLink(key, maxFrameBytes)
  const remote = new MemoryLink('memory:raw', server.opts.maxFrameBytes)
  client.peer = remote
  remote.peer = client
  server.accept(remote)
  return client
}
