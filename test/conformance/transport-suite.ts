/**
 * The Transport conformance suite. Every transport runs all of it; the only difference between
 * runs is the fixture. (TLS cases are registered for transports that have a wire to protect.)
 */
import { Packr } from 'msgpackr'
import { describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes, ShoalError } from '../../src/errors.ts'
import { decodeEnvelope, encodeFrame } from '../../src/protocol/codec.ts'
import { PROTOCOL_VERSION, type Envelope } from '../../src/protocol/messages.ts'
import type { Link } from '../../src/transport/link.ts'
import type {
  Connection,
  ConnectionStatus,
  Listener,
  OutboundMessage,
  Transport,
  TransportOptions,
} from '../../src/transport/transport.ts'
import { testPki } from '../helpers/certs.ts'
import { waitFor, within } from '../helpers/wait-for.ts'

export interface TransportFixture {
  name: string
  create(options: TransportOptions): Transport
  /** A raw link to a listener, with no handshake done, to speak bad protocol to it. */
  rawLink(address: string): Promise<Link>
  /** Whether the transport runs over TLS when options.tls is given. */
  tls: boolean
}

const packr = new Packr({ useRecords: true })

export function everyKind(): OutboundMessage[] {
  const events = Array.from({ length: 50 }, (_, i) => ({
    key: `user-${i % 7}`,
    value: i,
    ts: 1_700_000_000_000 + i,
  }))
  return [
    {
      kind: 'event',
      body: {
        op: 'batch',
        partition: 17,
        epoch: 3,
        producerId: 'p-1',
        sequence: 42,
        count: events.length,
        payload: packr.pack(events),
      },
    },
    { kind: 'event', body: { op: 'ack', partition: 17, producerId: 'p-1', sequence: 42, ok: true } },
    { kind: 'state', body: { op: 'get', key: 'user-1', partition: 3 } },
    {
      kind: 'state',
      body: { op: 'result', key: 'user-1', found: true, data: packr.pack({ count: 2, sum: 5 }) },
    },
    { kind: 'control', body: { op: 'assign', partitions: [1, 2, 3], epoch: 9 } },
    {
      kind: 'control',
      body: { op: 'error', code: 'SHOAL_ERR_QUEUE_FULL', message: 'slow down', fatal: false },
    },
    {
      kind: 'heartbeat',
      body: {
        n: 7,
        epoch: 9,
        load: { queueDepth: 1, inFlight: 2, eventsPerSec: 1000.5, rssBytes: 1e8, lag: 0 },
      },
    },
    { kind: 'heartbeat', body: { n: 8, epoch: 9 } },
    { kind: 'checkpoint', body: { op: 'trigger', checkpointId: 12, partitions: [1, 2] } },
    { kind: 'checkpoint', body: { op: 'ack', checkpointId: 12, partitions: [1] }, corr: 99 },
    // Protocol version 2: a round of batches, and of acks, in one message.
    {
      kind: 'event',
      body: {
        op: 'batches',
        batches: [17, 18].map((partition) => ({
          op: 'batch' as const,
          partition,
          epoch: 3,
          producerId: 'p-1',
          sequence: 43,
          count: events.length,
          payload: packr.pack(events),
        })),
      },
    },
    {
      kind: 'event',
      body: {
        op: 'acks',
        acks: [
          { op: 'ack', partition: 17, producerId: 'p-1', sequence: 43, ok: true },
          {
            op: 'ack',
            partition: 18,
            producerId: 'p-1',
            sequence: 43,
            ok: false,
            error: { name: 'ShoalError', code: 'SHOAL_ERR_NOT_OWNER', message: 'moved', retryable: true },
          },
        ],
      },
    },
  ]
}

