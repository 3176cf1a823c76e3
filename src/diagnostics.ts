/**
 * diagnostics_channel names published by Shoal. Payloads are built only when a channel has
 * subscribers, and never include tokens or event payloads.
 */
import diagnostics from 'node:diagnostics_channel'

export const channels = {
  /** { transport, remoteAddress, error } — an inbound connection was refused during its handshake. */
  handshakeFailed: diagnostics.channel('shoal:transport:handshake-failed'),
  /** { transport, connectionId, peer } — a connection completed its handshake. */
  connected: diagnostics.channel('shoal:transport:connect'),
} as const
