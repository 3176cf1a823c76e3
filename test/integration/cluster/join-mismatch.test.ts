/**
 * The join check over real sockets (TCP and gRPC): the first worker defines the cluster's job,
 * sources and sinks; a worker whose configuration differs is refused with CONFIG_MISMATCH
 * naming the difference (and stops trying), one with the same configuration joins, and a
 * worker that reports nothing (an older version) is accepted.
 */
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { parseSinkUrl, parseSourceUrl, describeSpec } from '../../../src/connectors/url.ts'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import { ErrorCodes, ShoalError } from '../../../src/errors.ts'
import { decodeEnvelope, encodeEnvelope } from '../../../src/protocol/codec.ts'
import { parseJoin } from '../../../src/protocol/control.ts'
import type { ControlBody } from '../../../src/protocol/messages.ts'
import { loadShoalPackageDefinition } from '../../../src/transport/grpc/proto.ts'
import { createTransport } from '../../../src/transport/index.ts'
import type { Transport } from '../../../src/transport/transport.ts'
import { Worker, type JoinIdentity } from '../../../src/worker/worker.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: 'silent' })
const HB = 50
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

const PG = describeSpec(parseSinkUrl('postgres://shoal:Secr3tPw@db:5432/app?table=s&mode=state', '--sink'))
const SRC = describeSpec(parseSourceUrl('redis://redis:6379?stream=events&group=shoal'))
const BASE: JoinIdentity = { jobId: 'count', sources: [SRC], sinks: [PG] }

for (const kind of ['tcp', 'grpc'] as const) {
  describe(`join check over ${kind}`, () => {
    const transport = (nodeId: string, role: 'coordinator' | 'worker'): Transport =>
      createTransport(kind, { nodeId, role })

    async function coordinator(): Promise<Coordinator> {
      const c = new Coordinator({
        transport: transport('coordinator', 'coordinator'),
        listen: { host: '127.0.0.1', port: 0 },
        partitions: 16,
        heartbeatIntervalMs: HB,
        heartbeatMisses: 3,
        recoveryWindowMs: 0,
        checkpointIntervalMs: 0,
        logger,
      })
      await c.start()
      cleanup.push(() => c.stop({ timeoutMs: 500 }))
      return c
    }

    function worker(c: Coordinator, id: string, identity: JoinIdentity | null): Worker {
      const w = new Worker({
        transport: transport(id, 'worker'),
        coordinator: c.address,
        listen: { host: '127.0.0.1', port: 0 },
        memberId: id,
        capacity: 1,
        version: 'test',
        heartbeatIntervalMs: HB,
        requestTimeoutMs: 2000,
        logger,
        ...(identity === null ? {} : identity === BASE ? { ...BASE } : {}),
      })
      if (identity !== null && identity !== BASE) w.setJoinIdentity(identity)
      cleanup.push(() => w.stop({ timeoutMs: 500 }))
      return w
    }

    it('refuses a worker with a different sink, naming it; the same configuration joins', async () => {
      const c = await coordinator()
      const a = worker(c, 'w-a', BASE)
      await a.start()
      expect(c.status().definition).toEqual({ ...BASE, definedBy: 'w-a' })

      const b = worker(c, 'w-b', { ...BASE, sinks: [] })
      const refused: ShoalError[] = []
      b.on('refused', (e) => refused.push(e))
      const err = await b.start().then(
        () => null,
        (e: unknown) => e,
      )
      expect(err).toBeInstanceOf(ShoalError)
      expect((err as ShoalError).code).toBe(ErrorCodes.CONFIG_MISMATCH)
      expect((err as ShoalError).message).toContain(
        'sinks differ: cluster has [postgres://shoal:***@db:5432/app?table=s&mode=state], this worker has []',
      )
      expect((err as ShoalError).message).not.toContain('Secr3tPw')
      expect(refused).toHaveLength(1)
      expect(b.refusal).toBe(err)
      expect(c.status().members.map((m) => m.id)).toEqual(['w-a'])

      // Same job, sources and sinks (sinks in another order count as the same): joins.
      const same = worker(c, 'w-c', { jobId: 'count', sources: [SRC], sinks: [PG] })
      await same.start()
      await waitFor(
        () => c.status().members.filter((m) => m.state === 'alive').length === 2,
        'two alive members',
      )
      expect(same.readiness().detail.registered).toBe(true)
    })

    it('names every difference: job, sources and sinks', async () => {
      const c = await coordinator()
      await worker(c, 'w-a', BASE).start()
      const b = worker(c, 'w-b', { jobId: '/app/job.mjs sha256:0123456789abcdef', sources: [], sinks: [PG] })
      const err = (await b.start().catch((e: unknown) => e)) as ShoalError
      expect(err.code).toBe(ErrorCodes.CONFIG_MISMATCH)
      expect(err.message).toContain(
        'job differs: cluster has count, this worker has /app/job.mjs sha256:0123456789abcdef',
      )
      expect(err.message).toContain(`sources differ: cluster has [${SRC}], this worker has []`)
      expect(err.message).not.toContain('sinks differ')
    })

    it('a worker without the fields (older version) is accepted; the next one that has them defines them', async () => {
      const c = await coordinator()
      await worker(c, 'old', null).start()
      expect(c.status().definition).toEqual({ jobId: null, sources: null, sinks: null, definedBy: 'old' })
      await worker(c, 'new', BASE).start()
      expect(c.status().definition).toMatchObject({ jobId: 'count', sources: [SRC], sinks: [PG] })
      const err = (await worker(c, 'other', { ...BASE, jobId: 'other' })
        .start()
        .catch((e: unknown) => e)) as ShoalError
      expect(err.code).toBe(ErrorCodes.CONFIG_MISMATCH)
      await worker(c, 'old-2', null).start()
      expect(
        c
          .status()
          .members.map((m) => m.id)
          .sort(),
      ).toEqual(['new', 'old', 'old-2'])
    })

    it('once no worker is live, the next one to join defines the cluster again', async () => {
      const c = await coordinator()
      const a = worker(c, 'w-a', BASE)
      await a.start()
      await a.drain({ timeoutMs: 1000 })
      await waitFor(() => c.status().members.every((m) => m.state === 'left'), 'the worker to leave')
      const b = worker(c, 'w-b', { ...BASE, sinks: [] })
      await b.start()
      expect(c.status().definition).toMatchObject({ sinks: [], definedBy: 'w-b' })
    })
  })
}

