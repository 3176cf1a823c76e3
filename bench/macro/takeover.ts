/**
 * Coordinator takeover (issue 14), part `takeover` of `npm run bench -- failover`: two
 * `shoal coordinator` replicas sharing Redis (AOF), three workers given both (`--coordinator
 * a,b`), the defaults (heartbeat 500 ms x 3, lease 1.5 s), and a ShoalClient in this process given
 * both, sending one event every 20 ms to each of 16 keys spread over the partitions. Per run the
 * leader is killed (SIGKILL) or paused (SIGSTOP, resumed after the measurement: it must exit,
 * deposed), and from the fault we measure:
 *   leads      the standby printed its listening line (it holds the lease and listens)
 *   ready      its /status shows 3 live workers owning every partition, all ready
 *   ack gap    the longest time the client went without a flush of all 16 keys completing
 *              (client-visible unavailability: workers keep serving until they miss the
 *              coordinator for the detection time, then refuse until they joined the new one)
 * and check that no partition moved (owners before = owners after). Goal: <= 3 s.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import { ShoalClient } from '../../src/client/client.ts'
import { onListening } from '../../src/cli/up.ts'
import type { ClusterStatus } from '../../src/coordinator/coordinator.ts'
import { createTransport } from '../../src/transport/index.ts'
import type { RedisServer } from '../../test/helpers/redis.ts'

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))

export interface TakeoverRun {
  fault: 'kill' | 'stop'
  run: number
  leadsMs: number
  readyMs: number
  ackGapMs: number
  moved: number
  /** SIGSTOP only: the paused leader, resumed, exited with code 3 (deposed). */
  staleExitCode: number | null
}

interface Proc {
  child: ChildProcess
  listening: Promise<void>
  exited: Promise<number | null>
}

function start(args: string[]): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    stdio: ['ignore', 'pipe', 'ignore'],
    env: { ...process.env, SHOAL_LOG_LEVEL: 'warn' },
  })
  const listening = new Promise<void>((resolve) => onListening(child.stdout, () => resolve()))
  const exited = once(child, 'exit').then(([code]) => code as number | null)
  return { child, listening, exited }
}

async function freePort(): Promise<number> {
  const srv = createServer()
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  const port = (srv.address() as { port: number }).port
  await new Promise<void>((r) => srv.close(() => r()))
  return port
}

async function statusAt(http: number): Promise<ClusterStatus | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${http}/status`, { signal: AbortSignal.timeout(1000) })
    const body = (await res.json()) as Partial<ClusterStatus>
    return body.assignment === undefined ? null : (body as ClusterStatus)
  } catch {
    return null
  }
}

function serving(s: ClusterStatus | null): boolean {
  if (s === null || !s.coordinator.ready) return false
  const alive = s.members.filter((m) => m.state === 'alive')
  return (
    alive.length === 3 &&
    s.assignment.owners.every((o) => o !== null && alive.some((m) => m.id === o)) &&
    alive.every((m) => m.readyPartitions === m.partitions)
  )
}

function balanced(s: ClusterStatus | null): boolean {
  if (!serving(s)) return false
  const counts = new Map<string, number>()
  for (const o of s!.assignment.owners) if (o !== null) counts.set(o, (counts.get(o) ?? 0) + 1)
  const share = Math.floor(s!.assignment.owners.length / 3)
  return counts.size === 3 && [...counts.values()].every((n) => n >= share)
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

async function until(what: string, f: () => Promise<boolean> | boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!(await f())) {
    if (performance.now() > deadline) throw new Error(`takeover: ${what} not within ${timeoutMs} ms`)
    await sleep(10)
  }
}

export async function takeoverRun(
  redis: RedisServer,
  fault: 'kill' | 'stop',
  run: number,
): Promise<TakeoverRun> {
  const db = run % 16
  redis.cli('-n', String(db), 'FLUSHDB')
  const state = `${redis.url}/${db}`
  const [pa, ha, pb, hb] = await Promise.all([freePort(), freePort(), freePort(), freePort()])
  const coord = (id: string, port: number, http: number): Proc =>
    start([
      'coordinator',
      '--node-id',
      id,
      '--listen',
      `127.0.0.1:${port}`,
      '--http',
      `127.0.0.1:${http}`,
      '--state',
      state,
    ])
  const procs: Proc[] = []
  let client: ShoalClient | null = null
  try {
    const a = coord('coord-a', pa, ha)
    procs.push(a)
    await a.listening
    const b = coord('coord-b', pb, hb)
    procs.push(b)
    const list = `127.0.0.1:${pa},127.0.0.1:${pb}`
    for (let i = 0; i < 3; i++) {
      const w = start([
        'worker',
        '--coordinator',
        list,
        '--node-id',
        `w${i}`,
        '--listen',
        '127.0.0.1:0',
        '--http',
        '127.0.0.1:0',
        '--threads',
        '1',
        '--state',
        state,
      ])
      procs.push(w)
    }
    await until('a balanced cluster', async () => balanced(await statusAt(ha)))
    const before = (await statusAt(ha))!.assignment.owners
    client = await ShoalClient.connect({
      coordinator: list,
      transport: createTransport('tcp', { nodeId: `takeover-${process.pid}-${run}`, role: 'client' }),
      retryDelayMs: 20,
    })
    const keys = Array.from({ length: 16 }, (_, i) => `tk-${i}`)
    const flushed: number[] = []
    let sending = true
    const loop = (async () => {
      while (sending) {
        await Promise.all(
          keys.map(async (k) => {
            if (!client!.send(k, { value: 1 })) await client!.drain()
          }),
        )
        await client.flush()
        flushed.push(performance.now())
        await sleep(20)
      }
    })()
    await sleep(1000)
    const t0 = performance.now()
    a.child.kill(fault === 'kill' ? 'SIGKILL' : 'SIGSTOP')
    let leadsMs = -1
    void b.listening.then(() => (leadsMs = performance.now() - t0))
    await until('the standby leads and every partition serves', async () => serving(await statusAt(hb)))
    const readyMs = performance.now() - t0
    const readyAt = performance.now()
    await until('a flush after the takeover', () => (flushed.at(-1) ?? 0) > readyAt)
    let ackGapMs = 0
    for (let i = 1; i < flushed.length; i++) {
      if (flushed[i]! > t0) ackGapMs = Math.max(ackGapMs, flushed[i]! - Math.max(t0, flushed[i - 1]!))
    }
    await until('the leads line', () => leadsMs >= 0, 5000)
    const after = (await statusAt(hb))!.assignment.owners
    const moved = after.filter((o, p) => o !== before[p]).length
    let staleExitCode: number | null = null
    if (fault === 'stop') {
      a.child.kill('SIGCONT')
      staleExitCode = await Promise.race([a.exited, sleep(10_000).then(() => -1)])
    }
    sending = false
    await loop
    return { fault, run, leadsMs, readyMs, ackGapMs, moved, staleExitCode }
  } finally {
    await client?.close().catch(() => {})
    for (const p of procs) {
      p.child.kill('SIGCONT')
      p.child.kill('SIGKILL')
    }
    await Promise.all(procs.map((p) => p.exited))
  }
}
