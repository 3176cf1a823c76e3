/**
 * The accepting side shared by the link-based transports (TCP, gRPC): run the handshake on a
 * new link, wrap it in a LinkConnection, track it on the listener and hand it to the
 * application, or report the failed handshake. Each transport only makes the link.
 */
import { channels } from '../diagnostics.ts'
import { LinkConnection } from './connection.ts'
import { acceptHandshake } from './handshake.ts'
import type { Link } from './link.ts'
import type { ResolvedTransportOptions } from './options.ts'
import type { Connection, ConnectionHandler } from './transport.ts'

export interface AcceptingListener {
  readonly closing: boolean
  readonly connections: Set<Connection>
}

export function acceptLink(
  link: Link,
  opts: ResolvedTransportOptions,
  listener: AcceptingListener,
  transport: 'tcp' | 'grpc',
  /** Stop tracking the not-yet-handshaken link (its listener tracks those to close them). */
  untrack: () => void,
  onConnection: ConnectionHandler,
): void {
  acceptHandshake(link, opts).then(
    (hs) => {
      untrack()
      const conn = new LinkConnection({ options: opts, link, handshake: hs })
      listener.connections.add(conn)
      void conn.closed().then(() => listener.connections.delete(conn))
      if (listener.closing) {
        conn.destroy()
        return
      }
      if (channels.connected.hasSubscribers) {
        channels.connected.publish({ transport, connectionId: conn.id, peer: conn.peer })
      }
      try {
        onConnection(conn)
      } catch (err) {
        conn.destroy(err as Error)
      }
    },
    (err: unknown) => {
      untrack()
      if (channels.handshakeFailed.hasSubscribers) {
        channels.handshakeFailed.publish({ transport, remoteAddress: link.remoteAddress, error: err })
      }
    },
  )
}
