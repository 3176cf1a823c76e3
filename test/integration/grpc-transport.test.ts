// gRPC-transport specifics beyond the conformance suite: health on the transport's own port,
// compression, grpc-js's own message-size refusal, keepalive, and wire compatibility with a
// client built from proto/shoal.proto.
import { connect as h2connect } from 'node:http2'
import { createServer, connect as netConnect, type AddressInfo, type Socket } from 'node:net'
import * as grpc from '@grpc/grpc-js'
import { describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes, InvalidOptionError, type ShoalError } from '../../src/errors.ts'
import { decodeEnvelope, encodeEnvelope } from '../../src/protocol/codec.ts'
import type { Envelope } from '../../src/protocol/messages.ts'
import {
  createGrpcTransport,
  raiseServerReceiveWindow,
  type GrpcListener,
  type GrpcTransportOptions,
} from '../../src/transport/grpc/grpc-transport.ts'
import { checkHealth, watchHealth, type HealthStatus } from '../../src/transport/grpc/health.ts'
import {
  CONNECT_METHOD_PATH,
  loadShoalServiceDefinition,
  SHOAL_SERVICE_NAME,
} from '../../src/transport/grpc/proto.ts'
import type { Connection, OutboundMessage } from '../../src/transport/transport.ts'
import { testPki } from '../helpers/certs.ts'
import { waitFor, within } from '../helpers/wait-for.ts'
import { everyKind } from '../conformance/transport-suite.ts'

const TOKEN = 'cluster-secret'

async function listen(
  extra: Partial<GrpcTransportOptions> = {},
): Promise<{ listener: GrpcListener; accepted: Connection[]; next: () => Promise<Connection> }> {
  const accepted: Connection[] = []
  const listener = await createGrpcTransport({
    nodeId: 'srv',
    role: 'coordinator',
    token: TOKEN,
    ...extra,
  }).listen({ host: '127.0.0.1', port: 0 }, (c) => accepted.push(c))
  onTestFinished(() => listener.close({ timeoutMs: 500 }))
  let taken = 0
  return {
    listener,
    accepted,
    next: () => {
      const i = taken++
      return waitFor(() => accepted[i], `accepted connection #${i}`)
    },
  }
}

async function dial(address: string, extra: Partial<GrpcTransportOptions> = {}): Promise<Connection> {
  const conn = await createGrpcTransport({ nodeId: 'cli', role: 'worker', token: TOKEN, ...extra }).connect(
    address,
  )
  onTestFinished(() => conn.destroy())
  return conn
}

async function collect(conn: AsyncIterable<Envelope>, n: number): Promise<Envelope[]> {
  const out: Envelope[] = []
  for await (const m of conn) {
    out.push(m)
    if (out.length === n) break
  }
  return out
}

function batch(payload: Buffer, sequence = 1): OutboundMessage {
  return {
    kind: 'event',
    body: { op: 'batch', partition: 0, epoch: 0, producerId: 'p', sequence, count: 1, payload },
  }
}

/** A TCP relay to `port` that counts the bytes the dialer sends through it. */
async function countingProxy(port: number): Promise<{ address: string; sent: () => number }> {
  let sent = 0
  const sockets = new Set<Socket>()
  const proxy = createServer((downstream) => {
    const upstream = netConnect(port, '127.0.0.1')
    sockets.add(downstream).add(upstream)
    downstream.on('data', (d: Buffer) => (sent += d.length))
    downstream.pipe(upstream).pipe(downstream)
    downstream.on('error', () => upstream.destroy())
    upstream.on('error', () => downstream.destroy())
  })
  onTestFinished(() => {
    for (const s of sockets) s.destroy()
    proxy.close()
  })
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve))
  return { address: `127.0.0.1:${(proxy.address() as AddressInfo).port}`, sent: () => sent }
}

