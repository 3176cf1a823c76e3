/**
 * The worker's side of a join against a scripted coordinator (memory transport), for orderings
 * the real coordinator produces only by chance: here each step waits for the worker to have
 * handled the previous one, so the interleaving is fixed.
 */
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import type { Envelope } from '../../../src/protocol/messages.ts'
import { createMemoryTransport } from '../../../src/transport/memory/memory-transport.ts'
import { reply } from '../../../src/transport/requests.ts'
import type { Connection } from '../../../src/transport/transport.ts'
import { Worker, type PartitionHost } from '../../../src/worker/worker.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: 'silent' })
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

/** A host that does nothing but what `over` adds (restore, fence, ...). */
function host(over: Partial<PartitionHost> = {}): PartitionHost {
  return {
    restore: () => Promise.resolve(),
    release: () => Promise.resolve(),
    fence: () => {},
    pause: () => {},
    resume: () => {},
    load: () => ({ queueDepth: 0, inFlight: 0, eventsPerSec: 0, rssBytes: 0, lag: 0 }),
    ...over,
  }
}

/** The scripted coordinator's answer to `join`: member w1, nothing kept. */
function replyJoined(conn: Connection, join: Envelope, epoch: number): void {
  reply(conn, join, {
    kind: 'control',
    body: {
      op: 'joined',
      memberId: 'w1',
      partitions: 16,
      heartbeatIntervalMs: 1000,
      heartbeatMisses: 3,
      epoch,
      kept: [],
    },
  })
}

/** Worker w1 on the memory transport, joined to `coordinator`, stopped after the test. */
async function startWorker(coordinator: string, listenHost: string, h: PartitionHost): Promise<Worker> {
  const w = new Worker({
    transport: createMemoryTransport({ nodeId: 'w1', role: 'worker' }),
    coordinator,
    listen: { host: listenHost, port: 2 },
    memberId: 'w1',
    capacity: 1,
    version: 'test',
    heartbeatIntervalMs: 1000,
    logger,
    host: h,
  })
  cleanup.push(() => w.stop({ timeoutMs: 100 }))
  await w.start()
  return w
}

describe('worker join', () => {
  it('an assign handled before the join reply is not fenced as "not kept on rejoin"', async () => {
    const restored: number[] = []
    const fenced: number[] = []
    const recording = host({
      restore: (p) => {
        restored.push(p)
        return Promise.resolve()
      },
      fence: (p) => fenced.push(p),
    })
    const received: string[] = []
    const coordinator = await createMemoryTransport({ nodeId: 'scripted', role: 'coordinator' }).listen(
      { host: 'join-race', port: 1 },
      (conn: Connection) => {
        void (async () => {
          for await (const env of conn) {
            if (env.kind !== 'control') continue
            received.push(env.body.op)
            if (env.body.op === 'join') void answerJoin(conn, env)
          }
        })().catch(() => {})
      },
    )
    cleanup.push(() => coordinator.close({ timeoutMs: 100 }))
    // The coordinator's join handling sends the reply and then the assignments the worker does
    // not report; the worker may handle that assign before its join continuation runs. Scripted:
    // the assign first, the reply once the worker is restoring the assigned partition.
    const answerJoin = async (conn: Connection, join: Envelope): Promise<void> => {
      conn.send({
        kind: 'control',
        body: { op: 'assign', epoch: 3, partitions: [{ partition: 9, epoch: 3 }] },
      })
      await waitFor(() => restored.includes(9), 'the worker restores the assigned partition')
      replyJoined(conn, join, 3)
    }
    const w = await startWorker(coordinator.address, 'join-race', recording)
    await waitFor(() => received.includes('assigned'), 'the worker reports partition 9 assigned')
    expect(fenced).toEqual([])
    expect(w.partitions().get(9)).toEqual({ epoch: 3, state: 'ready' })
  })

  it('a late reply or an error report from the coordinator is never answered (no error ping-pong)', async () => {
    const errors: string[] = []
    let joinedConn: Connection | null = null
    const coordinator = await createMemoryTransport({ nodeId: 'scripted', role: 'coordinator' }).listen(
      { host: 'late-reply', port: 1 },
      (conn: Connection) => {
        void (async () => {
          for await (const env of conn) {
            if (env.kind !== 'control') continue
            if (env.body.op === 'error') errors.push(String(env.body.message))
            if (env.body.op === 'join') {
              replyJoined(conn, env, 1)
              joinedConn = conn
            }
          }
        })().catch(() => {})
      },
    )
    cleanup.push(() => coordinator.close({ timeoutMs: 100 }))
    await startWorker(coordinator.address, 'late-reply', host())
    const conn = await waitFor(() => joinedConn, 'the join')
    // A reply to a request that timed out long ago, and the coordinator's own error report:
    // neither may be answered. Then a request the worker does not take: that one is.
    conn.send({ kind: 'control', body: { op: 'revoked', partitions: [] }, corr: 424242 })
    conn.send({
      kind: 'control',
      body: { op: 'error', code: 'SHOAL_ERR_BAD_MESSAGE', message: 'yours was bad', fatal: false },
    })
    conn.send({ kind: 'control', body: { op: 'leave' } })
    await waitFor(() => errors.length > 0, "the worker's answer to the request it refuses")
    // Messages on one connection are handled in order: the first two were handled (silently)
    // before the answer to the third.
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatch(/leave/)
  })
})
