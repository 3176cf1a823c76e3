/**
 * Clients against a hung worker (issue 14), with real processes: a coordinator and three
 * workers checkpointing to a real Redis (AOF on), default heartbeats (500 ms x 3). (Not the
 * file: store: it locks a partition's directory by pid, and a stopped process still holds it,
 * so its partitions cannot be restored elsewhere until it resumes.) One worker is stopped with SIGSTOP: its sockets stay open and its kernel still
 * accepts connections, but nothing answers. State gets on every partition, dumps (from a client
 * connected before the stop and from one connected after it, whose first dial meets the stopped
 * worker) and a send of more events must all come back exact, without the stopped worker.
 * Every client here has its ack and handshake timeouts set far beyond the test's timeout, so
 * nothing completes by waiting the stopped worker out: only by being re-routed. Then SIGCONT:
 * the worker rejoins (fenced: its partitions moved) and the cluster converges, still exact.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../src/client/client.ts'
import { partitionForKey } from '../../src/protocol/partition.ts'
import { createTransport } from '../../src/transport/index.ts'
import { killAll, startShoal, statusOf, waitSettled, type ShoalProcess } from '../helpers/processes.ts'
import { startRedis, type RedisServer } from '../helpers/redis.ts'
import { expectExactState, sendCounted, type Totals } from '../helpers/totals.ts'

afterEach(killAll)
let redis: RedisServer
beforeAll(async () => {
  redis = await startRedis({ aof: true })
})
afterAll(async () => {
  await redis.dispose()
})

const PARTITIONS = 32
const KEYS = 2000
/** Longer than the test may run: a wait that only a timeout would end fails the test. */
const NEVER = 600_000

async function dump(cl: ShoalClient): Promise<Map<string, unknown>> {
  const got = new Map<string, unknown>()
  for await (const [k, v] of cl.dumpState()) got.set(k, v)
  return got
}

const CASES = [
  { transport: 'tcp', db: 3 },
  { transport: 'grpc', db: 4 },
] as const

for (const { transport, db } of CASES) {
  describe(`a hung worker, over ${transport}`, { timeout: 120_000 }, () => {
    it('SIGSTOP: gets on every partition, dumps and sends complete exact without it; after SIGCONT the cluster converges exact', async () => {
      // A database per transport, so the runs never see each other's checkpoints.
      const common = ['--transport', transport, '--http', '127.0.0.1:0', '--state', `${redis.url}/${db}`]
      const c = await startShoal([
        'coordinator',
        ...common,
        '--listen',
        '127.0.0.1:0',
        '--partitions',
        String(PARTITIONS),
        '--checkpoint-interval',
        '500',
      ])
      const workers: ShoalProcess[] = []
      for (let i = 0; i < 3; i++) {
        workers.push(
          await startShoal([
            'worker',
            ...common,
            '--coordinator',
            c.info.address,
            '--listen',
            '127.0.0.1:0',
            '--threads',
            '1',
          ]),
        )
      }
      await waitSettled(() => statusOf(c), 3)
      const connect = (): Promise<ShoalClient> =>
        ShoalClient.connect({
          coordinator: c.info.address,
          transport: createTransport(transport, {
            nodeId: `test-client-${process.pid}`,
            role: 'client',
            handshakeTimeoutMs: NEVER,
          }),
          ackTimeoutMs: NEVER,
          deliveryTimeoutMs: NEVER,
          queryTimeoutMs: 60_000,
        })
      const cl = await connect()
      const expected: Totals = new Map()
      sendCounted(cl, 0, 20_000, expected, KEYS, 'key-')
      await cl.flush()
      const before = new Map([...expected].map(([k, v]) => [k, { ...v }]))
      // One key of every partition.
      const probes = new Map<number, string>()
      for (const k of expected.keys()) {
        const p = partitionForKey(k, PARTITIONS)
        if (!probes.has(p)) probes.set(p, k)
      }
      expect(probes.size).toBe(PARTITIONS)

      const victim = workers[0]!
      const owned = (await statusOf(c)).assignment.owners.filter((o) => o === victim.info.nodeId)
      expect(owned.length).toBeGreaterThan(0)
      victim.signal('SIGSTOP')
      try {
        // Connected after the stop: its routing table still names the stopped worker.
        const fresh = await connect()
        try {
          // New keys for the send, so the gets and dumps of the old ones stay exact meanwhile.
          sendCounted(cl, 20_000, 30_000, expected, KEYS, 'new-')
          const [gets, dumped, dumpedFresh] = await Promise.all([
            Promise.all([...probes.values()].map(async (k) => [k, await cl.getState(k)] as const)),
            dump(cl),
            dump(fresh),
            cl.flush(),
          ])
          for (const [k, v] of gets) expect(v, k).toEqual(before.get(k))
          for (const d of [dumped, dumpedFresh]) {
            const old = [...d].filter(([k]) => k.startsWith('key-'))
            expect(new Map(old)).toEqual(before)
            expect([...d.keys()].every((k) => k.startsWith('key-') || k.startsWith('new-'))).toBe(true)
          }
          expect(cl.stats.failed).toBe(0)
          // Everything sent, the new keys included, exact while the worker is still stopped.
          await expectExactState(fresh, expected)
          for (const [, k] of probes) expect(await fresh.getState(k)).toEqual(expected.get(k))
        } finally {
          await fresh.close()
        }
      } finally {
        victim.signal('SIGCONT')
      }

      // Back: it rejoins, its old partitions stay with their new owners (fenced), and the
      // cluster settles with three workers again; state exact, more events applied once.
      await waitSettled(() => statusOf(c), 3, 60_000)
      sendCounted(cl, 30_000, 40_000, expected, KEYS, 'key-')
      await cl.flush()
      expect(cl.stats.failed).toBe(0)
      await expectExactState(cl, expected)
      await cl.close()
    })
  })
}
