/** Pick a transport by name. Both network transports obey the same conformance suite. */
import { InvalidOptionError } from '../errors.ts'
import { createGrpcTransport } from './grpc/grpc-transport.ts'
import { createMemoryTransport } from './memory/memory-transport.ts'
import { createTcpTransport } from './tcp/tcp-transport.ts'
import type { Transport, TransportName, TransportOptions } from './transport.ts'

export function createTransport(name: TransportName, options: TransportOptions): Transport {
  switch (name) {
    case 'tcp':
      return createTcpTransport(options)
    case 'grpc':
      return createGrpcTransport(options)
    case 'memory':
      return createMemoryTransport(options)
    default:
      throw new InvalidOptionError(`unknown transport ${JSON.stringify(name)}: expected tcp, grpc or memory`)
  }
}
