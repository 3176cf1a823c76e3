/** Pick a transport by name. Both network transports obey the same conformance suite. */
import { InvalidOptionError } from '../errors.ts'
import type { GrpcTransport } from './grpc/grpc-transport.ts'
import { resolveGrpcTransportOptions, type GrpcTransportOptions } from './grpc/options.ts'
import { createMemoryTransport } from './memory/memory-transport.ts'
import { createTcpTransport } from './tcp/tcp-transport.ts'
import type {
  ConnectOptions,
  Connection,
  ConnectionHandler,
  ListenAddress,
  Listener,
  Transport,
  TransportName,
  TransportOptions,
} from './transport.ts'

export function createTransport(name: TransportName, options: TransportOptions): Transport {
  switch (name) {
    case 'tcp':
      return createTcpTransport(options)
    case 'grpc':
      return lazyGrpcTransport(options)
    case 'memory':
      return createMemoryTransport(options)
    default:
      throw new InvalidOptionError(`unknown transport ${JSON.stringify(name)}: expected tcp, grpc or memory`)
  }
}

/**
 * The gRPC transport, its module (and grpc-js, ~12 MiB of a node's RSS, measured) loaded on
 * the first listen or connect: a node on TCP never loads it. The options are checked now, as
 * the transport's constructor does.
 */
function lazyGrpcTransport(options: GrpcTransportOptions): Transport {
  resolveGrpcTransportOptions(options)
  let loaded: Promise<GrpcTransport> | undefined
  const transport = (): Promise<GrpcTransport> =>
    (loaded ??= import('./grpc/grpc-transport.ts').then((m) => m.createGrpcTransport(options)))
  return {
    name: 'grpc',
    async listen(address: ListenAddress, onConnection: ConnectionHandler): Promise<Listener> {
      return (await transport()).listen(address, onConnection)
    },
    async connect(address: string, connectOptions?: ConnectOptions): Promise<Connection> {
      return (await transport()).connect(address, connectOptions)
    },
  }
}