describe('gRPC transport: health on the transport port', () => {
  it('reports NOT_SERVING until setServing(true), while Connect calls are accepted regardless', async () => {
    const s = await listen()
    const addr = s.listener.address
    expect(s.listener.serving).toBe(false)
    expect(await checkHealth(addr, '')).toBe('NOT_SERVING')
    expect(await checkHealth(addr, SHOAL_SERVICE_NAME)).toBe('NOT_SERVING')

    // Health is not a gate: the transport accepts and carries messages while NOT_SERVING.
    const c = await dial(addr)
    const sc = await s.next()
    c.send({ kind: 'heartbeat', body: { n: 1, epoch: 0 } })
    expect((await collect(sc, 1))[0]!.kind).toBe('heartbeat')

    s.listener.setServing(true)
    expect(s.listener.serving).toBe(true)
    expect(await checkHealth(addr, '')).toBe('SERVING')
    expect(await checkHealth(addr, SHOAL_SERVICE_NAME)).toBe('SERVING')
    s.listener.setServing(false)
    expect(await checkHealth(addr, '')).toBe('NOT_SERVING')
  })

  it('close() turns health NOT_SERVING for watchers before shutting down', async () => {
    const s = await listen()
    s.listener.setServing(true)
    const seen: HealthStatus[] = []
    const stop = watchHealth(s.listener.address, '', (st) => {
      seen.push(st)
      // A well-behaved prober lets go once told; then the server can finish shutting down.
      if (st === 'NOT_SERVING' && seen.length > 1) stop()
    })
    onTestFinished(stop)
    await waitFor(() => seen.length === 1, 'first Watch status')
    await within(s.listener.close({ timeoutMs: 3000 }), 5000, 'listener closes')
    expect(seen).toEqual(['SERVING', 'NOT_SERVING'])
  })

  it('serves health over TLS too, on the same port and credentials', async () => {
    const pki = testPki()
    const s = await listen({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca } })
    s.listener.setServing(true)
    const credentials = grpc.credentials.createSsl(Buffer.from(pki.ca))
    expect(await checkHealth(s.listener.address, '', 2000, { credentials })).toBe('SERVING')
    await expect(checkHealth(s.listener.address, '', 2000)).rejects.toMatchObject({
      code: ErrorCodes.CONNECTION_LOST,
    })
  })
})

describe('gRPC transport: compression', () => {
  for (const compression of ['gzip', 'deflate'] as const) {
    it(`${compression}: every kind round-trips both ways and fewer bytes cross the wire`, async () => {
      const s = await listen()
      const proxy = await countingProxy(s.listener.port)
      const c = await dial(proxy.address, { compression })
      const sc = await s.next()
      const msgs = everyKind()
      const payload = Buffer.alloc(512 * 1024, 'shoal ')
      for (const m of msgs) c.send(m)
      c.send(batch(payload))
      const got = await within(collect(sc, msgs.length + 1), 5000, 'server receives all kinds')
      expect(got.map((e) => e.kind)).toEqual([...msgs.map((m) => m.kind), 'event'])
      const big = got.at(-1)!.body as { payload: Uint8Array }
      expect(Buffer.from(big.payload).equals(payload)).toBe(true)
      // Handshake, every kind and the batch: well under a tenth of the batch alone.
      expect(proxy.sent()).toBeLessThan(payload.length / 10)
      for (const m of msgs) sc.send(m)
      const back = await within(collect(c, msgs.length), 5000, 'client receives all kinds')
      expect(back.map((e) => e.kind)).toEqual(msgs.map((m) => m.kind))
    })
  }

  it('is off by default: the payload crosses the wire as is', async () => {
    const s = await listen()
    const proxy = await countingProxy(s.listener.port)
    const c = await dial(proxy.address)
    const sc = await s.next()
    const before = proxy.sent()
    c.send(batch(Buffer.alloc(512 * 1024, 'shoal ')))
    await within(collect(sc, 1), 5000, 'batch')
    expect(proxy.sent() - before).toBeGreaterThan(512 * 1024)
  })

  it('rejects invalid gRPC options with a message naming the field', () => {
    const base = { nodeId: 'x', role: 'worker' as const }
    expect(() => createGrpcTransport({ ...base, compression: 'zstd' as 'gzip' })).toThrow(
      /options\.compression.*"zstd"/,
    )
    expect(() => createGrpcTransport({ ...base, flowControlWindowBytes: 10 })).toThrow(
      /options\.flowControlWindowBytes.*got 10/,
    )
    expect(() => createGrpcTransport({ ...base, flowControlWindowBytes: 10 })).toThrow(InvalidOptionError)
  })
})