describe('the join identity on the wire', () => {
  const body: ControlBody = {
    op: 'join',
    memberId: 'w',
    dataAddress: '127.0.0.1:1',
    httpAddress: null,
    capacity: 1,
    version: 'v',
    epoch: 0,
    owned: [],
    jobId: 'count',
    sources: [SRC],
    sinks: [],
  }

  it('survives the msgpack codec and parseJoin; absent fields are null', () => {
    const env = decodeEnvelope(encodeEnvelope({ v: 1, from: 'w', seq: 1, ts: 0, kind: 'control', body }))
    expect(env.kind).toBe('control')
    expect(parseJoin(env.body as ControlBody)).toMatchObject({ jobId: 'count', sources: [SRC], sinks: [] })
    const { jobId: _j, sources: _s, sinks: _k, ...old } = body
    expect(parseJoin(old as ControlBody)).toMatchObject({ jobId: null, sources: null, sinks: null })
  })

  it('the codec and parseJoin reject badly typed fields', () => {
    for (const bad of [{ jobId: 7 }, { sources: 'x' }, { sinks: [1] }]) {
      const b = { ...body, ...bad } as ControlBody
      expect(() =>
        decodeEnvelope(encodeEnvelope({ v: 1, from: 'w', seq: 1, ts: 0, kind: 'control', body: b })),
      ).toThrow(/jobId|sources|sinks/)
      expect(() => parseJoin(b)).toThrow(ShoalError)
    }
  })

  it('proto/shoal.proto documents every join field (shoal.v1.Join)', () => {
    const def = loadShoalPackageDefinition()['shoal.v1.Join'] as unknown as {
      type: { field: { name: string }[] }
    }
    const names = def.type.field.map((f) => f.name)
    expect(names).toEqual(expect.arrayContaining(Object.keys(body).filter((k) => k !== 'op')))
  })
})
