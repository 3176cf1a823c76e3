/**
 * The Transport contract. Every implementation (tcp, grpc, memory) passes the same
 * conformance suite (test/conformance/transport.suite.ts). This file imports nothing heavy so
 * fakes and suites stay cheap.
 *
 * Semantics every transport provides:
 * - A handshake before any message: protocol version negotiation, node id and role of both
 *   ends, an optional cluster token compared in constant time. Refusal is a Control `error`
 *   with a SHOAL_ERR_* code, then the connection closes.
 * - Messages on one connection arrive in the order they were sent, each at most once. Across
 *   a reconnect, messages that were in flight on the broken link may be lost (never duplicated);
 *   the layers above retry with (producer id, sequence) deduplication.
 * - Backpressure end to end: a slow reader stops reading, the link fills, and the sender's
 *   bounded outbound queue fills; send() tells the caller (false above the high-water mark,
 *   QueueFullError at the hard limit) and drain() waits for room.
 * - close() is graceful (flush what is queued, say goodbye, end); destroy() is abrupt.
 *   A peer that vanishes without goodbye (crash, reset, EOF mid-stream) surfaces as a
 *   SHOAL_ERR_CONNECTION_LOST error.
 */
import type { ShoalError } from '../errors.ts'
import type { Envelope, Message, Role } from '../protocol/messages.ts'
import type { BackoffOptions, RetryDelay } from '../util/backoff.ts'

export type TransportName = 'tcp' | 'grpc' | 'memory'

export interface TlsOptions {
  /** PEM certificate chain of this node. Required on the listening side. */
  cert?: string | Buffer
  /** PEM private key of this node. */
  key?: string | Buffer
  /** PEM CA bundle used to verify the peer. */
  ca?: string | Buffer
  /** Listening side: require and verify a client certificate (mTLS). @default false */
  requestCert?: boolean
  /** Dialing side: the name to verify in the server certificate. @default the host dialed */
  servername?: string
}

export interface TransportOptions {
  /** This node's identity, sent in the handshake. */
  nodeId: string
  role: Role
  /** Cluster token. A listener with a token refuses dialers without the same token. */
  token?: string | undefined
  /** Largest encoded envelope accepted or sent. @default 8 MiB */
  maxFrameBytes?: number
  /** send() returns false once this many bytes are queued outbound. @default 1 MiB */
  highWaterMarkBytes?: number
  /** send() throws QueueFullError beyond this many bytes queued. @default 64 MiB */
  maxQueueBytes?: number
  /** Inbound bytes held for a slow consumer before reading pauses. @default 4 MiB */
  inboundHighWaterBytes?: number
  /** @default 5000 */
  handshakeTimeoutMs?: number
  /**
   * The newest protocol version this node offers or accepts in a handshake. For a rolling
   * upgrade across a version change: keep the new builds at the old version until no node of
   * the old build is left. @default PROTOCOL_VERSION
   */
  maxProtocolVersion?: number
  /** @default 5000 */
  connectTimeoutMs?: number
  /** Close a connection that received nothing for this long; 0 disables. @default 0 */
  idleTimeoutMs?: number
  /** TCP keepalive initial delay; 0 disables. @default 10000 */
  keepAliveMs?: number
  tls?: TlsOptions | undefined
}

export interface ListenAddress {
  host?: string
  /** 0 picks a free port. */
  port: number
}

export interface ConnectOptions {
  /**
   * Reconnect after a lost link with jittered exponential backoff. A connection that was never
   * established, or was refused (bad token, version), is not retried.
   * @default false
   */
  reconnect?: boolean | BackoffOptions | RetryDelay
  signal?: AbortSignal
}

export interface PeerInfo {
  nodeId: string
  role: Role
  /** Negotiated protocol version. */
  version: number
  /** host:port of the peer, when known. */
  address: string
}

/** A message the caller sends: the transport stamps version, sender, sequence and time. */
export type OutboundMessage = Message & { corr?: number | undefined }

export type ConnectionState = 'connecting' | 'ready' | 'reconnecting' | 'closing' | 'closed'

export type ConnectionStatus =
  | { type: 'ready'; peer: PeerInfo }
  | { type: 'disconnected'; error: ShoalError }
  | { type: 'reconnecting'; attempt: number; delayMs: number }
  | { type: 'closed'; error: ShoalError | undefined }

export interface Connection extends AsyncIterable<Envelope> {
  readonly id: string
  readonly state: ConnectionState
  /** The peer as of the last handshake. */
  readonly peer: PeerInfo
  /** Outbound bytes accepted but not yet acknowledged by the link. */
  readonly queuedBytes: number
  /**
   * Queue a message. Returns false when the outbound queue is above its high-water mark (the
   * message is still queued; wait for drain() before sending more). Throws FrameTooLargeError
   * for a message over maxFrameBytes, QueueFullError at the hard limit, TransportClosedError
   * after close: in each case nothing was queued and the connection stays as it was.
   */
  send(message: OutboundMessage): boolean
  /** Resolves once the outbound queue is below its high-water mark; rejects once closed. */
  drain(options?: { signal?: AbortSignal }): Promise<void>
  /** send() that first waits for room. */
  write(message: OutboundMessage, options?: { signal?: AbortSignal }): Promise<void>
  /** Inbound messages, in order. Ends after a graceful close; throws the error otherwise. */
  [Symbol.asyncIterator](): AsyncIterator<Envelope>
  /** Status changes from now on; ends after 'closed'. */
  status(): AsyncIterable<ConnectionStatus>
  /** Flush, say goodbye, end. Falls back to destroy() after timeoutMs. Idempotent. */
  close(options?: { timeoutMs?: number }): Promise<void>
  /** Abort the connection now; queued messages are dropped. */
  destroy(error?: Error): void
  /** Resolves (never rejects) when closed: undefined after a graceful close, else the error. */
  closed(): Promise<ShoalError | undefined>
}

export interface Listener {
  /** host:port actually bound. */
  readonly address: string
  readonly port: number
  /** Connections currently open. */
  readonly connections: ReadonlySet<Connection>
  /** Stop accepting, close open connections gracefully. */
  close(options?: { timeoutMs?: number }): Promise<void>
}

export type ConnectionHandler = (connection: Connection) => void

export interface Transport {
  readonly name: TransportName
  /** Accept connections; `onConnection` receives each one after its handshake succeeded. */
  listen(address: ListenAddress, onConnection: ConnectionHandler): Promise<Listener>
  /** Dial host:port; resolves after the handshake. */
  connect(address: string, options?: ConnectOptions): Promise<Connection>
}
