import { createMemoryTransport, dialMemoryLink } from '../../src/transport/memory/memory-transport.ts'
import { transportConformance } from './transport-suite.ts'

transportConformance({
  name: 'memory',
  create: (o) => createMemoryTransport(o),
  rawLink: (address) => Promise.resolve(dialMemoryLink(address)),
  tls: false,
})
