import { InvalidOptionError } from '../errors.ts'
import { PROTOCOL_VERSION, ROLES, SUPPORTED_VERSIONS } from '../protocol/messages.ts'
import type { TransportOptions } from './transport.ts'

export const DEFAULT_TRANSPORT_OPTIONS = Object.freeze({
  maxFrameBytes: 8 * 1024 * 1024,
  highWaterMarkBytes: 1024 * 1024,
  maxQueueBytes: 64 * 1024 * 1024,
  inboundHighWaterBytes: 4 * 1024 * 1024,
  handshakeTimeoutMs: 5000,
  connectTimeoutMs: 5000,
  idleTimeoutMs: 0,
  keepAliveMs: 10_000,
})

export type ResolvedTransportOptions = Readonly<Required<Omit<TransportOptions, 'token' | 'tls'>>> &
  Pick<TransportOptions, 'token' | 'tls'>

function int(name: string, value: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidOptionError(
      `options.${name} must be an integer in [${min}, ${max}] (got ${String(value)})`,
    )
  }
  return value
}

export function resolveTransportOptions(options: TransportOptions): ResolvedTransportOptions {
  const d = DEFAULT_TRANSPORT_OPTIONS
  if (typeof options.nodeId !== 'string' || options.nodeId.length === 0 || options.nodeId.length > 256) {
    throw new InvalidOptionError(
      `options.nodeId must be a non-empty string of at most 256 characters (got ${JSON.stringify(options.nodeId)})`,
    )
  }
  if (!ROLES.includes(options.role)) {
    throw new InvalidOptionError(
      `options.role must be one of ${ROLES.join(', ')} (got ${JSON.stringify(options.role)})`,
    )
  }
  if (options.token !== undefined && (typeof options.token !== 'string' || options.token.length === 0)) {
    throw new InvalidOptionError('options.token must be a non-empty string when set')
  }
  const r = {
    nodeId: options.nodeId,
    role: options.role,
    token: options.token,
    tls: options.tls,
    maxFrameBytes: int('maxFrameBytes', options.maxFrameBytes ?? d.maxFrameBytes, 1024, 0xffffffff),
    highWaterMarkBytes: int('highWaterMarkBytes', options.highWaterMarkBytes ?? d.highWaterMarkBytes, 1),
    maxQueueBytes: int('maxQueueBytes', options.maxQueueBytes ?? d.maxQueueBytes, 1),
    inboundHighWaterBytes: int(
      'inboundHighWaterBytes',
      options.inboundHighWaterBytes ?? d.inboundHighWaterBytes,
      1,
    ),
    handshakeTimeoutMs: int('handshakeTimeoutMs', options.handshakeTimeoutMs ?? d.handshakeTimeoutMs, 1),
    maxProtocolVersion: int(
      'maxProtocolVersion',
      options.maxProtocolVersion ?? PROTOCOL_VERSION,
      Math.min(...SUPPORTED_VERSIONS),
      PROTOCOL_VERSION,
    ),
    connectTimeoutMs: int('connectTimeoutMs', options.connectTimeoutMs ?? d.connectTimeoutMs, 1),
    idleTimeoutMs: int('idleTimeoutMs', options.idleTimeoutMs ?? d.idleTimeoutMs, 0),
    keepAliveMs: int('keepAliveMs', options.keepAliveMs ?? d.keepAliveMs, 0),
  }
  // Cross-field rules: reject, never clamp.
  if (r.maxQueueBytes < r.highWaterMarkBytes) {
    throw new InvalidOptionError(
      `options.maxQueueBytes (${r.maxQueueBytes}) must be >= options.highWaterMarkBytes (${r.highWaterMarkBytes})`,
    )
  }
  if (r.maxQueueBytes < r.maxFrameBytes + 4) {
    throw new InvalidOptionError(
      `options.maxQueueBytes (${r.maxQueueBytes}) must hold at least one frame of maxFrameBytes (${r.maxFrameBytes})`,
    )
  }
  if (options.tls !== undefined) {
    const t = options.tls
    if ((t.cert === undefined) !== (t.key === undefined)) {
      throw new InvalidOptionError('options.tls.cert and options.tls.key must be given together')
    }
  }
  return Object.freeze(r)
}
