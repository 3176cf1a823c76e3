/**
 * The cluster as real processes on loopback, over each transport: join, kill -9, SIGSTOP and
 * SIGCONT, coordinator restart, busy processing threads, SIGTERM drain, `shoal status`.
 * Heartbeats run at 200 ms here (3 misses) to keep the suite short; the defaults are 500 ms x 3.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { afterEach, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../src/client/client.ts'
import type { ClusterStatus } from '../../src/coordinator/coordinator.ts'
import { createTransport } from '../../src/transport/index.ts'
import { freePort, killAll, startShoal, waitSettled, type ShoalProcess } from '../helpers/processes.ts'
import { expectExactState, sendCounted, type Totals } from '../helpers/totals.ts'
import { waitFor } from '../helpers/wait-for.ts'

const run = promisify(execFile)
const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
const HB = ['--heartbeat-interval', '200', '--heartbeat-misses', '3']

afterEach(killAll)

async function status(c: ShoalProcess): Promise<ClusterStatus> {
  const r = await c.http<ClusterStatus>('/status')
  return r.body
}

function settled(c: ShoalProcess, n: number): Promise<ClusterStatus> {
  return waitSettled(() => status(c), n, 20_000)
}

/** Settled with every worker at its share: rebalancing after the joins is over. */
async function balanced(c: ShoalProcess, n: number): Promise<ClusterStatus> {
  let last: ClusterStatus | undefined
  await waitFor(
    async () => {
      last = await settled(c, n)
      const owned = ownersOf(last)
      const share = Math.floor(last.assignment.owners.length / n)
      return owned.size === n && [...owned.values()].every((ps) => ps.length >= share)
    },
    `${n} workers at their share`,
    20_000,
  )
  return last!
}

function ownersOf(s: ClusterStatus): Map<string, number[]> {
  const m = new Map<string, number[]>()
  s.assignment.owners.forEach((o, p) => o !== null && m.set(o, [...(m.get(o) ?? []), p]))
  return m
}

