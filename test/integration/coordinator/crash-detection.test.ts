/**
 * Crash detection without waiting for heartbeats: when a worker's connection closes, the
 * coordinator dials the worker's data port; refused means the process is gone and the member
 * is declared dead at once. A port that still answers (a live process, only its coordinator
 * link dropped) leaves it suspect, for the heartbeats to decide. Scripted workers over real
 * TCP; heartbeats 60 s apart, so nothing but the probe can declare a member dead here.
 */
import net from 'node:net'
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import { Requests } from '../../../src/transport/requests.ts'
import { createTcpTransport } from '../../../src/transport/tcp/tcp-transport.ts'
import type { Connection } from '../../../src/transport/transport.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: 'silent' })
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

async function coordinator(): Promise<{ c: Coordinator; dead: Map<string, string> }> {
  const c = new Coordinator({
    transport: createTcpTransport({ nodeId: 'coordinator', role: 'coordinator' }),
    listen: { host: '127.0.0.1', port: 0 },
    partitions: 8,
    heartbeatIntervalMs: 60_000,
    heartbeatMisses: 3,
    logger,
  })
  await c.start()
  cleanup.push(() => c.stop({ timeoutMs: 200 }))
  const dead = new Map<string, string>()
  c.on('member-dead', (id, reason) => dead.set(id, reason))
  return { c, dead }
}

/** Join as `memberId` advertising `dataAddress`; returns the open coordinator connection. */
async function join(c: Coordinator, memberId: string, dataAddress: string): Promise<Connection> {
  const conn = await createTcpTransport({ nodeId: memberId, role: 'worker' }).connect(c.address)
  const requests = new Requests()
  void (async () => {
    for await (const env of conn) requests.settle(env)
  })().catch(() => {})
  const res = await requests.request(
    conn,
    {
      kind: 'control',
      body: { op: 'join', memberId, dataAddress, capacity: 1, version: 'test', epoch: 0, owned: [] },
    },
    5000,
  )
  expect(res.kind === 'control' && res.body.op).toBe('joined')
  return conn
}

/** A loopback port nothing listens on (bound, then closed). */
async function closedPort(): Promise<string> {
  const s = net.createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const port = (s.address() as net.AddressInfo).port
  await new Promise<void>((r) => s.close(() => r()))
  return `127.0.0.1:${port}`
}

describe('coordinator: a closed connection and a refused data port', () => {
  it('declare the member dead at once', async () => {
    const { c, dead } = await coordinator()
    const conn = await join(c, 'w-crashed', await closedPort())
    conn.destroy()
    await waitFor(() => dead.get('w-crashed'), 'the crashed member declared dead')
    expect(dead.get('w-crashed')).toMatch(/refuses connections/)
  })

  it('a data port that still answers leaves the member suspect', async () => {
    const { c, dead } = await coordinator()
    let probes = 0
    const live = net.createServer((s) => {
      probes++
      s.destroy()
    })
    await new Promise<void>((r) => live.listen(0, '127.0.0.1', r))
    cleanup.push(() => new Promise<void>((r) => live.close(() => r())))
    const suspect: string[] = []
    c.on('member-suspect', (id) => suspect.push(id))
    const conn = await join(c, 'w-alive', `127.0.0.1:${(live.address() as net.AddressInfo).port}`)
    conn.destroy()
    await waitFor(() => probes > 0 && suspect.includes('w-alive'), 'the probe of the live port')
    // The probe's outcome is decided on its connect; give the coordinator a few turns to act.
    await new Promise((r) => setTimeout(r, 100))
    expect(dead.has('w-alive')).toBe(false)
  })
})
