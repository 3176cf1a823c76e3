/**
 * gRPC transport: one `shoal.v1.Shoal/Connect` bidirectional stream per connection, each Link
 * frame carried as one `Frame { bytes envelope = 1 }` message (proto.ts). Everything above the
 * Link (handshake, queues, goodbye, reconnect) is the shared LinkConnection, exactly as on TCP:
 * the handshake is in-band, so a gRPC connection authenticates like a TCP one.
 *
 * Mapping onto gRPC (details and rationale in docs/grpc.md §6):
 * - One grpc.Server per listen(), also serving grpc.health.v1 (NOT_SERVING until setServing).
 * - One grpc.Client (channel, private subchannel pool) per dial, closed with its call, so every
 *   connection has its own HTTP/2 connection and flow-control windows.
 * - end(): client half-close / server status OK. destroy(): client cancel (RST_STREAM) / server
 *   status UNAVAILABLE, which the peer reports as CONNECTION_LOST.
 * - grpc-js enforces message sizes far above maxFrameBytes (2x) so that ordinary oversize frames
 *   reach this code and are refused in-band like on TCP; see receiveLimit().
 */
import type http2 from 'node:http2'
import * as grpc from '@grpc/grpc-js'
import {
  AbortedError,
  ConnectTimeoutError,
  ErrorCodes,
  FrameTooLargeError,
  ProtocolError,
  TransportError,
  type ShoalError,
} from '../../errors.ts'
import { formatHostPort, parseHostPort } from '../address.ts'
import { LinkConnection } from '../connection.ts'
import { acceptLink } from '../accept.ts'
import { dialHandshake, type HandshakeResult } from '../handshake.ts'
import type { Link, LinkHandlers } from '../link.ts'
import type { ResolvedTransportOptions } from '../options.ts'
import type {
  ConnectOptions,
  Connection,
  ConnectionHandler,
  ListenAddress,
  Listener,
  Transport,
} from '../transport.ts'
import { createHealthService, GrpcCallError, type HealthService } from './health.ts'
import {
  CONNECT_METHOD_PATH,
  decodeFrameMessage,
  encodeFrameMessage,
  shoalServiceDefinition,
} from './proto.ts'

import {
  resolveGrpcTransportOptions,
  type GrpcCompression,
  type GrpcTransportOptions,
  type ResolvedGrpcTransportOptions,
} from './options.ts'

export {
  DEFAULT_GRPC_TRANSPORT_OPTIONS,
  resolveGrpcTransportOptions,
  type GrpcCompression,
  type GrpcTransportOptions,
  type ResolvedGrpcTransportOptions,
} from './options.ts'

// -------------------------------------------------------------------------------------------
// Limits and channel options.

/** Protobuf wrapper around an envelope: tag byte + varint length (5 bytes up to 2^35). */
const FRAME_OVERHEAD_BYTES = 6
/**
 * grpc-js checks a message's declared length before buffering it, but the receiving handler is
 * never told why its call ended. So its limit sits at twice maxFrameBytes: a peer configured
 * with a larger maxFrameBytes (the usual mismatch) gets through to our own check and both ends
 * see FRAME_TOO_LARGE in-band, as on TCP; only beyond 2x does grpc-js refuse on its own
 * (sender: RESOURCE_EXHAUSTED -> FRAME_TOO_LARGE, receiver: CONNECTION_LOST).
 */
function receiveLimit(maxFrameBytes: number): number {
  return Math.min(2 * maxFrameBytes + FRAME_OVERHEAD_BYTES, 0xffffffff)
}
/** Our own sends never exceed maxFrameBytes (encodeFrame checks); this is a backstop. */
function sendLimit(maxFrameBytes: number): number {
  return maxFrameBytes + FRAME_OVERHEAD_BYTES
}

/**
 * The link is full when the stream says so (grpc-js streams buffer 16 messages) or when this
 * many bytes await HTTP/2, whichever comes first: 16 messages of up to maxFrameBytes each would
 * otherwise let the link buffer far more than the connection's own queue bound. It refills below
 * the low mark. With 256 KiB / 64 KiB (seven 37 kB batches, refilled only once at most one was
 * left) the link ran nearly dry every cycle once the HTTP/2 windows were open, and each message
 * went to the socket on its own: the sender spent 2.5x the raw grpc-js CPU per batch. At
 * 1 MiB / 256 KiB it matches raw grpc-js (docs/benchmarks.md, Transport throughput).
 */
