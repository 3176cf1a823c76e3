/**
 * A Link is one physical, already-established byte or message pipe (a TCP socket, a gRPC
 * stream, an in-memory pipe) that carries encoded envelopes. Everything above it (handshake,
 * outbound queue, backpressure, inbound queue, goodbye, reconnect) is shared by all transports
 * in connection.ts, so the transports differ only in how bytes move.
 */
import type { ShoalError } from '../errors.ts'

export interface LinkHandlers {
  /** One encoded envelope (without the 4-byte length prefix). */
  frame(payload: Buffer): void
  /** The link can take more writes after write() returned false. */
  drain(): void
  /**
   * The link is gone; called exactly once. `error` is undefined for a clean end of stream at a
   * frame boundary; a ProtocolError for a bad frame; a transport error for a reset or failure.
   */
  close(error: ShoalError | undefined): void
}

export interface Link {
  readonly remoteAddress: string
  /** Bytes written but not yet handed to the OS (or the peer). */
  readonly writableLength: number
  /**
   * Write one frame: the 4-byte big-endian length prefix followed by the encoded envelope, as
   * produced by encodeFrame(). Returns false when the link's own buffer is full; wait for
   * handlers.drain before writing more.
   */
  write(frame: Buffer): boolean
  /** Stop / restart delivering inbound frames (backpressure towards the peer). */
  pause(): void
  resume(): void
  /** Flush what was written, then end the stream. */
  end(): void
  /** Tear the link down now (a reset where the medium has one). */
  destroy(error?: ShoalError): void
  setHandlers(handlers: LinkHandlers): void
}
