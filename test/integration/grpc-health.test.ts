// gRPC health service, health client helpers, `shoal probe` exit codes (as a child process),
// and the hand-built Frame codec against the proto-loader-built one, on loopback.
import { spawn } from 'node:child_process'
import { createServer as createHttpServer } from 'node:http'
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import fc from 'fast-check'
import { describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes, ProtocolError, ShoalError } from '../../src/errors.ts'
import { decodeEnvelope, encodeEnvelope } from '../../src/protocol/codec.ts'
import type { Envelope } from '../../src/protocol/messages.ts'
import {
  checkHealth,
  createHealthService,
  GrpcCallError,
  watchHealth,
  type HealthService,
  type HealthStatus,
} from '../../src/transport/grpc/health.ts'
import {
  CONNECT_METHOD_PATH,
  decodeFrameMessage,
  encodeFrameMessage,
  findShoalProtoPath,
  loadShoalPackageDefinition,
  loadShoalServiceDefinition,
  SHOAL_SERVICE_NAME,
  shoalServiceDefinition,
} from '../../src/transport/grpc/proto.ts'

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url))

// --- helpers ---------------------------------------------------------------------------------

async function waitFor(cond: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

/** A real grpc-js server on 127.0.0.1:0, shut down when the test finishes. */
async function startGrpcServer(
  setup: (server: grpc.Server) => void,
): Promise<{ server: grpc.Server; addr: string }> {
  const server = new grpc.Server()
  onTestFinished(() => server.forceShutdown())
  setup(server)
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    )
  })
  return { server, addr: `127.0.0.1:${port}` }
}

async function startHealthServer(): Promise<{ health: HealthService; server: grpc.Server; addr: string }> {
  const health = createHealthService()
  const { server, addr } = await startGrpcServer((s) => health.addToServer(s))
  return { health, server, addr }
}

/** A port that nothing listens on (bound, then released). */
async function freePort(): Promise<number> {
  const srv = createNetServer()
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  const { port } = srv.address() as AddressInfo
  await new Promise<void>((resolve) => srv.close(() => resolve()))
  return port
}

/** A TCP server that accepts connections and never answers. */
async function startSilentServer(): Promise<number> {
  const sockets = new Set<Socket>()
  const srv = createNetServer((s) => {
    sockets.add(s)
    s.on('error', () => {})
  })
  onTestFinished(() => {
    for (const s of sockets) s.destroy()
    srv.close()
  })
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  return (srv.address() as AddressInfo).port
}

async function startHttpServer(status: number): Promise<string> {
  const srv = createHttpServer((_req, res) => {
    res.writeHead(status, { 'content-type': 'text/plain' }).end(String(status))
  })
  onTestFinished(() => {
    srv.closeAllConnections()
    srv.close()
  })
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  return `http://127.0.0.1:${(srv.address() as AddressInfo).port}/readyz`
}

interface ProbeRun {
  code: number | null
  stdout: string
  stderr: string
}

/** `node --import tsx src/cli/probe.ts ...args` as a child process. */
function runProbeProcess(args: string[]): Promise<ProbeRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/probe.ts', ...args], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    onTestFinished(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

// --- health service and client helpers ------------------------------------------------------

