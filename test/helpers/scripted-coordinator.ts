/**
 * A scripted coordinator for client tests: it answers `routing` with a table the test controls
 * and pushes changes to subscribed clients on demand. No membership, no assignment: the test
 * says who owns what.
 */
import type { RoutingFields } from '../../src/protocol/control.ts'
import { partitionForKey } from '../../src/protocol/partition.ts'
import { reply } from '../../src/transport/requests.ts'
import { createTcpTransport } from '../../src/transport/tcp/tcp-transport.ts'
import type { Connection } from '../../src/transport/transport.ts'

export interface ScriptedCoordinator {
  address: string
  table: RoutingFields
  /** Change the table; `push` also sends it to every subscribed client. */
  set(next: RoutingFields, push: boolean): void
  /** Routing fetches answered so far. */
  fetches: number
}

/** Listens on a free loopback port; `cleanup` receives the function that closes it. */
export async function scriptedCoordinator(
  table: RoutingFields,
  cleanup: (() => Promise<void> | void)[],
): Promise<ScriptedCoordinator> {
  const subscribers = new Set<Connection>()
  const state: ScriptedCoordinator = {
    address: '',
    table,
    fetches: 0,
    set(next: RoutingFields, push: boolean) {
      state.table = next
      if (!push) return
      for (const c of subscribers) c.send({ kind: 'control', body: { op: 'routing', ...next } })
    },
  }
  const listener = await createTcpTransport({ nodeId: 'coordinator', role: 'coordinator' }).listen(
    { host: '127.0.0.1', port: 0 },
    (conn) => {
      void (async () => {
        try {
          for await (const env of conn) {
            if (env.kind === 'control' && env.body.op === 'routing') {
              state.fetches++
              subscribers.add(conn)
              reply(conn, env, { kind: 'control', body: { op: 'routing', ...state.table } })
            }
          }
        } catch {
          // the client went away
        }
        subscribers.delete(conn)
      })()
    },
  )
  cleanup.push(() => listener.close({ timeoutMs: 200 }))
  state.address = listener.address
  return state
}

/** One key per partition, indexed by partition: a test can aim a send at any partition. */
export function keysPerPartition(partitions: number): string[] {
  const keys: string[] = []
  for (let i = 0, found = 0; found < partitions; i++) {
    const k = `key-${i}`
    const p = partitionForKey(k, partitions)
    if (keys[p] === undefined) {
      keys[p] = k
      found++
    }
  }
  return keys
}