const LINK_HIGH_WATER_BYTES = 1024 * 1024
const LINK_LOW_WATER_BYTES = 256 * 1024
/** How long an ended stream may wait for the peer to finish before it is torn down. */
const LINGER_MS = 5000
/** A dead peer is declared after one keepalive interval without a PING ack, but never < 1 s. */
const MIN_KEEPALIVE_TIMEOUT_MS = 1000

const COMPRESSION_ALGORITHMS: Record<Exclude<GrpcCompression, 'none'>, grpc.compressionAlgorithms> = {
  deflate: grpc.compressionAlgorithms.deflate,
  gzip: grpc.compressionAlgorithms.gzip,
}

function keepaliveOptions(opts: ResolvedTransportOptions): grpc.ChannelOptions {
  if (opts.keepAliveMs === 0) return {}
  return {
    'grpc.keepalive_time_ms': opts.keepAliveMs,
    'grpc.keepalive_timeout_ms': Math.max(MIN_KEEPALIVE_TIMEOUT_MS, opts.keepAliveMs),
    'grpc.keepalive_permit_without_calls': 1,
  }
}

function clientChannelOptions(opts: ResolvedGrpcTransportOptions): grpc.ChannelOptions {
  const o: grpc.ChannelOptions = {
    ...keepaliveOptions(opts),
    'grpc.max_receive_message_length': receiveLimit(opts.maxFrameBytes),
    'grpc.max_send_message_length': sendLimit(opts.maxFrameBytes),
    'grpc-node.flow_control_window': opts.flowControlWindowBytes,
    // One HTTP/2 connection per Shoal connection, closed with it.
    'grpc.use_local_subchannel_pool': 1,
    // Retries would buffer every sent message until the call commits; LinkConnection redials.
    'grpc.enable_retries': 0,
    'grpc.enable_channelz': 0,
  }
  if (opts.compression !== 'none') {
    o['grpc.default_compression_algorithm'] = COMPRESSION_ALGORITHMS[opts.compression]
  }
  const servername = opts.tls?.servername
  if (servername !== undefined) {
    o['grpc.ssl_target_name_override'] = servername
    o['grpc.default_authority'] = servername
  }
  return o
}

function serverOptions(opts: ResolvedTransportOptions): grpc.ServerOptions {
  const o: grpc.ServerOptions = {
    ...keepaliveOptions(opts),
    'grpc.max_receive_message_length': receiveLimit(opts.maxFrameBytes),
    'grpc.max_send_message_length': sendLimit(opts.maxFrameBytes),
    'grpc.enable_channelz': 0,
  }
  if (opts.keepAliveMs > 0) {
    // grpc-js servers do not police client pings, but C-core/Go-style peers and proxies read
    // these keys: allow pings at our own keepalive rate, with or without calls in flight.
    o['grpc.http2.min_ping_interval_without_data_ms'] = Math.min(opts.keepAliveMs, 5000)
    o['grpc.http2.max_pings_without_data'] = 0
  }
  return o
}

/**
 * SETTINGS_MAX_FRAME_SIZE the listener advertises: the dialer may then send a whole batch
 * envelope as one DATA frame instead of 16 KiB pieces (Node's default, never raised by grpc-js).
 */
const SERVER_MAX_FRAME_BYTES = 1024 * 1024

type CreateHttp2Server = (credentials: grpc.ServerCredentials) => unknown

function isHttp2Server(x: unknown): x is http2.Http2Server {
  return (
    typeof x === 'object' &&
    x !== null &&
    typeof (x as Partial<http2.Http2Server>).updateSettings === 'function' &&
    typeof (x as Partial<http2.Http2Server>).on === 'function'
  )
}

/**
 * Raise the HTTP/2 receive windows of one grpc.Server to `windowBytes` (stream: the
 * SETTINGS_INITIAL_WINDOW_SIZE it advertises; connection: setLocalWindowSize on every session)
 * and advertise SERVER_MAX_FRAME_BYTES frames. grpc-js 1.14 has no server option for either
 * (grpc-node issue #2429, PR #3058), and its 64 KiB windows cap client-to-server throughput.
 *
 * It wraps the private createHttp2Server method of THIS instance (no global patch): grpc-js
 * calls it once per bound address, for plaintext and TLS alike, and only ever from bindAsync.
 * Returns false, changing nothing, when grpc-js no longer has that method; a wrapped call that
 * does not return an http2 server is passed through untouched. Call it before bindAsync.
 */
