/**
 * The engine hands a thread its waiting batches as one 'packed' task (payloads and an index,
 * src/processing/task-types.ts) and gets back only counts when no batch emitted, dead-lettered
 * or failed. Each batch must still get its own result: counts, emitted records, dead letters,
 * or its own failure, in any mix within one task.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Packr } from 'msgpackr'
import { afterEach, describe, expect, it } from 'vitest'
import { ErrorCodes } from '../../../src/errors.ts'
import { Engine } from '../../../src/processing/engine.ts'

const packr = new Packr({ useRecords: true, moreTypes: true })
const unpackr = new Packr({ useRecords: true, moreTypes: true })

const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

/** Counts; emits `{ n }` on an event with `emit`, throws on one with `bad`; blocks on `block`. */
function startEngine(): { engine: Engine; release: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-packed-'))
  const flag = join(dir, 'go')
  const job = join(dir, 'job.mjs')
  writeFileSync(
    job,
    `import { existsSync } from 'node:fs'
     const nap = new Int32Array(new SharedArrayBuffer(4))
     export default { name: 'mixed', init: () => ({ n: 0 }),
       process(s, e, ctx) {
         if (e.block) while (!existsSync(${JSON.stringify(flag)})) Atomics.wait(nap, 0, 0, 5)
         if (e.bad) throw new Error('bad event')
         s.n++
         if (e.emit) ctx.emit('out', { n: s.n })
         return s
       } }`,
  )
  const release = (): void => writeFileSync(flag, '')
  const engine = new Engine({ job, threads: 1 })
  cleanup.push(async () => {
    release()
    await engine.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return { engine, release }
}

/** Submit `batches` while the thread is held, so that they wait and leave as one task. */
async function oneTask(
  engine: Engine,
  release: () => void,
  batches: [number, Uint8Array][],
): Promise<PromiseSettledResult<Awaited<ReturnType<Engine['batch']>>>[]> {
  await engine.describe()
  const held = engine.batch(0, packr.pack([['blocker', { block: true }]]))
  await new Promise((r) => setImmediate(r))
  const results = batches.map(([p, payload]) => engine.batch(p, payload))
  expect(engine.queueDepth).toBe(batches.length)
  release()
  await held
  return Promise.allSettled(results)
}

describe('packed engine tasks', () => {
  it('a task of batches that only count answers with counts', async () => {
    const { engine, release } = startEngine()
    const results = await oneTask(engine, release, [
      [
        1,
        packr.pack([
          ['a', {}],
          ['b', {}],
        ]),
      ],
      [2, packr.pack([['c', {}]])],
      [
        1,
        packr.pack([
          ['a', {}],
          ['a', {}],
          ['d', {}],
        ]),
      ],
    ])
    expect(results.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as Error)))).toEqual([
      { op: 'batch', count: 2, emitted: null, deadLetters: null },
      { op: 'batch', count: 1, emitted: null, deadLetters: null },
      { op: 'batch', count: 3, emitted: null, deadLetters: null },
    ])
    expect(JSON.parse(JSON.stringify(await engine.get(1, 'a')))).toMatchObject({ found: true })
  })

  it('a mix of counting, emitting, dead-lettering and failing batches: each gets its own result', async () => {
    const { engine, release } = startEngine()
    const results = await oneTask(engine, release, [
      [
        1,
        packr.pack([
          ['a', {}],
          ['b', {}],
        ]),
      ],
      [2, packr.pack([['c', { emit: true }]])],
      [
        3,
        packr.pack([
          ['d', {}],
          ['e', { bad: true }],
        ]),
      ],
      // Cut short: not msgpack the thread can read.
      [4, packr.pack([['f', { value: 'long enough to cut' }]]).subarray(0, 6)],
      [1, packr.pack([['a', {}]])],
    ])
    const [counted, emitting, dead, failed, last] = results
    expect(counted).toEqual({
      status: 'fulfilled',
      value: { op: 'batch', count: 2, emitted: null, deadLetters: null },
    })
    expect(emitting!.status).toBe('fulfilled')
    const emitted = (emitting as PromiseFulfilledResult<{ emitted: Uint8Array | null }>).value.emitted
    expect(unpackr.unpack(emitted!)).toEqual([['out', 'c', { n: 1 }]])
    expect(dead).toMatchObject({
      status: 'fulfilled',
      value: { count: 2, emitted: null, deadLetters: [{ index: 1, key: 'e', error: 'bad event' }] },
    })
    expect(failed!.status).toBe('rejected')
    expect((failed as PromiseRejectedResult).reason).toMatchObject({
      code: ErrorCodes.JOB_FAILED,
      message: expect.stringContaining('batch of partition 4 failed') as unknown,
    })
    expect(last).toEqual({
      status: 'fulfilled',
      value: { op: 'batch', count: 1, emitted: null, deadLetters: null },
    })
  })
})
