import { createGrpcTransport, dialGrpcLink } from '../../src/transport/grpc/grpc-transport.ts'
import { transportConformance } from './transport-suite.ts'

transportConformance({
  name: 'grpc',
  create: (o) => createGrpcTransport(o),
  rawLink: (address) => dialGrpcLink(address),
  tls: true,
})
