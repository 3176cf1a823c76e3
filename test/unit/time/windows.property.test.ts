import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  buildLog,
  checkAgainstModel,
  cutsArb,
  itemsArb,
  outputsOf,
  planArb,
  runs,
  sessionJobArb,
  windowJobArb,
} from './harness.ts'

describe('windows vs the reference model', () => {
  it('crashes at random batch boundaries: restore + replay delivers exactly the model output', () => {
    fc.assert(
      fc.property(
        windowJobArb.chain((spec) => fc.tuple(fc.constant(spec), itemsArb(spec), cutsArb, planArb)),
        ([spec, items, cuts, plan]) => checkAgainstModel(spec, buildLog(spec, items, cuts), plan),
      ),
      runs(200),
    )
  })

  it('dense sessions (merges of several, extensions, late firings, failures) through crashes', () => {
    const dense = { maxKeys: 2, maxAdvance: 2, maxBehind: 10, failOneIn: 6 }
    fc.assert(
      fc.property(
        sessionJobArb.chain((spec) => fc.tuple(fc.constant(spec), itemsArb(spec, dense), cutsArb, planArb)),
        ([spec, items, cuts, plan]) => checkAgainstModel(spec, buildLog(spec, items, cuts), plan),
      ),
      runs(200),
    )
  })

  it('without crashes, how events are batched changes nothing', () => {
    fc.assert(
      fc.property(
        windowJobArb.chain((spec) => fc.tuple(fc.constant(spec), itemsArb(spec), cutsArb, cutsArb)),
        ([spec, items, cuts1, cuts2]) => {
          const a = buildLog(spec, items, cuts1)
          const b = buildLog(spec, items, cuts2)
          checkAgainstModel(spec, a, [])
          expect(outputsOf(spec, b)).toEqual(outputsOf(spec, a))
        },
      ),
      runs(100),
    )
  })
})
