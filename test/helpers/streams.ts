/** Redis Streams input for source tests: counted events in, and "the group has read it all". */
import type { Redis } from 'ioredis'
import type { Totals } from './totals.ts'

/**
 * XADD events from..to-1 to `stream` (field `data` = {"key":"k<i*7919 % keys>","value":(i%17)-5},
 * in pipelines) and add them to `expected` (the built-in count job's per-key totals).
 */
export async function produceCounted(
  r: Redis,
  stream: string,
  from: number,
  to: number,
  expected: Totals,
  keys = 300,
): Promise<void> {
  for (let i = from; i < to; i += 2000) {
    const p = r.pipeline()
    for (let j = i; j < Math.min(to, i + 2000); j++) {
      const key = `k${(j * 7919) % keys}`
      const value = (j % 17) - 5
      p.xadd(stream, '*', 'data', JSON.stringify({ key, value }))
      const e = expected.get(key) ?? { count: 0, sum: 0 }
      e.count++
      e.sum += value
      expected.set(key, e)
    }
    await p.exec()
  }
}

export async function pendingOf(r: Redis, stream: string, group: string): Promise<number> {
  const reply = (await r.xpending(stream, group)) as [number, ...unknown[]]
  return Number(reply[0])
}

/** Every entry of the stream delivered to the group (lag 0) and acknowledged (pending 0). */
export async function groupDrained(r: Redis, stream: string, group: string): Promise<boolean> {
  const groups = (await r.xinfo('GROUPS', stream)) as unknown[][]
  const g = groups.find((x) => x[1] === group)
  if (g === undefined) return false
  return g[g.indexOf('lag') + 1] === 0 && (await pendingOf(r, stream, group)) === 0
}
