import { describe, expect, it } from 'vitest'
import { defineJob } from '../../../src/processing/job.ts'
import { TIME_KEY } from '../../../src/processing/time/codec.ts'
import { TimedPartition, type TimeOutput } from '../../../src/processing/time/runtime.ts'
import { windows } from '../../../src/processing/windows.ts'
import type { AnyJob } from './harness.ts'

interface E {
  ts?: unknown
  boom?: true
}

const job = defineJob<E, { n: number }>({
  name: 'bad-input',
  eventTime: (e) => {
    if (e.boom) throw new Error('no ts field')
    return e.ts as number
  },
  watermark: { outOfOrdernessMs: 1, idleMs: 10 },
  window: windows.tumbling({ sizeMs: 10 }),
  allowedLatenessMs: 5,
  init: () => ({ n: 0 }),
  process(acc) {
    acc.n++
  },
}) as AnyJob

function partitionWithState() {
  const p = new TimedPartition(job, 0)
  p.apply(
    [
      ['k', { ts: 3 }],
      ['k', { ts: 14 }],
    ],
    { emitted: null, deadLetters: null },
  ) // W = 13: [0,10) fired
  p.snapshot(false)
  return p
}

describe('bad event times', () => {
  it.each([
    ['a string', { ts: '12' }, 'eventTime returned a string ("12"), not a finite number of ms'],
    ['NaN', { ts: NaN }, 'eventTime returned NaN, not a finite number of ms'],
    ['Infinity', { ts: Infinity }, 'eventTime returned Infinity, not a finite number of ms'],
    ['null', { ts: null }, 'eventTime returned null, not a finite number of ms'],
    ['undefined', {}, 'eventTime returned undefined, not a finite number of ms'],
    ['a throw', { boom: true }, 'eventTime threw: no ts field'],
  ])(
    'eventTime giving %s dead-letters the event with the reason and changes nothing',
    (_what, event, reason) => {
      const p = partitionWithState()
      const before = { dump: p.dump(), status: p.status }
      const out: TimeOutput = { emitted: null, deadLetters: null }
      p.apply([['k', event]], out)
      expect(out.deadLetters).toEqual([{ index: 0, key: 'k', error: reason }])
      expect(out.emitted).toBeNull()
      expect(p.dump()).toEqual(before.dump)
      expect(p.status).toEqual(before.status) // watermark, idle base and deadlines as they were
      // Nothing to checkpoint but the partition's time (always written).
      const snap = p.snapshot(false)
      expect(snap.entries.map(([k]) => k)).toEqual([TIME_KEY])
      expect(snap.deleted).toEqual([])
    },
  )

  it('a bad event in a batch is skipped; the events around it are processed as usual', () => {
    const p = new TimedPartition(job, 0)
    const out: TimeOutput = { emitted: null, deadLetters: null }
    p.apply(
      [
        ['a', { ts: 1 }],
        ['a', { ts: 'late' }],
        ['b', { ts: 25 }],
      ],
      out,
    )
    expect(out.deadLetters).toEqual([
      { index: 1, key: 'a', error: 'eventTime returned a string ("late"), not a finite number of ms' },
    ])
    expect(out.emitted).toEqual([['windows', 'a', { key: 'a', start: 0, end: 10, state: { n: 1 } }]])
  })

  it('the partition time key is refused for events', () => {
    const p = new TimedPartition(job, 0)
    const out: TimeOutput = { emitted: null, deadLetters: null }
    p.apply([[TIME_KEY, { ts: 5 }]], out)
    expect(out.deadLetters).toHaveLength(1)
    expect(out.deadLetters![0]!.error).toContain('reserved')
    expect(p.dump()).toEqual([])
    expect(p.status.watermark).toBe(-Infinity)
  })
})

describe('invalid window specs fail defineJob, naming the field', () => {
  const base = { name: 'w', eventTime: (e: { ts: number }) => e.ts, init: () => 0, process: () => 0 }
  const define = (window: unknown) => () => defineJob({ ...base, window: window as never })

  it.each([
    [
      'tumbling sizeMs 0',
      () => windows.tumbling({ sizeMs: 0 }),
      /windows\.tumbling: sizeMs must be a positive integer.*\(got 0\)/,
    ],
    ['tumbling sizeMs 1.5', () => windows.tumbling({ sizeMs: 1.5 }), /sizeMs .*\(got 1\.5\)/],
    ['tumbling sizeMs NaN', () => windows.tumbling({ sizeMs: NaN }), /sizeMs .*\(got NaN\)/],
    [
      'sliding without slideMs',
      () => windows.sliding({ sizeMs: 10 } as never),
      /windows\.sliding: slideMs .*\(got undefined\)/,
    ],
    [
      'sliding slideMs > sizeMs',
      () => windows.sliding({ sizeMs: 5, slideMs: 10 }),
      /slideMs \(10\) must not exceed sizeMs \(5\)/,
    ],
    ['session gapMs -1', () => windows.session({ gapMs: -1 }), /windows\.session: gapMs .*\(got -1\)/],
  ])('%s', (_what, make, message) => {
    expect(() => defineJob({ ...base, window: make() })).toThrow(message)
  })

  it.each([
    [
      'an unknown kind',
      { kind: 'hopping', sizeMs: 10 },
      /window\.kind must be 'tumbling', 'sliding' or 'session' \(got "hopping"\)/,
    ],
    ['no kind', { sizeMs: 10 }, /window\.kind .*\(got undefined\)/],
    ['not an object', 60_000, /window must be windows\.tumbling\/sliding\/session/],
    ['tumbling by hand with sizeMs 0', { kind: 'tumbling', sizeMs: 0 }, /sizeMs .*\(got 0\)/],
    [
      'sliding by hand with a string slideMs',
      { kind: 'sliding', sizeMs: 10, slideMs: '5' },
      /slideMs .*\(got "5"\)/,
    ],
    [
      'sliding by hand, slideMs > sizeMs',
      { kind: 'sliding', sizeMs: 10, slideMs: 20 },
      /slideMs \(20\) must not exceed sizeMs \(10\)/,
    ],
    ['session by hand without gapMs', { kind: 'session' }, /gapMs .*\(got undefined\)/],
  ])('a hand-written spec: %s', (_what, spec, message) => {
    expect(define(spec)).toThrow(message)
  })

  it('other time fields are checked too, by name', () => {
    const w = windows.tumbling({ sizeMs: 10 })
    expect(() => defineJob({ ...base, window: w, allowedLatenessMs: -1 })).toThrow(/allowedLatenessMs/)
    expect(() => defineJob({ ...base, window: w, watermark: { outOfOrdernessMs: -5 } })).toThrow(
      /watermark\.outOfOrdernessMs/,
    )
    expect(() => defineJob({ ...base, window: w, watermark: { idleMs: 0.5 } })).toThrow(/watermark\.idleMs/)
    const { eventTime: _none, ...noTime } = base
    expect(() => defineJob({ ...noTime, window: w })).toThrow(/window needs eventTime/)
    expect(() => defineJob({ ...base, ttlMs: 0 })).toThrow(/ttlMs/)
  })
})