for (const transport of ['tcp', 'grpc'] as const) {
  // Real processes: under a loaded CI machine starting a node takes seconds.
  describe(`cluster processes over ${transport}`, { timeout: 60_000 }, () => {
    async function coordinator(port = 0, extra: string[] = []): Promise<ShoalProcess> {
      return startShoal([
        'coordinator',
        ...extra,
        '--transport',
        transport,
        '--listen',
        `127.0.0.1:${port}`,
        '--http',
        '127.0.0.1:0',
        ...HB,
      ])
    }
    async function worker(
      c: ShoalProcess,
      extra: string[] = [],
      env: Record<string, string> = {},
    ): Promise<ShoalProcess> {
      return startShoal(
        [
          'worker',
          '--transport',
          transport,
          '--coordinator',
          c.info.address,
          '--listen',
          '127.0.0.1:0',
          '--http',
          '127.0.0.1:0',
          '--threads',
          '1',
          ...HB,
          ...extra,
        ],
        env,
      )
    }

    it('three workers join; kill -9 one: it is declared dead and only its partitions move', async () => {
      const c = await coordinator()
      const ws = await Promise.all([worker(c), worker(c), worker(c)])
      // Before the kill, the joins' rebalancing must be over, or a move it still makes would
      // look like one caused by the kill.
      const before = await balanced(c, 3)
      expect(new Set(before.members.map((m) => m.id)).size).toBe(3)
      const victim = ws[1]
      const victimId = victim.info.nodeId
      const had = ownersOf(before)
      victim.signal('SIGKILL')
      const after = await settled(c, 2)
      expect(after.members.find((m) => m.id === victimId)?.state).toBe('dead')
      const now = ownersOf(after)
      for (const [id, parts] of had) {
        if (id === victimId) continue
        // Survivors keep all they had; what they gained came from the victim.
        expect(now.get(id)).toEqual(expect.arrayContaining(parts))
        for (const p of now.get(id)!.filter((x) => !parts.includes(x))) expect(had.get(victimId)).toContain(p)
      }
      for (const p of had.get(victimId)!)
        expect(after.assignment.epochs[p]).toBeGreaterThan(before.assignment.epoch)
      // Worker readiness endpoints agree.
      for (const w of [ws[0], ws[2]]) expect((await w.http('/readyz')).status).toBe(200)
    })

    it('SIGSTOP: detected after the missed heartbeats; SIGCONT: it learns it was fenced and rejoins cleanly', async () => {
      const c = await coordinator()
      const ws = await Promise.all([worker(c), worker(c), worker(c)])
      // The victim must own partitions when it stops (settled alone can be seen before the
      // last join's rebalance gave it any), or there is nothing to fence.
      await balanced(c, 3)
      const victim = ws[0]
      victim.signal('SIGSTOP')
      await waitFor(
        async () => (await status(c)).members.find((m) => m.id === victim.info.nodeId)?.state === 'dead',
        'victim dead',
        10_000,
      )
      await settled(c, 2)
      victim.signal('SIGCONT')
      await waitFor(
        async () => {
          const w = await victim.http<{ fencedPartitionsTotal: number; registered: boolean }>('/status')
          return w.body.fencedPartitionsTotal > 0 && w.body.registered
        },
        'victim reports it was fenced and rejoined',
        10_000,
      )
      const s = await settled(c, 3)
      expect(s.members.find((m) => m.id === victim.info.nodeId)?.state).toBe('alive')
      expect(victim.logs.join('')).toMatch(/fenced/)
    })

    it('a restarted coordinator gets every worker back with its partitions kept; a client follows it', async () => {
      const port = await freePort()
      const c1 = await coordinator(port)
      const ws = await Promise.all([worker(c1), worker(c1), worker(c1)])
      const before = await balanced(c1, 3)
      const cl = await ShoalClient.connect({
        coordinator: `127.0.0.1:${port}`,
        transport: createTransport(transport, { nodeId: `restart-client-${transport}`, role: 'client' }),
        retryDelayMs: 20,
      })
      try {
        const expected: Totals = new Map()
        sendCounted(cl, 0, 3000, expected, 300)
        await cl.flush()
        // One worker paused across the restart keeps the new coordinator recovering (its
        // partitions are unclaimed) for as long as the test needs: the window is long.
        ws[2].signal('SIGSTOP')
        c1.signal('SIGKILL')
        await c1.exited
        const c2 = await coordinator(port, ['--recovery-window', '60000'])
        await waitFor(async () => (await status(c2)).members.length === 2, 'two workers back')
        // A dump while the coordinator recovers waits for the paused owner's partitions.
        const dump = expectExactState(cl, expected)
        ws[2].signal('SIGCONT')
        await dump
        const after = await settled(c2, 3)
        expect(after.assignment.owners).toEqual(before.assignment.owners)
        expect(after.assignment.epoch).toBe(before.assignment.epoch)
      } finally {
        await cl.close()
      }
    })

    it('no coordinator: workers refuse writes with NO_COORDINATOR (retryable), the client retries and says why; one back: every event once', async () => {
      const port = await freePort()
      const c1 = await coordinator(port)
      const ws = await Promise.all([worker(c1), worker(c1)])
      await balanced(c1, 2)
      const cl = await ShoalClient.connect({
        coordinator: `127.0.0.1:${port}`,
        transport: createTransport(transport, { nodeId: `nocoord-client-${transport}`, role: 'client' }),
        retryDelayMs: 20,
      })
      try {
        const expected: Totals = new Map()
        sendCounted(cl, 0, 2000, expected, 200)
        await cl.flush()
        c1.signal('SIGKILL')
        await c1.exited
        // Past the failure-detection time (3 x 200 ms) the workers stop serving what they own
        // (and say so on /readyz). Until then they serve on.
        for (const w of ws) {
          await waitFor(
            async () => {
              const r = await w.http<{ coordinatorReachable?: boolean }>('/readyz')
              return r.status === 503 && r.body.coordinatorReachable === false
            },
            'the worker to stop serving without a coordinator',
            20_000,
          )
        }
        sendCounted(cl, 2000, 4000, expected, 200)
        const flushed = cl.flush()
        await waitFor(
          () => cl.stats.lastRetry?.code === 'SHOAL_ERR_NO_COORDINATOR',
          'a batch retried because no coordinator is reachable',
          20_000,
        )
        expect(cl.stats.lastRetry?.message).toMatch(/no coordinator reachable/)
        const c2 = await coordinator(port)
        await flushed
        await settled(c2, 2)
        await expectExactState(cl, expected)
      } finally {
        await cl.close()
      }
    })

    it('with a token: every HTTP endpoint of the coordinator and the worker but the probes answers 401 without it, 200 with it', async () => {
      const token = 'e2e-http-token-0123456789'
      const c = await coordinator(0, ['--token', token])
      const w = await worker(c, ['--token', token])
      const get = (base: string, path: string, auth?: string): Promise<number> =>
        fetch(
          `http://${base}${path}`,
          auth === undefined ? {} : { headers: { authorization: `Bearer ${auth}` } },
        ).then(async (r) => {
          await r.arrayBuffer()
          return r.status
        })
      // The probes are open: ready once the worker has joined and restored its partitions.
      await waitFor(async () => (await get(w.info.http, '/readyz')) === 200, 'the worker ready', 20_000)
      for (const node of [c, w]) {
        expect(await get(node.info.http, '/status')).toBe(401)
        expect(await get(node.info.http, '/status', 'wrong-token-0123456789')).toBe(401)
        expect(await get(node.info.http, '/status', token)).toBe(200)
        expect(await get(node.info.http, '/healthz')).toBe(200)
        // Open: 200 or 503 by readiness, never 401.
        expect([200, 503]).toContain(await get(node.info.http, '/readyz'))
        expect(await get(node.info.http, '/metrics')).toBe(200)
      }
      expect(await get(w.info.http, '/state/some-key')).toBe(401)
    })

    it('a worker whose processing threads burn 100% CPU is never declared dead', async () => {
      const c = await coordinator()
      const busy = await worker(c, [], { SHOAL_TEST_BURN_THREADS: '2' })
      await worker(c)
      await settled(c, 2)
      // Six failure-detection periods under load.
      await new Promise((r) => setTimeout(r, 6 * 600))
      const s = await status(c)
      expect(s.members.find((m) => m.id === busy.info.nodeId)?.state).toBe('alive')
      expect(busy.logs.join('')).toMatch(/burning/)
    })

    it('SIGTERM drains a worker: it hands its partitions back, leaves, and exits 0', async () => {
      const c = await coordinator()
      const ws = await Promise.all([worker(c), worker(c)])
      await settled(c, 2)
      ws[0].signal('SIGTERM')
      expect((await ws[0].exited).code).toBe(0)
      const s = await settled(c, 1)
      expect(s.members.find((m) => m.id === ws[0].info.nodeId)?.state).toBe('left')
    })

    it('shoal status prints the members as a table, and JSON with --json', async () => {
      const c = await coordinator()
      await Promise.all([worker(c), worker(c)])
      await settled(c, 2)
      const args = [
        '--import',
        'tsx',
        MAIN,
        'status',
        '--coordinator',
        c.info.address,
        '--transport',
        transport,
      ]
      const table = await run(process.execPath, args)
      expect(table.stdout).toMatch(/MEMBER\s+STATE/)
      expect(table.stdout.match(/alive/g)).toHaveLength(2)
      const json = await run(process.execPath, [...args, '--json'])
      const parsed = JSON.parse(json.stdout) as ClusterStatus
      expect(parsed.members).toHaveLength(2)
    })
  })
}