/** Normalize for comparison: bytes compared by content whatever their Buffer/Uint8Array class. */
function norm(v: unknown): unknown {
  if (v instanceof Uint8Array)
    return { bytes: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex') }
  if (Array.isArray(v)) return v.map(norm)
  if (typeof v === 'object' && v !== null) {
    return Object.fromEntries(
      Object.entries(v)
        .filter(([, x]) => x !== undefined && x !== null)
        .map(([k, x]) => [k, norm(x)]),
    )
  }
  return v
}

async function collect(conn: AsyncIterable<Envelope>, n: number): Promise<Envelope[]> {
  const out: Envelope[] = []
  if (n === 0) return out
  for await (const m of conn) {
    out.push(m)
    if (out.length === n) break
  }
  return out
}

/** Frames received on a raw link, and how it ended. */
function recordLink(link: Link): { frames: Envelope[]; closed: Promise<ShoalError | undefined> } {
  const frames: Envelope[] = []
  const closed = new Promise<ShoalError | undefined>((resolve) => {
    link.setHandlers({
      frame: (p) => frames.push(decodeEnvelope(p)),
      drain() {},
      close: (e) => resolve(e),
    })
  })
  return { frames, closed }
}

function helloFrame(versions: number[], token?: string): Buffer {
  return encodeFrame(
    {
      v: 1,
      kind: 'control',
      from: 'raw',
      seq: 0,
      ts: 0,
      body: { op: 'hello', versions, nodeId: 'raw', role: 'worker', token },
    },
    1 << 20,
  )
}

/** A frame with a hand-built wire array, to send what the encoder would never produce. */
function rawEnvelopeFrame(wire: unknown[]): Buffer {
  const body = new Packr({ useRecords: false }).pack(wire)
  const frame = Buffer.alloc(4 + body.length)
  frame.writeUInt32BE(body.length, 0)
  body.copy(frame, 4)
  return frame
}

export function transportConformance(fx: TransportFixture): void {
  describe(`Transport conformance: ${fx.name}`, () => {
    const TOKEN = 'cluster-secret'

    function transport(nodeId: string, extra: Partial<TransportOptions> = {}): Transport {
      return fx.create({
        nodeId,
        role: nodeId.startsWith('srv') ? 'coordinator' : 'worker',
        token: TOKEN,
        ...extra,
      })
    }

    /** A listener whose accepted connections are handed to the test in order. */
    async function server(
      extra: Partial<TransportOptions> = {},
      port = 0,
    ): Promise<{ listener: Listener; accepted: Connection[]; next: () => Promise<Connection> }> {
      const accepted: Connection[] = []
      const listener = await transport('srv', extra).listen({ host: '127.0.0.1', port }, (c) =>
        accepted.push(c),
      )
      onTestFinished(() => listener.close({ timeoutMs: 500 }))
      let taken = 0
      return {
        listener,
        accepted,
        next: async () => {
          const i = taken++
          return waitFor(() => accepted[i], `accepted connection #${i}`)
        },
      }
    }

    async function dial(
      address: string,
      extra: Partial<TransportOptions> = {},
      reconnect?: boolean,
    ): Promise<Connection> {
      const conn = await transport('cli', extra).connect(
        address,
        reconnect === true ? { reconnect: { initialDelayMs: 5, maxDelayMs: 50 } } : {},
      )
      onTestFinished(() => conn.destroy())
      return conn
    }

    it('handshake: both ends learn the peer identity, role and negotiated version', async () => {
      const s = await server()
      const c = await dial(s.listener.address)
      const sc = await s.next()
      expect(c.peer).toMatchObject({ nodeId: 'srv', role: 'coordinator', version: PROTOCOL_VERSION })
      expect(sc.peer).toMatchObject({ nodeId: 'cli', role: 'worker', version: PROTOCOL_VERSION })
      expect(c.state).toBe('ready')
    })

    it('maxProtocolVersion: a node held at version 1 talks version 1 with a newer peer, either side', async () => {
      for (const [srvMax, cliMax] of [
        [1, undefined],
        [undefined, 1],
      ] as const) {
        const s = await server(srvMax === undefined ? {} : { maxProtocolVersion: srvMax })
        const c = await dial(s.listener.address, cliMax === undefined ? {} : { maxProtocolVersion: cliMax })
        const sc = await s.next()
        expect(c.peer.version).toBe(1)
        expect(sc.peer.version).toBe(1)
        c.send({ kind: 'heartbeat', body: { n: 1, epoch: 0 } })
        const [got] = await within(collect(sc, 1), 5000, 'a version-1 envelope')
        expect(got!.v).toBe(1)
      }
      expect(() => transport('cli', { maxProtocolVersion: PROTOCOL_VERSION + 1 })).toThrow(
        /maxProtocolVersion/,
      )
      expect(() => transport('cli', { maxProtocolVersion: 0 })).toThrow(/maxProtocolVersion/)
    })

    it('round-trips every message kind in both directions, payload bytes intact', async () => {
      const s = await server()
      const c = await dial(s.listener.address)
      const sc = await s.next()
      const msgs = everyKind()
      for (const m of msgs) c.send(m)
      const got = await within(collect(sc, msgs.length), 5000, 'server receives all kinds')
      expect(got.map((e) => ({ kind: e.kind, body: norm(e.body) }))).toEqual(
        msgs.map((m) => ({ kind: m.kind, body: norm(m.body) })),
      )
      expect(got.every((e) => e.from === 'cli' && e.v === PROTOCOL_VERSION)).toBe(true)
      expect(got[9]!.corr).toBe(99)
      // Event payloads decode back to the same events.
      const batch = got[0]!.body as { payload: Uint8Array }
      expect(packr.unpack(batch.payload)).toHaveLength(50)
      for (const m of msgs) sc.send(m)
      const back = await within(collect(c, msgs.length), 5000, 'client receives all kinds')
      expect(back.map((e) => norm(e.body))).toEqual(msgs.map((m) => norm(m.body)))
    })

    it('preserves order and stamps increasing sequence numbers', async () => {
      const s = await server()
      const c = await dial(s.listener.address)
      const sc = await s.next()
      const N = 20_000
      for (let i = 0; i < N; i++) {
        if (!c.send({ kind: 'heartbeat', body: { n: i, epoch: 0 } })) await c.drain()
      }
      const got = await within(collect(sc, N), 15_000, 'all messages')
      expect(got.map((e) => (e.body as { n: number }).n)).toEqual(Array.from({ length: N }, (_, i) => i))
      for (let i = 1; i < got.length; i++) expect(got[i]!.seq).toBeGreaterThan(got[i - 1]!.seq)
    })

    it('carries frames up to maxFrameBytes and refuses larger ones locally without closing', async () => {
      const max = 256 * 1024
      const s = await server({ maxFrameBytes: max })
      const c = await dial(s.listener.address, { maxFrameBytes: max })
      const sc = await s.next()
      // Find the payload size whose envelope is exactly max bytes.
      const msg = (n: number): OutboundMessage => ({
        kind: 'event',
        body: {
          op: 'batch',
          partition: 0,
          epoch: 0,
          producerId: 'p',
          sequence: 1,
          count: 1,
          payload: Buffer.alloc(n, 7),
        },
      })
      const size = (n: number): number =>
        encodeFrame({ v: 1, from: 'cli', seq: 1, ts: Date.now(), ...msg(n) }, 1 << 30).length - 4
      let n = max - (size(max) - max)
      while (size(n) > max) n--
      while (size(n + 1) <= max) n++
      expect(size(n)).toBe(max)
      c.send(msg(n))
      let thrown: unknown
      try {
        c.send(msg(n + 1))
      } catch (err) {
        thrown = err
      }
      expect(thrown).toBeInstanceOf(ShoalError)
      expect((thrown as ShoalError).code).toBe(ErrorCodes.FRAME_TOO_LARGE)
      c.send({ kind: 'heartbeat', body: { n: 1, epoch: 0 } })
      const [big, after] = await within(collect(sc, 2), 5000, 'max frame and follow-up')
      expect((big!.body as { payload: Uint8Array }).payload.length).toBe(n)
      expect(after!.kind).toBe('heartbeat')
      expect(c.state).toBe('ready')
    })

    it('a peer sending a frame over the limit is refused with FRAME_TOO_LARGE; the listener keeps serving', async () => {
      const s = await server({ maxFrameBytes: 64 * 1024 })
      const c = await dial(s.listener.address, { maxFrameBytes: 1 << 20 })
      const sc = await s.next()
      c.send({
        kind: 'event',
        body: {
          op: 'batch',
          partition: 0,
          epoch: 0,
          producerId: 'p',
          sequence: 1,
          count: 0,
          payload: Buffer.alloc(100_000),
        },
      })
      expect((await within(sc.closed(), 5000, 'server side closes'))?.code).toBe(ErrorCodes.FRAME_TOO_LARGE)
      expect((await within(c.closed(), 5000, 'client learns why'))?.code).toBe(ErrorCodes.FRAME_TOO_LARGE)
      const c2 = await dial(s.listener.address)
      const sc2 = await s.next()
      c2.send({ kind: 'heartbeat', body: { n: 1, epoch: 0 } })
      expect((await collect(sc2, 1))[0]!.kind).toBe('heartbeat')
    })

    it('backpressure: a reader that stops reading bounds the sender; nothing accepted is lost', async () => {
      const hwm = 128 * 1024
      const maxQueue = 512 * 1024
      const s = await server({ inboundHighWaterBytes: 64 * 1024 })
      const c = await dial(s.listener.address, {
        highWaterMarkBytes: hwm,
        maxQueueBytes: maxQueue,
        maxFrameBytes: 64 * 1024,
      })
      const sc = await s.next()
      const payload = Buffer.alloc(8 * 1024, 1)
      let accepted = 0
      let sawFalse = false
      let full: unknown
      // The server is not reading. Keep sending (yielding to I/O between bursts) until the hard limit.
      for (let round = 0; round < 2000 && full === undefined; round++) {
        for (let i = 0; i < 16; i++) {
          try {
            const ok = c.send({
              kind: 'event',
              body: {
                op: 'batch',
                partition: 0,
                epoch: 0,
                producerId: 'p',
                sequence: accepted,
                count: 1,
                payload,
              },
            })
            accepted++
            if (!ok) sawFalse = true
          } catch (err) {
            full = err
            break
          }
          expect(c.queuedBytes).toBeLessThanOrEqual(maxQueue)
        }
        await new Promise((r) => setImmediate(r))
      }
      expect(sawFalse).toBe(true)
      expect((full as ShoalError).code).toBe(ErrorCodes.QUEUE_FULL)
      expect(c.state).toBe('ready')
      // Sender-side memory stayed bounded although the total offered was far more.
      expect(c.queuedBytes).toBeLessThanOrEqual(maxQueue)
      // The reader catches up: every accepted message arrives, in order, none lost.
      const got = await within(collect(sc, accepted), 15_000, 'reader catches up')
      expect(got.map((e) => (e.body as { sequence: number }).sequence)).toEqual(
        Array.from({ length: accepted }, (_, i) => i),
      )
      await within(c.drain(), 5000, 'drain resolves once the queue empties')
    })

    it('write() waits for room: a slow reader receives everything', async () => {
      const s = await server({ inboundHighWaterBytes: 32 * 1024 })
      const c = await dial(s.listener.address, {
        highWaterMarkBytes: 64 * 1024,
        maxQueueBytes: 256 * 1024,
        maxFrameBytes: 64 * 1024,
      })
      const sc = await s.next()
      const N = 400
      const received: number[] = []
      const reader = (async () => {
        for await (const m of sc) {
          received.push((m.body as { sequence: number }).sequence)
          if (received.length % 50 === 0) await new Promise((r) => setTimeout(r, 5))
          if (received.length === N) break
        }
      })()
      for (let i = 0; i < N; i++) {
        await c.write({
          kind: 'event',
          body: {
            op: 'batch',
            partition: 0,
            epoch: 0,
            producerId: 'p',
            sequence: i,
            count: 1,
            payload: Buffer.alloc(4096),
          },
        })
        expect(c.queuedBytes).toBeLessThanOrEqual(256 * 1024)
      }
      await within(reader, 15_000, 'slow reader finishes')
      expect(received).toEqual(Array.from({ length: N }, (_, i) => i))
    })

    it('a peer reset surfaces as CONNECTION_LOST on the other end, in closed() and in iteration', async () => {
      const s = await server()
      const c = await dial(s.listener.address)
      const sc = await s.next()
      sc.destroy()
      const err = await within(c.closed(), 5000, 'client sees the reset')
      expect(err?.code).toBe(ErrorCodes.CONNECTION_LOST)
      await expect(collect(c, 1)).rejects.toMatchObject({ code: ErrorCodes.CONNECTION_LOST })
      expect(c.state).toBe('closed')
    })

    it('graceful close flushes everything queued and ends the peer cleanly', async () => {
      const s = await server()
      const c = await dial(s.listener.address)
      const sc = await s.next()
      const N = 5000
      for (let i = 0; i < N; i++) c.send({ kind: 'heartbeat', body: { n: i, epoch: 0 } })
      const closing = c.close()
      const got: number[] = []
      for await (const m of sc) got.push((m.body as { n: number }).n)
      expect(got).toHaveLength(N)
      await within(closing, 5000, 'close resolves')
      expect(await sc.closed()).toBeUndefined()
      expect(await c.closed()).toBeUndefined()
    })

    it('close semantics: idempotent, send after close is refused, destroy after close is a no-op', async () => {
      const s = await server()
      const c = await dial(s.listener.address)
      await s.next()
      const p1 = c.close()
      const p2 = c.close()
      expect(p1).toBe(p2)
      expect(() => c.send({ kind: 'heartbeat', body: { n: 1, epoch: 0 } })).toThrow(
        expect.objectContaining({ code: ErrorCodes.CLOSED }),
      )
      await p1
      c.destroy(new Error('late'))
      expect(await c.closed()).toBeUndefined()
      expect(c.state).toBe('closed')
      await expect(c.drain()).rejects.toMatchObject({ code: ErrorCodes.CLOSED })
    })

    it('destroy drops the connection at once and the peer sees an error', async () => {
      const s = await server()
      const c = await dial(s.listener.address)
      const sc = await s.next()
      c.destroy()
      expect(c.state).toBe('closed')
      expect((await within(sc.closed(), 5000, 'server sees it'))?.code).toBe(ErrorCodes.CONNECTION_LOST)
    })

    it('reconnects with backoff after the link is lost, and after the listener restarts', async () => {
      const s = await server()
      const c = await dial(s.listener.address, {}, true)
      const statuses: ConnectionStatus['type'][] = []
      void (async () => {
        for await (const st of c.status()) statuses.push(st.type)
      })()
      const sc1 = await s.next()
      sc1.destroy()
      const sc2 = await within(s.next(), 5000, 'client comes back')
      await waitFor(() => c.state === 'ready' && statuses.includes('ready'), 'ready again')
      expect(statuses.slice(0, 3)).toEqual(['disconnected', 'reconnecting', 'ready'])
      c.send({ kind: 'heartbeat', body: { n: 1, epoch: 0 } })
      expect((await collect(sc2, 1))[0]!.body).toMatchObject({ n: 1 })

      // The whole listener goes away (graceful goodbye) and comes back on the same port.
      const port = s.listener.port
      await s.listener.close()
      await waitFor(() => c.state === 'reconnecting', 'client notices')
      const s2 = await server({}, port)
      const sc3 = await within(s2.next(), 5000, 'reconnect to the restarted listener')
      await waitFor(() => c.state === 'ready', 'ready after restart')
      c.send({ kind: 'heartbeat', body: { n: 2, epoch: 0 } })
      expect((await collect(sc3, 1))[0]!.body).toMatchObject({ n: 2 })
    })

    it('a dialer without reconnect closes with an error when the peer vanishes', async () => {
      const s = await server()
      const c = await dial(s.listener.address)
      ;(await s.next()).destroy()
      expect((await c.closed())?.retryable).toBe(true)
    })

    it('refuses a wrong or missing token with AUTH_FAILED and keeps serving others', async () => {
      const s = await server()
      await expect(
        fx.create({ nodeId: 'cli', role: 'worker', token: 'wrong' }).connect(s.listener.address),
      ).rejects.toMatchObject({
        code: ErrorCodes.AUTH_FAILED,
        retryable: false,
      })
      await expect(
        fx.create({ nodeId: 'cli', role: 'worker' }).connect(s.listener.address),
      ).rejects.toMatchObject({
        code: ErrorCodes.AUTH_FAILED,
      })
      // A reconnecting dialer does not retry a refusal forever either.
      await expect(
        fx
          .create({ nodeId: 'cli', role: 'worker', token: 'wrong' })
          .connect(s.listener.address, { reconnect: true }),
      ).rejects.toMatchObject({ code: ErrorCodes.AUTH_FAILED })
      const ok = await dial(s.listener.address)
      expect(ok.state).toBe('ready')
      expect(s.accepted).toHaveLength(1)
    })

    it('connect to nothing fails with CONNECT_FAILED', async () => {
      const s = await server()
      const addr = s.listener.address
      await s.listener.close()
      await expect(transport('cli').connect(addr)).rejects.toMatchObject({
        code: ErrorCodes.CONNECT_FAILED,
        retryable: true,
      })
    })

    describe('bad protocol from a raw peer: specific errors, the listener keeps serving', () => {
      async function rawExchange(
        s: Awaited<ReturnType<typeof server>>,
        frames: Buffer[],
      ): Promise<{ code: string | undefined }> {
        const link = await fx.rawLink(s.listener.address)
        const rec = recordLink(link)
        for (const f of frames) link.write(f)
        await within(rec.closed, 5000, 'raw link closed by the listener')
        const err = rec.frames.find((f) => f.kind === 'control' && f.body.op === 'error')
        return { code: (err?.body as { code?: string } | undefined)?.code }
      }
      async function stillServing(s: Awaited<ReturnType<typeof server>>): Promise<void> {
        const before = s.accepted.length
        const c = await dial(s.listener.address)
        c.send({ kind: 'heartbeat', body: { n: 1, epoch: 0 } })
        await waitFor(() => s.accepted.length === before + 1, 'good client accepted')
        expect((await collect(s.accepted[before]!, 1))[0]!.kind).toBe('heartbeat')
      }

      it('unsupported protocol version in the hello', async () => {
        const s = await server()
        expect((await rawExchange(s, [helloFrame([99], TOKEN)])).code).toBe(ErrorCodes.UNSUPPORTED_VERSION)
        await stillServing(s)
      })
      it('envelope with an unknown version', async () => {
        const s = await server()
        expect(
          (await rawExchange(s, [rawEnvelopeFrame([7, 3, 'raw', 0, 0, null, { op: 'hello' }])])).code,
        ).toBe(ErrorCodes.UNSUPPORTED_VERSION)
        await stillServing(s)
      })
      it('envelope with an unknown kind', async () => {
        const s = await server()
        expect((await rawExchange(s, [rawEnvelopeFrame([1, 42, 'raw', 0, 0, null, {}])])).code).toBe(
          ErrorCodes.UNKNOWN_KIND,
        )
        await stillServing(s)
      })
      it('malformed envelope bytes', async () => {
        const s = await server()
        const junk = Buffer.from([0, 0, 0, 3, 0xc1, 0xc1, 0xc1])
        expect((await rawExchange(s, [junk])).code).toBe(ErrorCodes.MALFORMED_MESSAGE)
        await stillServing(s)
      })
      it('a first message that is not a hello', async () => {
        const s = await server()
        const hb = encodeFrame(
          { v: 1, kind: 'heartbeat', from: 'raw', seq: 0, ts: 0, body: { n: 0, epoch: 0 } },
          1 << 20,
        )
        expect((await rawExchange(s, [hb])).code).toBe(ErrorCodes.HANDSHAKE_FAILED)
        await stillServing(s)
      })
      it('a bad token in a raw hello', async () => {
        const s = await server()
        expect((await rawExchange(s, [helloFrame([1], 'nope')])).code).toBe(ErrorCodes.AUTH_FAILED)
        await stillServing(s)
      })
      it('silence after connecting: HANDSHAKE_TIMEOUT', async () => {
        const s = await server({ handshakeTimeoutMs: 100 })
        expect((await rawExchange(s, [])).code).toBe(ErrorCodes.HANDSHAKE_TIMEOUT)
        await stillServing(s)
      })
      it('an unknown kind after a good handshake closes only that connection', async () => {
        const s = await server()
        const other = await dial(s.listener.address)
        const link = await fx.rawLink(s.listener.address)
        const rec = recordLink(link)
        link.write(helloFrame([1], TOKEN))
        await waitFor(() => rec.frames.length > 0, 'welcome')
        expect(rec.frames[0]!.body).toMatchObject({ op: 'welcome' })
        const serverSide = await waitFor(() => s.accepted[1], 'raw connection accepted')
        link.write(rawEnvelopeFrame([1, 9, 'raw', 1, 0, null, {}]))
        await within(rec.closed, 5000, 'raw link closed')
        expect(rec.frames.at(-1)!.body).toMatchObject({
          op: 'error',
          code: ErrorCodes.UNKNOWN_KIND,
          fatal: true,
        })
        expect((await serverSide.closed())?.code).toBe(ErrorCodes.UNKNOWN_KIND)
        expect(other.state).toBe('ready')
        await stillServing(s)
      })
    })

    it('rejects invalid options with a message naming the field', () => {
      expect(() => fx.create({ nodeId: '', role: 'worker' })).toThrow(/options\.nodeId/)
      expect(() => fx.create({ nodeId: 'x', role: 'worker', maxFrameBytes: 0 })).toThrow(
        /options\.maxFrameBytes.*got 0/,
      )
      expect(() =>
        fx.create({ nodeId: 'x', role: 'worker', highWaterMarkBytes: 10, maxQueueBytes: 5 }),
      ).toThrow(/maxQueueBytes/)
    })

    if (fx.tls) {
      describe('TLS', () => {
        const pki = testPki()
        const serverTls = { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca }

        it('TLS: a client trusting the CA connects and exchanges messages', async () => {
          const s = await server({ tls: serverTls })
          const c = await dial(s.listener.address, { tls: { ca: pki.ca } })
          const sc = await s.next()
          c.send({ kind: 'heartbeat', body: { n: 5, epoch: 0 } })
          expect((await collect(sc, 1))[0]!.body).toMatchObject({ n: 5 })
        })
        it('TLS: a client that does not trust the server certificate is refused with TLS_FAILED', async () => {
          const s = await server({ tls: serverTls })
          await expect(
            transport('cli', { tls: { ca: pki.rogueCa } }).connect(s.listener.address),
          ).rejects.toMatchObject({
            code: ErrorCodes.TLS_FAILED,
          })
        })
        it('TLS: a plaintext client gets nowhere and the listener keeps serving', async () => {
          const s = await server({ tls: serverTls, handshakeTimeoutMs: 300 })
          await expect(
            transport('cli', { handshakeTimeoutMs: 300 }).connect(s.listener.address),
          ).rejects.toBeInstanceOf(ShoalError)
          const c = await dial(s.listener.address, { tls: { ca: pki.ca } })
          expect(c.state).toBe('ready')
        })
        it('mTLS: a client with a certificate from the CA is accepted', async () => {
          const s = await server({ tls: { ...serverTls, requestCert: true } })
          const c = await dial(s.listener.address, {
            tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
          })
          const sc = await s.next()
          c.send({ kind: 'heartbeat', body: { n: 6, epoch: 0 } })
          expect((await collect(sc, 1))[0]!.body).toMatchObject({ n: 6 })
        })
        it('mTLS: clients without a certificate, or with one from another CA, are refused', async () => {
          const s = await server({ tls: { ...serverTls, requestCert: true } })
          await expect(
            transport('cli', { tls: { ca: pki.ca } }).connect(s.listener.address),
          ).rejects.toMatchObject({
            code: expect.stringMatching(/SHOAL_ERR_(TLS_FAILED|CONNECTION_LOST)/) as unknown,
          })
          await expect(
            transport('cli', {
              tls: { ca: pki.ca, cert: pki.rogueClientCert, key: pki.rogueClientKey },
            }).connect(s.listener.address),
          ).rejects.toBeInstanceOf(ShoalError)
          expect(s.accepted).toHaveLength(0)
          const ok = await dial(s.listener.address, {
            tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
          })
          expect(ok.state).toBe('ready')
        })
      })
    }
  })
}