describe('gRPC health service', () => {
  it('starts NOT_SERVING and follows readiness for "" and shoal.v1.Shoal', async () => {
    const { health, addr } = await startHealthServer()
    expect(health.serving).toBe(false)
    expect(health.services).toEqual(['', SHOAL_SERVICE_NAME])
    expect(await checkHealth(addr, '')).toBe('NOT_SERVING')
    expect(await checkHealth(addr, SHOAL_SERVICE_NAME)).toBe('NOT_SERVING')

    health.setServing(true)
    expect(health.serving).toBe(true)
    expect(await checkHealth(addr, '')).toBe('SERVING')
    expect(await checkHealth(addr, SHOAL_SERVICE_NAME)).toBe('SERVING')

    health.setServing(false)
    expect(await checkHealth(addr, '')).toBe('NOT_SERVING')
    expect(await checkHealth(addr, SHOAL_SERVICE_NAME)).toBe('NOT_SERVING')
  })

  it('answers NOT_FOUND for an unknown service', async () => {
    const { health, addr } = await startHealthServer()
    health.setServing(true)
    const err = await checkHealth(addr, 'no.such.Service').catch((e: unknown) => e)
    expect(err).toBeInstanceOf(GrpcCallError)
    expect(err).toMatchObject({ code: ErrorCodes.TRANSPORT, grpcCode: grpc.status.NOT_FOUND })
  })

  it('Watch streams SERVICE_UNKNOWN, then SERVING once the name is set', async () => {
    const { health, addr } = await startHealthServer()
    const seen: HealthStatus[] = []
    const stop = watchHealth(addr, 'shoal.v1.Extra', (s) => seen.push(s))
    onTestFinished(stop)
    await waitFor(() => seen.length === 1, 'the first Watch status')
    expect(seen).toEqual(['SERVICE_UNKNOWN'])
    health.setStatus('shoal.v1.Extra', 'SERVING')
    await waitFor(() => seen.length === 2, 'the SERVING update')
    expect(seen).toEqual(['SERVICE_UNKNOWN', 'SERVING'])
    expect(await checkHealth(addr, 'shoal.v1.Extra')).toBe('SERVING')
  })

  it('Watch streams each readiness change once (NOT_SERVING on setServing(false))', async () => {
    const { health, addr } = await startHealthServer()
    const seen: HealthStatus[] = []
    const stop = watchHealth(addr, '', (s) => seen.push(s))
    onTestFinished(stop)
    await waitFor(() => seen.length === 1, 'the first Watch status')
    health.setServing(true)
    health.setServing(true) // no change: must not be streamed again
    await waitFor(() => seen.length === 2, 'the SERVING update')
    health.setServing(false)
    await waitFor(() => seen.length === 3, 'the NOT_SERVING update')
    expect(seen).toEqual(['NOT_SERVING', 'SERVING', 'NOT_SERVING'])
  })

  it('Watch reports the server going away through onError; stop() is quiet and idempotent', async () => {
    const { health, server, addr } = await startHealthServer()
    const seen: HealthStatus[] = []
    const errors: ShoalError[] = []
    const stop = watchHealth(addr, SHOAL_SERVICE_NAME, (s) => seen.push(s), {
      onError: (e) => errors.push(e),
    })
    onTestFinished(stop)
    await waitFor(() => seen.length === 1, 'the first Watch status')
    health.setServing(true)
    await waitFor(() => seen.length === 2, 'the SERVING update')
    server.forceShutdown()
    await waitFor(() => errors.length === 1, 'onError after shutdown')
    expect(errors[0]).toBeInstanceOf(ShoalError)
    expect([ErrorCodes.CONNECTION_LOST, ErrorCodes.TRANSPORT]).toContain(errors[0]!.code)
    stop()
    stop()
    expect(errors).toHaveLength(1)
  })

  it('checkHealth fails fast with CONNECTION_LOST when nothing listens, DEADLINE_EXCEEDED on a silent peer', async () => {
    const port = await freePort()
    await expect(checkHealth(`127.0.0.1:${port}`, '', 2000)).rejects.toMatchObject({
      code: ErrorCodes.CONNECTION_LOST,
      grpcCode: grpc.status.UNAVAILABLE,
    })
    const silent = await startSilentServer()
    await expect(checkHealth(`127.0.0.1:${silent}`, '', 200)).rejects.toMatchObject({
      code: ErrorCodes.DEADLINE_EXCEEDED,
    })
  })

  it('checkHealth honours an AbortSignal', async () => {
    const silent = await startSilentServer()
    const ac = new AbortController()
    const p = checkHealth(`127.0.0.1:${silent}`, '', 5000, { signal: ac.signal })
    ac.abort()
    await expect(p).rejects.toMatchObject({ code: ErrorCodes.ABORTED })
  })
})

// --- shoal probe (child process) ------------------------------------------------------------