export function raiseServerReceiveWindow(server: grpc.Server, windowBytes: number): boolean {
  const target = server as unknown as { createHttp2Server?: CreateHttp2Server }
  const original = target.createHttp2Server
  if (typeof original !== 'function') return false
  const settings: http2.Settings = { initialWindowSize: windowBytes, maxFrameSize: SERVER_MAX_FRAME_BYTES }
  target.createHttp2Server = function (this: unknown, credentials: grpc.ServerCredentials): unknown {
    const h2 = original.call(this, credentials)
    if (isHttp2Server(h2)) {
      h2.updateSettings(settings)
      h2.on('session', (session: http2.ServerHttp2Session) => {
        // The connection window; the stream window comes from the SETTINGS above.
        if (!session.destroyed) session.setLocalWindowSize(windowBytes)
      })
    }
    return h2
  }
  return true
}

function pem(value: string | Buffer | undefined): Buffer | null {
  if (value === undefined) return null
  return typeof value === 'string' ? Buffer.from(value) : value
}

function channelCredentials(opts: ResolvedTransportOptions): grpc.ChannelCredentials {
  const t = opts.tls
  if (t === undefined) return grpc.credentials.createInsecure()
  return grpc.credentials.createSsl(pem(t.ca), pem(t.key), pem(t.cert))
}

function serverCredentials(opts: ResolvedTransportOptions): grpc.ServerCredentials {
  const t = opts.tls
  if (t === undefined) return grpc.ServerCredentials.createInsecure()
  const key = pem(t.key)
  const cert = pem(t.cert)
  if (key === null || cert === null) {
    throw new TransportError(
      ErrorCodes.INVALID_OPTION,
      'options.tls.cert and options.tls.key are required to listen with TLS',
    )
  }
  return grpc.ServerCredentials.createSsl(
    pem(t.ca),
    [{ private_key: key, cert_chain: cert }],
    t.requestCert ?? false,
  )
}

// -------------------------------------------------------------------------------------------
// Error mapping.

const TLS_DETAILS = /SSL|TLS|certificate|self[- ]signed|unable to (verify|get)|alert/i

/** A status that ended the call before the server accepted it (no response headers yet). */
function connectError(st: grpc.StatusObject, address: string): ShoalError {
  const what = `cannot connect to ${address}: ${grpc.status[st.code] ?? st.code} ${st.details}`
  if (TLS_DETAILS.test(st.details)) {
    return new GrpcCallError(ErrorCodes.TLS_FAILED, `TLS with ${address} failed: ${st.details}`, st.code)
  }
  if (st.code === grpc.status.UNIMPLEMENTED) {
    // Something answers gRPC there, but not Shoal: redialing will not help.
    return new GrpcCallError(ErrorCodes.CONNECT_FAILED, what, st.code)
  }
  return new GrpcCallError(ErrorCodes.CONNECT_FAILED, what, st.code, { retryable: true })
}

/** A status that ended an established stream. */
function streamError(st: grpc.StatusObject, address: string): ShoalError {
  const name = grpc.status[st.code] ?? String(st.code)
  if (st.code === grpc.status.RESOURCE_EXHAUSTED) {
    return new GrpcCallError(
      ErrorCodes.FRAME_TOO_LARGE,
      `${address} refused a message: ${name} ${st.details}`,
      st.code,
    )
  }
  return new GrpcCallError(
    ErrorCodes.CONNECTION_LOST,
    `connection to ${address} lost: ${name} ${st.details}`,
    st.code,
    { retryable: true },
  )
}

// -------------------------------------------------------------------------------------------
// The Link.

/** What a Connect stream yields: envelope bytes, or why a message could not be decoded. */
type Inbound = Buffer | ProtocolError

/**
 * Never throws into grpc-js: a malformed Frame becomes a value the link turns into an in-band
 * refusal (MALFORMED_MESSAGE), as TCP does for a bad frame, instead of a bare INTERNAL status
 * the receiving handler would never see.
 */
function decodeInbound(buf: Buffer): Inbound {
  try {
    return decodeFrameMessage(buf)
  } catch (err) {
    return err instanceof ProtocolError
      ? err
      : new ProtocolError(ErrorCodes.MALFORMED_MESSAGE, `malformed Frame: ${String(err)}`)
  }
}

const connectServiceDefinition = {
  Connect: { ...shoalServiceDefinition.Connect, requestDeserialize: decodeInbound },
} satisfies grpc.ServiceDefinition

