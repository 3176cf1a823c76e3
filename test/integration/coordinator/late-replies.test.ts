/**
 * The coordinator's side of "never answer a reply": a late reply (its request timed out) or a
 * worker's error report is logged and dropped, so the two sides cannot bounce errors back and
 * forth; a request it refuses is still answered. A scripted worker on the memory transport.
 */
import { pino } from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { Coordinator } from '../../../src/coordinator/coordinator.ts'
import { createMemoryTransport } from '../../../src/transport/memory/memory-transport.ts'
import { waitFor } from '../../helpers/wait-for.ts'

const logger = pino({ level: 'silent' })
const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

describe('coordinator: replies and error reports from a worker', () => {
  it('are never answered; a refused request is', async () => {
    const c = new Coordinator({
      transport: createMemoryTransport({ nodeId: 'coordinator', role: 'coordinator' }),
      listen: { host: 'late-replies', port: 1 },
      partitions: 8,
      heartbeatIntervalMs: 1000,
      logger,
    })
    await c.start()
    cleanup.push(() => c.stop({ timeoutMs: 100 }))
    const conn = await createMemoryTransport({ nodeId: 'w1', role: 'worker' }).connect(c.address)
    cleanup.push(() => conn.destroy())
    const errors: string[] = []
    void (async () => {
      for await (const env of conn) {
        if (env.kind === 'control' && env.body.op === 'error') errors.push(String(env.body.message))
      }
    })().catch(() => {})
    // Not joined, so the coordinator refuses everything but a join: the first two are a reply
    // to nothing and an error report, the third a request.
    conn.send({ kind: 'control', body: { op: 'revoked', partitions: [] }, corr: 424242 })
    conn.send({
      kind: 'control',
      body: { op: 'error', code: 'SHOAL_ERR_BAD_MESSAGE', message: 'yours was bad', fatal: false },
    })
    conn.send({ kind: 'control', body: { op: 'assigned', partitions: [] } })
    await waitFor(() => errors.length > 0, 'the answer to the refused request')
    // One connection, handled in order: the first two were dropped before the third's answer.
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatch(/assigned before join/)
  })
})
