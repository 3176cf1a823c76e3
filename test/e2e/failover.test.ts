/**
 * Exactly-once keyed state across worker crashes, with real processes and a real Redis (AOF
 * on): a coordinator and three workers checkpointing to Redis, a client sending continuously,
 * and kill -9 of a worker in the middle of the stream, several times (each time a fresh worker
 * joins). Every key's count and sum must come out exactly as sent: nothing lost, nothing applied
 * twice. Then the whole cluster is restarted and must resume with the same state. Over TCP and
 * gRPC with Redis, and over TCP with the file store (one directory per partition) that `shoal up`
 * uses by default.
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../src/client/client.ts'
import type { ClusterStatus } from '../../src/coordinator/coordinator.ts'
import { createTransport } from '../../src/transport/index.ts'
import { killAll, startShoal, statusOf, waitSettled, type ShoalProcess } from '../helpers/processes.ts'
import { startRedis, type RedisServer } from '../helpers/redis.ts'
import { expectExactState, sendCounted, type Totals } from '../helpers/totals.ts'
import { waitFor } from '../helpers/wait-for.ts'

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
afterEach(killAll)
let redis: RedisServer
beforeAll(async () => {
  redis = await startRedis({ aof: true })
})
afterAll(async () => {
  await redis.dispose()
})

const HEARTBEAT_MS = 200

const CASES = [
  { transport: 'tcp', state: 'redis', db: 1 },
  { transport: 'grpc', state: 'redis', db: 2 },
  // shoal up's embedded default: one directory per partition on this host's disk.
  { transport: 'tcp', state: 'file', db: 0 },
] as const

for (const { transport, state, db: caseDb } of CASES) {
  describe(`failover with ${state} checkpoints over ${transport}`, { timeout: 180_000 }, () => {
    const stateDir = state === 'file' ? mkdtempSync(join(tmpdir(), 'shoal-failover-')) : ''
    afterAll(() => {
      if (stateDir !== '') rmSync(stateDir, { recursive: true, force: true })
    })
    const stateUrl = (db: number): string => (state === 'file' ? `file:${stateDir}` : `${redis.url}/${db}`)
    function workerArgs(coordinator: string, db: number): [string[], Record<string, string>] {
      return [
        [
          'worker',
          '--transport',
          transport,
          '--coordinator',
          coordinator,
          '--listen',
          '127.0.0.1:0',
          '--http',
          '127.0.0.1:0',
          '--threads',
          '1',
          '--heartbeat-interval',
          String(HEARTBEAT_MS),
          '--state',
          // A database per transport, so the runs never see each other's checkpoints.
          stateUrl(db),
        ],
        { SHOAL_LOG_LEVEL: 'info' },
      ]
    }

    async function startCoordinator(db: number, listen = '127.0.0.1:0'): Promise<ShoalProcess> {
      return startShoal(
        [
          'coordinator',
          '--transport',
          transport,
          '--listen',
          listen,
          '--http',
          '127.0.0.1:0',
          '--partitions',
          '32',
          '--heartbeat-interval',
          String(HEARTBEAT_MS),
          '--checkpoint-interval',
          '500',
          // The coordinator reads the stored epochs, so a restarted cluster starts above them.
          '--state',
          stateUrl(db),
        ],
        { SHOAL_LOG_LEVEL: 'info' },
      )
    }

    async function settled(c: ShoalProcess, workers: number): Promise<void> {
      await waitSettled(() => statusOf(c), workers)
    }

    async function client(c: ShoalProcess): Promise<ShoalClient> {
      return ShoalClient.connect({
        coordinator: c.info.address,
        transport: createTransport(transport, { nodeId: `test-client-${process.pid}`, role: 'client' }),
        retryDelayMs: 20,
        deliveryTimeoutMs: 60_000,
      })
    }

    it('kill -9 a worker mid-stream, three times: every key exact (0 lost, 0 applied twice); a full restart resumes', async () => {
      const db = caseDb
      const c = await startCoordinator(db)
      const workers: ShoalProcess[] = []
      for (let i = 0; i < 3; i++) workers.push(await startShoal(...workerArgs(c.info.address, db)))
      await settled(c, 3)
      const cl = await client(c)
      const expected: Totals = new Map()
      let sent = 0
      const CHUNK = 40_000
      for (let cycle = 0; cycle < 3; cycle++) {
        // Stream while a worker dies: part of the chunk is acked before the kill, part after.
        sendCounted(cl, sent, sent + CHUNK, expected, 3000, 'key-')
        sent += CHUNK
        const before = cl.stats.acked
        await waitFor(() => cl.stats.acked > before + CHUNK / 4, 'some of the chunk acked', 30_000)
        const victim = workers.splice(cycle % workers.length, 1)[0]!
        victim.signal('SIGKILL')
        sendCounted(cl, sent, sent + CHUNK / 2, expected, 3000, 'key-')
        sent += CHUNK / 2
        workers.push(await startShoal(...workerArgs(c.info.address, db)))
        await cl.flush()
        await settled(c, 3)
      }
      expect(cl.stats.failed).toBe(0)
      await expectExactState(cl, expected)
      const status = (await c.http<ClusterStatus>('/status')).body
      expect(status.checkpoints.completed).toBeGreaterThan(0)
      // `shoal savepoint`: a full checkpoint of every partition, from the command line.
      const sp = spawnSync(
        process.execPath,
        [
          '--import',
          'tsx',
          MAIN,
          'savepoint',
          '--json',
          '--coordinator',
          c.info.address,
          '--transport',
          transport,
        ],
        { encoding: 'utf8', timeout: 60_000 },
      )
      expect(sp.status, sp.stderr).toBe(0)
      expect(JSON.parse(sp.stdout)).toMatchObject({
        full: true,
        partitions: 32,
        assigned: 32,
        keys: expected.size,
      })
      await cl.close()

      // The whole cluster down (workers first, abruptly) and up again: state resumes from Redis.
      const coordinatorAddress = c.info.address
      for (const w of workers.splice(0)) w.signal('SIGKILL')
      c.signal('SIGKILL')
      await c.exited
      const c2 = await startCoordinator(db, coordinatorAddress)
      for (let i = 0; i < 3; i++) workers.push(await startShoal(...workerArgs(c2.info.address, db)))
      await settled(c2, 3)
      const cl2 = await client(c2)
      sendCounted(cl2, sent, sent + 10_000, expected, 3000, 'key-')
      await cl2.flush()
      await expectExactState(cl2, expected)
      await cl2.close()
    })
  })
}
