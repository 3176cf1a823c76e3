/**
 * The gRPC transport's options, apart from the transport itself so that they can be checked
 * when a transport is created without loading grpc-js (transport/index.ts loads the transport
 * on first listen or connect).
 */
import { InvalidOptionError } from '../../errors.ts'
import { resolveTransportOptions, type ResolvedTransportOptions } from '../options.ts'
import type { TransportOptions } from '../transport.ts'

export type GrpcCompression = 'none' | 'gzip' | 'deflate'

export interface GrpcTransportOptions extends TransportOptions {
  /**
   * Compress client-to-server messages (grpc-js servers never compress responses). Off by
   * default: envelopes are compact msgpack and the sender's CPU is the first bottleneck.
   * @default 'none'
   */
  compression?: GrpcCompression
  /**
   * The HTTP/2 receive windows (stream and connection) of both ends: how much a peer may send
   * before this end's reads give credit back. The dialer sets it through
   * 'grpc-node.flow_control_window', the listener through raiseServerReceiveWindow(). Memory
   * per connection, bought for throughput: Node's 64 KiB defaults cap a stream at one window
   * per round trip (docs/grpc.md §5, §6).
   * @default 8 MiB
   */
  flowControlWindowBytes?: number
}

export const DEFAULT_GRPC_TRANSPORT_OPTIONS: Readonly<{
  compression: GrpcCompression
  flowControlWindowBytes: number
}> = Object.freeze({
  compression: 'none',
  flowControlWindowBytes: 8 * 1024 * 1024,
})

export type ResolvedGrpcTransportOptions = ResolvedTransportOptions & {
  readonly compression: GrpcCompression
  readonly flowControlWindowBytes: number
}

/**
 * The gRPC transport's default outbound queue mark (TCP's is 1 MiB). The link already holds up
 * to LINK_HIGH_WATER_BYTES for grpc-js, so the queue in front of it need not be deep, and a deep
 * one was costly: frames waiting there (subarrays of msgpackr's pack buffers) outlived V8's
 * young-generation collections, and the sender spent about 3x raw grpc-js's CPU per 37 kB
 * batch (80-90 us against 28 us, mostly GC and page faults); at 128 KiB it matches raw grpc-js.
 */
const GRPC_HIGH_WATER_MARK_BYTES = 128 * 1024

export function resolveGrpcTransportOptions(options: GrpcTransportOptions): ResolvedGrpcTransportOptions {
  const base = resolveTransportOptions({
    ...options,
    highWaterMarkBytes: options.highWaterMarkBytes ?? GRPC_HIGH_WATER_MARK_BYTES,
  })
  const d = DEFAULT_GRPC_TRANSPORT_OPTIONS
  const compression = options.compression ?? d.compression
  if (compression !== 'none' && compression !== 'gzip' && compression !== 'deflate') {
    throw new InvalidOptionError(
      `options.compression must be one of none, gzip, deflate (got ${JSON.stringify(compression)})`,
    )
  }
  const window = options.flowControlWindowBytes ?? d.flowControlWindowBytes
  if (!Number.isSafeInteger(window) || window < 65_535 || window > 0x7fffffff) {
    throw new InvalidOptionError(
      `options.flowControlWindowBytes must be an integer in [65535, 2147483647] (got ${String(window)})`,
    )
  }
  const t = base.tls
  if (t !== undefined && t.requestCert === true && t.ca === undefined) {
    throw new InvalidOptionError('options.tls.requestCert needs options.tls.ca to verify clients')
  }
  return Object.freeze({ ...base, compression, flowControlWindowBytes: window })
}