describe('shoal probe exit codes', () => {
  it('grpc: SERVING -> 0', async () => {
    const { health, addr } = await startHealthServer()
    health.setServing(true)
    const run = await runProbeProcess(['grpc', addr])
    expect(run).toMatchObject({ code: 0, stdout: 'status: SERVING\n', stderr: '' })
  })

  it('grpc: NOT_SERVING -> 4, for "" and with --service shoal.v1.Shoal', async () => {
    const { addr } = await startHealthServer()
    const [plain, named] = await Promise.all([
      runProbeProcess(['grpc', addr]),
      runProbeProcess(['grpc', addr, '--service', SHOAL_SERVICE_NAME, '--timeout', '2000']),
    ])
    expect(plain).toMatchObject({ code: 4, stdout: 'status: NOT_SERVING\n' })
    expect(named).toMatchObject({ code: 4, stdout: 'status: NOT_SERVING\n' })
  })

  it('grpc: unknown service -> 3', async () => {
    const { health, addr } = await startHealthServer()
    health.setServing(true)
    const run = await runProbeProcess(['grpc', addr, '--service=no.such.Service'])
    expect(run.code).toBe(3)
    expect(run.stderr).toMatch(/^error: .*NOT_FOUND/)
  })

  it('grpc: nothing listening -> 2; silent peer -> 2 after --timeout', async () => {
    const port = await freePort()
    const silent = await startSilentServer()
    const [refused, timedOut] = await Promise.all([
      runProbeProcess(['grpc', `127.0.0.1:${port}`]),
      runProbeProcess(['grpc', `127.0.0.1:${silent}`, '--timeout', '300']),
    ])
    expect(refused.code).toBe(2)
    expect(refused.stderr).toMatch(/UNAVAILABLE/)
    expect(timedOut.code).toBe(2)
    expect(timedOut.stderr).toMatch(/DEADLINE_EXCEEDED/)
  })

  it('bad arguments -> 1', async () => {
    const runs = await Promise.all([
      runProbeProcess([]),
      runProbeProcess(['grpc']),
      runProbeProcess(['grpc', 'no-port']),
      runProbeProcess(['grpc', '127.0.0.1:7001', '--timeout', 'soon']),
      runProbeProcess(['grpc', '127.0.0.1:7001', '--bogus']),
      runProbeProcess(['http', 'ftp://127.0.0.1/']),
    ])
    for (const run of runs) {
      expect(run.code).toBe(1)
      expect(run.stderr).toMatch(/^error: /)
    }
  })

  it('http: 200 -> 0, 503 -> 4, 500 -> 3', async () => {
    const [ok, unavailable, broken] = await Promise.all([
      startHttpServer(200),
      startHttpServer(503),
      startHttpServer(500),
    ])
    const [r200, r503, r500] = await Promise.all([
      runProbeProcess(['http', ok]),
      runProbeProcess(['http', unavailable]),
      runProbeProcess(['http', broken]),
    ])
    expect(r200).toMatchObject({ code: 0, stdout: 'status: SERVING (HTTP 200)\n' })
    expect(r503).toMatchObject({ code: 4, stdout: 'status: NOT_SERVING (HTTP 503)\n' })
    expect(r500.code).toBe(3)
    expect(r500.stderr).toMatch(/^error: HTTP 500/)
  })

  it('http: nothing listening -> 2; silent peer -> 2 after --timeout', async () => {
    const port = await freePort()
    const silent = await startSilentServer()
    const [refused, timedOut] = await Promise.all([
      runProbeProcess(['http', `http://127.0.0.1:${port}/readyz`]),
      runProbeProcess(['http', `http://127.0.0.1:${silent}/readyz`, '--timeout', '300']),
    ])
    expect(refused.code).toBe(2)
    expect(refused.stderr).toMatch(/ECONNREFUSED/)
    expect(timedOut.code).toBe(2)
  })
})

// --- Frame codec: hand-built vs proto-loader ------------------------------------------------