type ClientCall = grpc.ClientDuplexStream<Uint8Array, Inbound>
type ServerCall = grpc.ServerDuplexStream<Inbound, Uint8Array>

type LinkSide =
  { kind: 'client'; call: ClientCall; client: grpc.Client } | { kind: 'server'; call: ServerCall }

const noHandlers: LinkHandlers = { frame() {}, drain() {}, close() {} }

export class GrpcLink implements Link {
  readonly remoteAddress: string
  readonly #side: LinkSide
  readonly #stream: ClientCall | ServerCall
  readonly #maxFrameBytes: number
  #handlers: LinkHandlers = noHandlers
  #pendingBytes = 0
  #needDrain = false
  /** handlers.close was called. */
  #reported = false
  /** The call is over (client: status received; server: 'cancelled'). */
  #done = false
  #writeEnded = false
  #peerEnded = false
  #statusOk = false
  #destroyed = false
  /** After a bad inbound frame: keep reading (to see the end of the call) but drop messages. */
  #discard = false
  #error: ShoalError | undefined
  #lingerTimer: NodeJS.Timeout | null = null

  constructor(side: LinkSide, remoteAddress: string, maxFrameBytes: number) {
    this.#side = side
    this.#stream = side.call
    this.remoteAddress = remoteAddress
    this.#maxFrameBytes = maxFrameBytes
    const s = side.call
    // Both call types report failures through 'status' / 'cancelled'; 'error' only repeats them.
    s.on('error', () => {})
    s.on('data', (m: Inbound) => this.#onMessage(m))
    s.on('drain', () => this.#maybeDrain())
    if (side.kind === 'client') {
      const call = side.call
      call.on('end', () => {
        this.#peerEnded = true
        if (this.#statusOk) this.#report(this.#error)
      })
      call.on('status', (st: grpc.StatusObject) => {
        this.#callOver()
        side.client.close()
        if (st.code === grpc.status.OK) {
          this.#statusOk = true
          if (this.#peerEnded) this.#report(this.#error)
          else if (this.#discard) call.resume()
          return
        }
        this.#report(this.#destroyed ? this.#error : (this.#error ?? streamError(st, this.remoteAddress)))
      })
    } else {
      const call = side.call
      call.on('end', () => {
        // The peer half-closed: answer with our status, like TCP without allowHalfOpen.
        this.#peerEnded = true
        this.end()
      })
      // grpc-js emits 'cancelled' whenever the call is over: after our status went out, or when
      // the peer reset the stream or the connection died.
      call.on('cancelled', () => {
        this.#callOver()
        if (this.#writeEnded || this.#peerEnded) this.#report(this.#error)
        else
          this.#report(
            this.#error ??
              new TransportError(ErrorCodes.CONNECTION_LOST, `connection to ${this.remoteAddress} reset`, {
                retryable: true,
              }),
          )
      })
    }
  }

  get writableLength(): number {
    return this.#pendingBytes
  }

  setHandlers(handlers: LinkHandlers): void {
    this.#handlers = handlers
  }

  /** Split the (possibly coalesced) length-prefixed frames into one Frame message each. */
  write(frame: Buffer): boolean {
    if (this.#writeEnded || this.#done || this.#destroyed) return true
    const s = this.#stream
    let off = 0
    while (off + 4 <= frame.length) {
      const end = Math.min(frame.length, off + 4 + frame.readUInt32BE(off))
      const envelope = frame.subarray(off + 4, end)
      const n = envelope.length
      this.#pendingBytes += n
      s.write(envelope, () => this.#onWritten(n))
      off = end
    }
    if (this.#pendingBytes < LINK_HIGH_WATER_BYTES && !s.writableNeedDrain) return true
    this.#needDrain = true
    return false
  }

  pause(): void {
    this.#stream.pause()
  }
  resume(): void {
    if (!this.#reported) this.#stream.resume()
  }

  /** Client: half-close and wait for the server's status. Server: send status OK. */
  end(): void {
    if (this.#writeEnded || this.#done || this.#destroyed) return
    this.#writeEnded = true
    this.#stream.end()
    if (this.#discard) this.#stream.resume()
    this.#lingerTimer = setTimeout(() => this.destroy(), LINGER_MS)
    this.#lingerTimer.unref()
  }

  destroy(error?: ShoalError): void {
    this.#error ??= error
    if (this.#done || this.#destroyed) return
    this.#destroyed = true
    const side = this.#side
    if (side.kind === 'client') {
      // RST_STREAM(CANCEL): the server sees 'cancelled' at once. Our 'status' reports the close.
      side.call.cancel()
      return
    }
    // A server handler cannot reset its stream; an error status is the closest, and the peer
    // reports it as CONNECTION_LOST. It is sent behind messages already handed to grpc-js.
    if (!this.#writeEnded) {
      this.#writeEnded = true
      side.call.emit('error', {
        code: grpc.status.UNAVAILABLE,
        details: 'connection reset by peer',
      } satisfies Partial<grpc.StatusObject>)
    }
    this.#report(this.#error)
  }

  #onMessage(m: Inbound): void {
    if (this.#reported || this.#discard) return
    if (m instanceof ProtocolError) {
      this.#enterDiscard(m)
      return
    }
    if (m.length > this.#maxFrameBytes) {
      this.#enterDiscard(new FrameTooLargeError(m.length, this.#maxFrameBytes))
      return
    }
    this.#handlers.frame(m)
  }

  /** Like TCP's parser error: report it (the connection refuses and ends) and drop the rest. */
  #enterDiscard(err: ProtocolError): void {
    this.#discard = true
    this.#stream.resume()
    this.#report(err)
  }

  #onWritten(n: number): void {
    this.#pendingBytes -= n
    this.#maybeDrain()
  }

  #maybeDrain(): void {
    if (this.#stream.writableNeedDrain || this.#pendingBytes > LINK_LOW_WATER_BYTES) return
    if (!this.#needDrain || this.#reported) return
    this.#needDrain = false
    this.#handlers.drain()
  }

  #callOver(): void {
    this.#done = true
    if (this.#lingerTimer !== null) clearTimeout(this.#lingerTimer)
  }

  #report(error: ShoalError | undefined): void {
    if (this.#reported) return
    this.#reported = true
    this.#handlers.close(error)
  }
}

// -------------------------------------------------------------------------------------------
// Dialing.

/**
 * Open a Connect call on a fresh channel and wait until the listener accepted it (its response
 * headers arrive), within connectTimeoutMs. No handshake.
 */
function openLink(
  address: string,
  opts: ResolvedGrpcTransportOptions,
  signal: AbortSignal | undefined,
): Promise<GrpcLink> {
  return new Promise<GrpcLink>((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(new AbortedError(signal.reason))
      return
    }
    let client: grpc.Client
    try {
      client = new grpc.Client(address, channelCredentials(opts), clientChannelOptions(opts))
    } catch (err) {
      reject(new TransportError(ErrorCodes.CONNECT_FAILED, `cannot connect to ${address}: ${String(err)}`))
      return
    }
    const call: ClientCall = client.makeBidiStreamRequest(
      CONNECT_METHOD_PATH,
      encodeFrameMessage,
      decodeInbound,
      new grpc.Metadata(),
      {},
    )
    const timer = setTimeout(
      () => fail(new ConnectTimeoutError(address, opts.connectTimeoutMs)),
      opts.connectTimeoutMs,
    )
    const onAbort = (): void => fail(new AbortedError(signal?.reason))
    const onStatus = (st: grpc.StatusObject): void => fail(connectError(st, address))
    const onError = (): void => {}
    const onMetadata = (): void => {
      done()
      resolve(new GrpcLink({ kind: 'client', call, client }, address, opts.maxFrameBytes))
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    call.on('error', onError)
    call.once('status', onStatus)
    call.once('metadata', onMetadata)
    function done(): void {
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      call.off('status', onStatus)
      call.off('error', onError)
      call.off('metadata', onMetadata)
    }
    function fail(err: ShoalError): void {
      done()
      call.on('error', () => {})
      call.cancel()
      client.close()
      reject(err)
    }
  })
}

/**
 * Test hook: a raw Connect stream to a gRPC listener with no handshake, so conformance tests can
 * speak bad protocol to it exactly as they do over a TCP socket.
 */
export function dialGrpcLink(
  address: string,
  options: Omit<GrpcTransportOptions, 'nodeId' | 'role'> = {},
): Promise<GrpcLink> {
  const { host, port } = parseHostPort(address)
  const opts = resolveGrpcTransportOptions({ nodeId: 'raw', role: 'worker', ...options })
  return openLink(formatHostPort(host, port), opts, undefined)
}

// -------------------------------------------------------------------------------------------
// Listening.

/** A gRPC listener: a Listener that also answers grpc.health.v1 on the same port. */
export interface GrpcListener extends Listener {
  /**
   * Readiness reported by grpc.health.v1 for '' and 'shoal.v1.Shoal'. NOT_SERVING until the
   * owner calls setServing(true); close() sets it back. Accepting Connect calls does not depend
   * on it: health is for probes and load balancers, not a gate.
   */
  setServing(ready: boolean): void
  readonly serving: boolean
}

class GrpcListenerImpl implements GrpcListener {
  readonly address: string
  readonly port: number
  readonly connections = new Set<Connection>()
  readonly #server: grpc.Server
  readonly #health: HealthService
  readonly #handshaking = new Set<GrpcLink>()
  #closing: Promise<void> | null = null

  constructor(server: grpc.Server, health: HealthService, host: string, port: number) {
    this.#server = server
    this.#health = health
    this.port = port
    this.address = formatHostPort(host, port)
  }

  get closing(): boolean {
    return this.#closing !== null
  }
  get serving(): boolean {
    return this.#health.serving
  }
  setServing(ready: boolean): void {
    this.#health.setServing(ready)
  }

  track(link: GrpcLink): void {
    this.#handshaking.add(link)
  }
  untrack(link: GrpcLink): void {
    this.#handshaking.delete(link)
  }

  close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#closing !== null) return this.#closing
    const timeoutMs = options.timeoutMs ?? 5000
    const deadline = Date.now() + timeoutMs
    const server = this.#server
    this.#health.setServing(false)
    // Stop listening and send GOAWAY at once; streams already open carry on until they end.
    const shutdown = new Promise<void>((resolve) => server.tryShutdown(() => resolve()))
    for (const link of this.#handshaking) link.destroy()
    this.#handshaking.clear()
    this.#closing = Promise.all([...this.connections].map((c) => c.close({ timeoutMs }))).then(async () => {
      // Whatever still holds a session (a health Watch, a stuck peer) is cut at the deadline.
      let timer: NodeJS.Timeout | undefined
      const expired = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, Math.max(0, deadline - Date.now()))
      })
      await Promise.race([shutdown, expired])
      clearTimeout(timer)
      server.forceShutdown()
    })
    return this.#closing
  }
}

// -------------------------------------------------------------------------------------------
// The transport.

export class GrpcTransport implements Transport {
  readonly name = 'grpc' as const
  readonly #opts: ResolvedGrpcTransportOptions

  constructor(options: GrpcTransportOptions) {
    this.#opts = resolveGrpcTransportOptions(options)
  }

  get options(): ResolvedGrpcTransportOptions {
    return this.#opts
  }

  async listen(address: ListenAddress, onConnection: ConnectionHandler): Promise<GrpcListener> {
    const opts = this.#opts
    const host = address.host ?? '127.0.0.1'
    const credentials = serverCredentials(opts)
    const server = new grpc.Server(serverOptions(opts))
    raiseServerReceiveWindow(server, opts.flowControlWindowBytes)
    const health = createHealthService()
    let listener: GrpcListenerImpl | undefined

    const connect = (call: ServerCall): void => {
      if (listener === undefined || listener.closing) {
        call.on('error', () => {})
        call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'listener is closing' })
        return
      }
      const l = listener
      // Response headers now, so the dialer knows it was accepted before the handshake starts.
      call.sendMetadata(new grpc.Metadata())
      const link = new GrpcLink({ kind: 'server', call }, call.getPeer(), opts.maxFrameBytes)
      l.track(link)
      acceptLink(link, opts, l, 'grpc', () => l.untrack(link), onConnection)
    }
    server.addService(connectServiceDefinition, { Connect: connect })
    health.addToServer(server)

    const bindAddress = formatHostPort(host, address.port)
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync(bindAddress, credentials, (err, p) => (err === null ? resolve(p) : reject(err)))
    }).catch((err: Error) => {
      server.forceShutdown()
      throw new TransportError(ErrorCodes.CONNECT_FAILED, `cannot listen on ${bindAddress}: ${err.message}`, {
        cause: err,
      })
    })
    listener = new GrpcListenerImpl(server, health, host, port)
    return listener
  }

  async connect(address: string, options: ConnectOptions = {}): Promise<Connection> {
    const { host, port } = parseHostPort(address)
    const target = formatHostPort(host, port)
    const dial = async (
      signal: AbortSignal | undefined,
    ): Promise<{ link: Link; handshake: HandshakeResult }> => {
      const link = await openLink(target, this.#opts, signal)
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
}

export function createGrpcTransport(options: GrpcTransportOptions): GrpcTransport {
  return new GrpcTransport(options)
}
