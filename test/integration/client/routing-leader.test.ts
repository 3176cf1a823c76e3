/**
 * A client following the coordinator leader across a takeover in which the new leader numbers
 * its assignment below the last table the deposed leader published (the chaos suite's leader
 * partition: the cut-off leader declared every worker dead within its lease, those ownerless
 * tables reached the client when the link came back, and the new leader, rebuilding from what the
 * workers had claimed, started at a lower epoch). Ordered by epoch alone, the client kept the
 * deposed leader's ownerless table and saw "no owner" for the rest of the run.
 *
 * In process over the memory transport: two Coordinators with HA leadership stamps (epoch 1,
 * then 2), workers with a recording host (no data plane: only routing is under test).
 */
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { ShoalClient } from '../../../src/client/client.ts'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import type { RoutingFields } from '../../../src/protocol/control.ts'
import { createMemoryTransport } from '../../../src/transport/memory/memory-transport.ts'
import { Worker, type PartitionHost } from '../../../src/worker/worker.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: 'silent' })
const HB = 40
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

let portSeq = 0
function port(): number {
  return 7600 + portSeq++
}

async function coordinator(at: number, leadership: { epoch: number; valid: boolean }): Promise<Coordinator> {
  const c = new Coordinator({
    transport: createMemoryTransport({ nodeId: `coord-${leadership.epoch}`, role: 'coordinator' }),
    listen: { host: 'inproc', port: at },
    partitions: 8,
    heartbeatIntervalMs: HB,
    heartbeatMisses: 3,
    logger,
    leadership,
  })
  await c.start()
  cleanup.push(() => c.stop({ timeoutMs: 200 }))
  return c
}

const host: PartitionHost = {
  restore: () => Promise.resolve(),
  release: () => Promise.resolve(),
  fence: () => {},
  pause: () => {},
  resume: () => {},
  load: () => ({ queueDepth: 0, inFlight: 0, eventsPerSec: 0, rssBytes: 0, lag: 0 }),
}

async function worker(coordinatorAddress: string, id: string): Promise<Worker> {
  const w = new Worker({
    transport: createMemoryTransport({ nodeId: id, role: 'worker' }),
    coordinator: coordinatorAddress,
    listen: { host: 'inproc', port: port() },
    memberId: id,
    capacity: 1,
    version: 'test',
    heartbeatIntervalMs: HB,
    logger,
    host,
  })
  await w.start()
  cleanup.push(() => w.stop({ timeoutMs: 200 }))
  return w
}

const ownedBy = (r: Readonly<RoutingFields>, id: string): boolean =>
  r.recovering !== true && r.routes.every((route) => route?.workerId === id)

describe('client routing across a leader change', () => {
  it("adopts the new leader's table even when its epoch is below the deposed leader's last one", async () => {
    const portA = port()
    const portB = port()
    const leaseA = { epoch: 1, valid: true }
    const a = await coordinator(portA, leaseA)
    const w1 = await worker(a.address, 'w1')
    const client = await ShoalClient.connect({
      coordinator: `inproc:${portA},inproc:${portB}`,
      transport: createMemoryTransport({ nodeId: 'client', role: 'client' }),
    })
    cleanup.push(() => client.close())
    await waitFor(() => ownedBy(client.routing, 'w1'), 'the client routes everything to w1')

    // The leader, still within its lease, declares its only worker dead: its last table, at a
    // new epoch and ownerless, is pushed to the client.
    await w1.stop({ timeoutMs: 200 })
    await waitFor(
      () => client.routing.epoch > 1 && client.routing.routes.every((r) => r === null),
      "the deposed leader's ownerless table reached the client",
    )
    const deposedEpoch = client.routing.epoch
    expect(client.routing.leader).toBe(1)

    // It loses the lease and goes away; the replica takes over (a higher leadership epoch) and a
    // worker joins it. Its assignment starts from what workers claimed: a lower epoch.
    leaseA.valid = false
    await a.stop({ timeoutMs: 200 })
    const b = await coordinator(portB, { epoch: 2, valid: true })
    await worker(b.address, 'w2')
    await waitFor(
      () => b.readiness().ok && b.assignment.owners.every((o) => o === 'w2'),
      'the new leader assigned everything to w2',
    )
    // The point of the test: the new leader's epoch is below the one the client holds.
    expect(b.assignment.epoch).toBeLessThan(deposedEpoch)

    await waitFor(() => ownedBy(client.routing, 'w2'), "the client follows the new leader's table")
    expect(client.routing.leader).toBe(2)
    expect(client.routing.epoch).toBe(b.assignment.epoch)
  })

  it("ignores a deposed leader's table that arrives after the new leader's", async () => {
    const portA = port()
    const b = await coordinator(portA, { epoch: 5, valid: true })
    await worker(b.address, 'w2')
    await waitFor(() => b.readiness().ok && b.assignment.owners.every((o) => o === 'w2'), 'w2 owns all')
    const client = await ShoalClient.connect({
      coordinator: b.address,
      transport: createMemoryTransport({ nodeId: 'client', role: 'client' }),
    })
    cleanup.push(() => client.close())
    await waitFor(() => ownedBy(client.routing, 'w2'), 'the client routes everything to w2')
    const table = client.routing
    // A push from leader 4 (deposed) with a higher epoch and no owners, e.g. delayed in a
    // connection that came back: it must not replace the current leader's table.
    const late: RoutingFields = {
      epoch: table.epoch + 10,
      partitions: table.partitions,
      routes: table.routes.map(() => null),
      addresses: {},
      leader: 4,
    }
    // Pushed to the client over its subscription, as a coordinator does; then a table of the
    // current leader (one epoch up, same owners) on the same connection, so once that one is
    // taken the late push has been handled before it.
    const conns = [...b.listener!.connections].filter((c) => c.peer.nodeId === 'client')
    expect(conns.length).toBeGreaterThan(0)
    const marker: RoutingFields = { ...table, epoch: table.epoch + 1, leader: 5 }
    for (const c of conns) {
      c.send({ kind: 'control', body: { op: 'routing', ...late } })
      c.send({ kind: 'control', body: { op: 'routing', ...marker } })
    }
    // Ordered by epoch alone, the late table (epoch + 10) would be kept and the marker refused.
    await waitFor(() => client.routing.epoch === marker.epoch, "the current leader's next table taken")
    expect(ownedBy(client.routing, 'w2')).toBe(true)
    expect(client.routing.leader).toBe(5)
  })
})
