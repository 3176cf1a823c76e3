import net from 'node:net'
import { SocketLink, createTcpTransport } from '../../src/transport/tcp/tcp-transport.ts'
import { parseHostPort } from '../../src/transport/address.ts'
import { transportConformance } from './transport-suite.ts'

transportConformance({
  name: 'tcp',
  create: (o) => createTcpTransport(o),
  rawLink: (address) =>
    new Promise((resolve, reject) => {
      const { host, port } = parseHostPort(address)
      const socket = net.connect({ host, port }, () => resolve(new SocketLink(socket, 8 * 1024 * 1024)))
      socket.once('error', reject)
    }),
  tls: true,
})