describe('gRPC transport: message size limits', () => {
  it('beyond 2x maxFrameBytes grpc-js refuses: the sender gets FRAME_TOO_LARGE, the receiver CONNECTION_LOST', async () => {
    const max = 64 * 1024
    const s = await listen({ maxFrameBytes: max })
    const c = await dial(s.listener.address, { maxFrameBytes: 1 << 20 })
    const sc = await s.next()
    c.send(batch(Buffer.alloc(3 * max)))
    const clientErr = await within(c.closed(), 5000, 'client closes')
    expect(clientErr).toMatchObject({
      code: ErrorCodes.FRAME_TOO_LARGE,
      data: { grpcCode: grpc.status.RESOURCE_EXHAUSTED },
    })
    // grpc-js ends the call on its own and does not tell the handler why.
    expect((await within(sc.closed(), 5000, 'server closes'))?.code).toBe(ErrorCodes.CONNECTION_LOST)

    // The listener keeps serving.
    const c2 = await dial(s.listener.address)
    const sc2 = await s.next()
    c2.send({ kind: 'heartbeat', body: { n: 1, epoch: 0 } })
    expect((await collect(sc2, 1))[0]!.kind).toBe('heartbeat')
  })

  it('up to 2x maxFrameBytes the refusal is in-band, as on TCP: both ends see FRAME_TOO_LARGE', async () => {
    const max = 64 * 1024
    const s = await listen({ maxFrameBytes: max })
    const c = await dial(s.listener.address, { maxFrameBytes: 1 << 20 })
    const sc = await s.next()
    c.send(batch(Buffer.alloc(max + max / 2)))
    const serverErr = await within(sc.closed(), 5000, 'server closes')
    expect(serverErr?.code).toBe(ErrorCodes.FRAME_TOO_LARGE)
    const clientErr = (await within(c.closed(), 5000, 'client closes')) as ShoalError
    expect(clientErr.code).toBe(ErrorCodes.FRAME_TOO_LARGE)
    expect(clientErr.data).toMatchObject({ peerCode: ErrorCodes.FRAME_TOO_LARGE })
  })

  it('the other direction: a listener sending more than the dialer accepts is refused in-band', async () => {
    const s = await listen({ maxFrameBytes: 1 << 20 })
    const c = await dial(s.listener.address, { maxFrameBytes: 64 * 1024 })
    const sc = await s.next()
    sc.send(batch(Buffer.alloc(100_000)))
    expect((await within(c.closed(), 5000, 'client closes'))?.code).toBe(ErrorCodes.FRAME_TOO_LARGE)
    expect((await within(sc.closed(), 5000, 'server closes'))?.code).toBe(ErrorCodes.FRAME_TOO_LARGE)
  })
})

describe('gRPC transport: keepalive', () => {
  it('short keepalive pings on both ends keep an idle connection up', async () => {
    const s = await listen({ keepAliveMs: 100 })
    const c = await dial(s.listener.address, { keepAliveMs: 100 })
    const sc = await s.next()
    await new Promise((r) => setTimeout(r, 800))
    expect(c.state).toBe('ready')
    expect(sc.state).toBe('ready')
    c.send({ kind: 'heartbeat', body: { n: 1, epoch: 0 } })
    expect((await collect(sc, 1))[0]!.kind).toBe('heartbeat')
  })
})

describe('gRPC transport: wire compatibility', () => {
  it('a client built from proto/shoal.proto (proto-loader) completes the handshake', async () => {
    const s = await listen()
    const connect = loadShoalServiceDefinition().Connect!
    const client = new grpc.Client(s.listener.address, grpc.credentials.createInsecure())
    onTestFinished(() => client.close())
    const call = client.makeBidiStreamRequest(
      CONNECT_METHOD_PATH,
      (m: { envelope: Uint8Array }) => connect.requestSerialize(m),
      (b: Buffer) => connect.responseDeserialize(b) as { envelope: Buffer },
    )
    call.on('error', () => {})
    onTestFinished(() => call.cancel())
    const replies: Envelope[] = []
    call.on('data', (m: { envelope: Buffer }) => replies.push(decodeEnvelope(m.envelope)))
    call.write({
      envelope: encodeEnvelope({
        v: 1,
        kind: 'control',
        from: 'pl',
        seq: 0,
        ts: 0,
        body: { op: 'hello', versions: [1], nodeId: 'pl', role: 'worker', token: TOKEN },
      }),
    })
    await waitFor(() => replies.length > 0, 'welcome')
    expect(replies[0]!.body).toMatchObject({ op: 'welcome', nodeId: 'srv', version: 1 })
    const sc = await s.next()
    expect(sc.peer).toMatchObject({ nodeId: 'pl', role: 'worker' })
  })
})

describe('gRPC server receive windows', () => {
  it('raiseServerReceiveWindow still hooks this grpc-js: the server advertises the raised window and frame size', async () => {
    const server = new grpc.Server()
    // False would mean grpc-js dropped the private method it wraps: windows would stay 64 KiB.
    expect(raiseServerReceiveWindow(server, 8 * 1024 * 1024)).toBe(true)
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    )
    onTestFinished(() => server.forceShutdown())
    const session = h2connect(`http://127.0.0.1:${port}`)
    onTestFinished(() => session.destroy())
    const settings = await new Promise<{ initialWindowSize?: number; maxFrameSize?: number }>((resolve) =>
      session.once('remoteSettings', resolve),
    )
    expect(settings.initialWindowSize).toBe(8 * 1024 * 1024)
    expect(settings.maxFrameSize).toBeGreaterThan(16_384)
  })
})