describe('Frame codec', () => {
  const connect = loadShoalServiceDefinition()['Connect']!
  const viaProtoLoader = (envelope: Uint8Array): Buffer =>
    connect.requestSerialize({ envelope: Buffer.from(envelope) })
  const fromProtoLoader = (buf: Buffer): Buffer =>
    (connect.requestDeserialize(buf) as { envelope: Buffer }).envelope

  function bytesOf(n: number): Uint8Array {
    const b = new Uint8Array(n)
    for (let i = 0; i < n; i++) b[i] = (i * 31 + 7) & 0xff
    return b
  }

  it('finds proto/shoal.proto and loads the service with the same path as the hand-built one', () => {
    expect(findShoalProtoPath()).toMatch(/proto[\\/]shoal\.proto$/)
    expect(connect.path).toBe(CONNECT_METHOD_PATH)
    expect(shoalServiceDefinition.Connect.path).toBe(CONNECT_METHOD_PATH)
    expect(connect.requestStream && connect.responseStream).toBe(true)
    const pkg = loadShoalPackageDefinition()
    for (const name of [
      'Frame',
      'Envelope',
      'EventBatch',
      'StateBody',
      'ControlBody',
      'HeartbeatBody',
      'CheckpointBody',
    ]) {
      expect(pkg[`shoal.v1.${name}`], name).toBeDefined()
    }
  })

  it('agrees with proto-loader byte for byte at every varint-length boundary', () => {
    for (const n of [1, 2, 127, 128, 129, 16_383, 16_384, 16_385, 70_000, 2_097_151, 2_097_152]) {
      const env = bytesOf(n)
      const mine = encodeFrameMessage(env)
      expect(mine.equals(viaProtoLoader(env)), `encode n=${n}`).toBe(true)
      expect(decodeFrameMessage(mine).equals(env), `decode n=${n}`).toBe(true)
      expect(fromProtoLoader(mine).equals(env), `proto-loader decodes mine n=${n}`).toBe(true)
    }
  })

  it('agrees with proto-loader on random envelopes (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 600 }), (env) => {
        const mine = encodeFrameMessage(env)
        expect(mine.equals(viaProtoLoader(env))).toBe(true)
        expect(decodeFrameMessage(viaProtoLoader(env)).equals(env)).toBe(true)
      }),
      { numRuns: 300, interruptAfterTimeLimit: 2000 },
    )
  })

  it('decodes a view without copying, skips unknown fields and keeps the last envelope', () => {
    const wire = encodeFrameMessage(bytesOf(10))
    const view = decodeFrameMessage(wire)
    expect(view.buffer).toBe(wire.buffer)
    // field 2 varint, field 3 fixed32, field 4 fixed64, field 5 bytes, then envelope twice
    const noisy = Buffer.concat([
      Buffer.from([0x10, 0x96, 0x01, 0x1d, 1, 2, 3, 4, 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 0x2a, 0x02, 9, 9]),
      encodeFrameMessage(Uint8Array.of(1)),
      encodeFrameMessage(Uint8Array.of(7, 7)),
    ])
    expect([...decodeFrameMessage(noisy)]).toEqual([7, 7])
    expect([...fromProtoLoader(noisy)]).toEqual([7, 7])
  })

  it('rejects malformed input with SHOAL_ERR_MALFORMED_MESSAGE', () => {
    const cases: Record<string, number[]> = {
      empty: [],
      'empty envelope': [0x0a, 0x00],
      'no envelope field': [0x10, 0x01],
      'truncated key varint': [0x80],
      'truncated length varint': [0x0a, 0x80],
      'length beyond the end': [0x0a, 0x05, 1, 2],
      'envelope as varint': [0x08, 0x01],
      'start group': [0x0b],
      'wire type 7': [0x0f, 0x00],
      'field number 0': [0x02, 0x00],
      'truncated fixed32': [0x1d, 1, 2],
      'truncated fixed64': [0x0a, 0x01, 0x01, 0x21, 1],
      'varint over 10 bytes': [0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    }
    for (const [name, bytes] of Object.entries(cases)) {
      let caught: unknown
      try {
        decodeFrameMessage(Buffer.from(bytes))
      } catch (err) {
        caught = err
      }
      expect(caught, name).toBeInstanceOf(ProtocolError)
      expect((caught as ProtocolError).code, name).toBe(ErrorCodes.MALFORMED_MESSAGE)
    }
  })

  it('interoperates on the wire: hand-built server, proto-loader client, real envelopes', async () => {
    const { addr } = await startGrpcServer((server) => {
      server.addService(shoalServiceDefinition, {
        Connect: (call: grpc.ServerDuplexStream<Uint8Array, Uint8Array>) => {
          call.on('data', (envelope: Uint8Array) => call.write(envelope))
          call.on('end', () => call.end())
        },
      })
    })
    const Client = grpc.makeClientConstructor(loadShoalServiceDefinition(), SHOAL_SERVICE_NAME)
    const client = new Client(addr, grpc.credentials.createInsecure())
    onTestFinished(() => client.close())
    const call = client.makeBidiStreamRequest(
      connect.path,
      connect.requestSerialize,
      connect.responseDeserialize,
    ) as grpc.ClientDuplexStream<{ envelope: Buffer }, { envelope: Buffer }>

    const sent: Envelope[] = [
      { v: 1, from: 'w1', seq: 1, ts: 1, kind: 'heartbeat', body: { n: 1, epoch: 3 } },
      {
        v: 1,
        from: 'w1',
        seq: 2,
        ts: 2,
        kind: 'event',
        body: {
          op: 'batch',
          partition: 7,
          epoch: 3,
          producerId: 'p',
          sequence: 9,
          count: 2,
          payload: Uint8Array.of(0x92, 1, 2),
        },
      },
    ]
    const received: Envelope[] = []
    call.on('data', (frame: { envelope: Buffer }) => received.push(decodeEnvelope(frame.envelope)))
    const ended = new Promise<void>((resolve, reject) => {
      call.on('end', resolve)
      call.on('error', reject)
    })
    for (const env of sent) call.write({ envelope: encodeEnvelope(env) })
    call.end()
    await ended
    expect(received).toHaveLength(2)
    expect(received[0]).toMatchObject({ kind: 'heartbeat', body: { n: 1, epoch: 3 } })
    expect(received[1]).toMatchObject({ kind: 'event', body: { op: 'batch', partition: 7, count: 2 } })
  })
})
