/**
 * Expected per-key results of the built-in `count` job ({ count, sum of value }) for tests that
 * stream events through a cluster and check every key exactly afterwards.
 */
import { expect } from 'vitest'
import type { ShoalClient } from '../../src/client/client.ts'

export type Totals = Map<string, { count: number; sum: number }>

/**
 * Send events from..to-1 (event i: key `${prefix}${(i * 7919) % keys}`, value (i % 17) - 5)
 * and add them to `expected`.
 */
export function sendCounted(
  cl: ShoalClient,
  from: number,
  to: number,
  expected: Totals,
  keys: number,
  prefix = 'key-',
): void {
  for (let i = from; i < to; i++) {
    const key = `${prefix}${(i * 7919) % keys}`
    const value = (i % 17) - 5
    cl.send(key, { value })
    const e = expected.get(key) ?? { count: 0, sum: 0 }
    e.count++
    e.sum += value
    expected.set(key, e)
  }
}

/** Dump the cluster's state: every key exactly as expected, no key more. */
export async function expectExactState(cl: ShoalClient, expected: Totals): Promise<void> {
  const got = new Map<string, unknown>()
  for await (const [k, v] of cl.dumpState()) got.set(k, v)
  const wrong = [...expected]
    .filter(([k, e]) => JSON.stringify(got.get(k)) !== JSON.stringify(e))
    .map(([k, e]) => ({ key: k, expected: e, got: got.get(k) }))
  expect(wrong.length, JSON.stringify(wrong.slice(0, 5))).toBe(0)
  expect(got.size).toBe(expected.size)
}
