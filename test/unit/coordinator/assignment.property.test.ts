import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  computeAssignment,
  diffAssignments,
  emptyAssignment,
  routingTable,
  type Assignment,
  type WorkerSpec,
} from '../../../src/coordinator/assignment.ts'

// Time-boxed property runs: a run cut short by the limit passes with the runs it completed.
const fcOptions = (numRuns: number) => ({ numRuns, plugins: [fc.interruptAfterTimeLimit(4000)] })

const POOL = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'] as const

// ---------------------------------------------------------------------------------------------
// Oracles, written independently of the implementation.

const cap = (w: WorkerSpec): number => w.capacity ?? 1

function countsOf(a: Assignment): Map<string, number> {
  const m = new Map<string, number>()
  for (const o of a.owners) if (o !== null) m.set(o, (m.get(o) ?? 0) + 1)
  return m
}

/** Exact fair-share bounds: floor and ceil of P * c / C, with BigInt to stay exact. */
function shareBounds(workers: readonly WorkerSpec[], partitions: number): Map<string, [number, number]> {
  const total = BigInt(workers.reduce((s, w) => s + cap(w), 0))
  const out = new Map<string, [number, number]>()
  for (const w of workers) {
    const num = BigInt(partitions) * BigInt(cap(w))
    const floor = Number(num / total)
    out.set(w.id, [floor, num % total === 0n ? floor : floor + 1])
  }
  return out
}

/**
 * The fewest partitions any valid next assignment can move: orphans (owner not live) must move,
 * and each worker must shed what exceeds its final count, minimised over every way to hand out
 * the `+1`s (brute force over subsets, so keep worker counts small).
 */
function minimalMoves(prev: Assignment, workers: readonly WorkerSpec[]): number {
  const live = new Set(workers.map((w) => w.id))
  if (live.size === 0) return prev.owners.filter((o) => o !== null).length
  let orphans = 0
  const held = new Map<string, number>()
  for (const o of prev.owners) {
    if (o !== null && live.has(o)) held.set(o, (held.get(o) ?? 0) + 1)
    else orphans++
  }
  const bounds = shareBounds(workers, prev.partitions)
  const ids = workers.map((w) => w.id)
  const floors = ids.reduce((s, id) => s + bounds.get(id)![0], 0)
  const extra = prev.partitions - floors
  const fractional = ids.filter((id) => bounds.get(id)![1] > bounds.get(id)![0])
  let best = Number.POSITIVE_INFINITY
  const choose = (start: number, left: number, chosen: Set<string>): void => {
    if (left === 0) {
      let cost = orphans
      for (const id of ids) {
        const target = bounds.get(id)![0] + (chosen.has(id) ? 1 : 0)
        cost += Math.max(0, (held.get(id) ?? 0) - target)
      }
      best = Math.min(best, cost)
      return
    }
    for (let i = start; i <= fractional.length - left; i++) {
      chosen.add(fractional[i]!)
      choose(i + 1, left - 1, chosen)
      chosen.delete(fractional[i]!)
    }
  }
  choose(0, extra, new Set())
  return best
}

function movedPartitions(prev: Assignment, next: Assignment): number[] {
  const moved: number[] = []
  for (let p = 0; p < prev.partitions; p++) if (prev.owners[p] !== next.owners[p]) moved.push(p)
  return moved
}

/** Throw with a lazily built message: cheaper than expect() inside per-partition loops. */
function ensure(condition: boolean, message: () => string): void {
  if (!condition) throw new Error(message())
}

/** The invariants every computed assignment satisfies, whatever the previous one was. */
function checkInvariants(prev: Assignment, next: Assignment, workers: readonly WorkerSpec[]): void {
  const P = prev.partitions
  expect(next.partitions).toBe(P)
  expect(next.owners).toHaveLength(P)
  expect(next.epochs).toHaveLength(P)
  const live = new Set(workers.map((w) => w.id))

  // Ownership: exactly one live owner per partition, or none at all without workers.
  next.owners.forEach((o, p) => {
    if (live.size === 0) ensure(o === null, () => `partition ${p} owned by ${o} with no live worker`)
    else ensure(o !== null && live.has(o), () => `partition ${p} owned by ${o}, not a live worker`)
  })

  // Balance: each worker holds the floor or ceil of its capacity-weighted share.
  if (live.size > 0) {
    const counts = countsOf(next)
    for (const [id, [lo, hi]] of shareBounds(workers, P)) {
      const c = counts.get(id) ?? 0
      ensure(c >= lo && c <= hi, () => `${id} holds ${c}, outside its share [${lo}, ${hi}]`)
    }
    if (new Set(workers.map(cap)).size === 1) {
      const values = workers.map((w) => counts.get(w.id) ?? 0)
      expect(Math.max(...values) - Math.min(...values)).toBeLessThanOrEqual(1)
    }
  }

  // Movement: minimal, and never a live worker that both loses and gains.
  const moved = movedPartitions(prev, next)
  expect(moved.length).toBe(minimalMoves(prev, workers))
  const losers = new Set<string>()
  const gainers = new Set<string>()
  for (const p of moved) {
    const from = prev.owners[p]
    const to = next.owners[p]
    if (from != null && live.has(from)) losers.add(from)
    if (to != null) gainers.add(to)
  }
  for (const id of losers) ensure(!gainers.has(id), () => `${id} both loses and gains partitions`)

  // Epochs: one new epoch per change, on exactly the moved partitions; others keep theirs.
  if (moved.length === 0) {
    expect(next).toBe(prev)
  } else {
    expect(next.epoch).toBe(prev.epoch + 1)
  }
  const movedSet = new Set(moved)
  for (let p = 0; p < P; p++) {
    const e = next.epochs[p]!
    if (movedSet.has(p)) {
      ensure(e === next.epoch && e > prev.epoch, () => `moved partition ${p} has epoch ${e}`)
    } else {
      ensure(e === prev.epochs[p], () => `unmoved partition ${p} changed epoch ${prev.epochs[p]} -> ${e}`)
    }
    ensure(e <= next.epoch, () => `partition ${p} epoch ${e} > cluster epoch ${next.epoch}`)
  }

  // The diff describes exactly the moves and is shaped for revoke-before-assign.
  const diff = diffAssignments(prev, next)
  expect(diff.moves.map((m) => m.partition)).toEqual(moved)
  const ids = diff.workers.map((w) => w.workerId)
  expect(ids).toEqual([...ids].sort())
  const applied = [...prev.owners]
  for (const w of diff.workers) {
    for (const r of w.revoke) {
      ensure(prev.owners[r.partition] === w.workerId, () => `revoke of ${r.partition} sent to non-owner`)
      ensure(r.epoch === prev.epochs[r.partition], () => `revoke of ${r.partition} at wrong epoch`)
      applied[r.partition] = null
    }
  }
  for (const w of diff.workers) {
    for (const a of w.assign) {
      ensure(a.from === prev.owners[a.partition], () => `assign of ${a.partition} names wrong previous owner`)
      ensure(a.epoch === next.epochs[a.partition], () => `assign of ${a.partition} at wrong epoch`)
      applied[a.partition] = w.workerId
    }
  }
  expect(applied).toEqual(next.owners)

  // The routing table mirrors the assignment.
  const table = routingTable(next)
  expect(table.epoch).toBe(next.epoch)
  table.routes.forEach((r, p) => {
    ensure((r?.workerId ?? null) === next.owners[p], () => `route ${p} disagrees with owner`)
    if (r !== null) ensure(r.epoch === next.epochs[p], () => `route ${p} has wrong epoch`)
  })
}

// ---------------------------------------------------------------------------------------------
// Arbitraries.

/** Any well-formed previous assignment: owners drawn from the pool (live or not) or null. */
const arbPrevious = fc
  .record({ partitions: fc.integer({ min: 1, max: 48 }), epoch: fc.integer({ min: 0, max: 50 }) })
  .chain(({ partitions, epoch }) =>
    fc.record({
      partitions: fc.constant(partitions),
      epoch: fc.constant(epoch),
      owners: fc.array(fc.option(fc.constantFrom(...POOL), { freq: 4 }), {
        minLength: partitions,
        maxLength: partitions,
      }),
      epochs: fc.array(fc.integer({ min: 0, max: epoch }), { minLength: partitions, maxLength: partitions }),
    }),
  )

const arbWorkers = (maxCapacity: number): fc.Arbitrary<WorkerSpec[]> =>
  fc
    .uniqueArray(fc.constantFrom(...POOL), { maxLength: 8 })
    .chain((ids) =>
      fc.tuple(
        ...ids.map((id) => fc.integer({ min: 1, max: maxCapacity }).map((capacity) => ({ id, capacity }))),
      ),
    )

/** A balanced state with equal capacities: computed from empty for 1..8 workers. */
const arbBalanced = fc
  .record({
    partitions: fc.integer({ min: 1, max: 300 }),
    ids: fc.uniqueArray(fc.constantFrom(...POOL), { minLength: 1, maxLength: 8 }),
    // A detour through another membership so the state is not always the trivial layout.
    detour: fc.uniqueArray(fc.constantFrom(...POOL), { maxLength: 8 }),
  })
  .map(({ partitions, ids, detour }) => {
    const workers = ids.map((id) => ({ id }))
    const start = computeAssignment(
      emptyAssignment(partitions),
      detour.map((id) => ({ id })),
    )
    return { partitions, workers, assignment: computeAssignment(start, workers) }
  })

// ---------------------------------------------------------------------------------------------

describe('computeAssignment properties', () => {
  it('from any previous assignment: invariants hold and movement is minimal', () => {
    fc.assert(
      fc.property(arbPrevious, arbWorkers(4), (prev, workers) => {
        checkInvariants(prev, computeAssignment(prev, workers), workers)
      }),
      fcOptions(400),
    )
  })

  it('is deterministic, independent of worker order, and idempotent', () => {
    fc.assert(
      fc.property(
        arbPrevious,
        arbWorkers(4).chain((w) => fc.tuple(fc.constant(w), fc.shuffledSubarray(w, { minLength: w.length }))),
        (prev, [workers, shuffled]) => {
          const next = computeAssignment(prev, workers)
          expect(computeAssignment(prev, workers)).toEqual(next)
          expect(computeAssignment(prev, shuffled)).toEqual(next)
          expect(computeAssignment(next, shuffled)).toBe(next)
        },
      ),
      fcOptions(300),
    )
  })

  it('on a leave or death (equal capacities): exactly the dead worker’s partitions move', () => {
    fc.assert(
      fc.property(arbBalanced, fc.nat(), ({ workers, assignment }, pick) => {
        const dead = workers[pick % workers.length]!.id
        const survivors = workers.filter((w) => w.id !== dead)
        const next = computeAssignment(assignment, survivors)
        checkInvariants(assignment, next, survivors)
        const expected = assignment.owners.flatMap((o, p) => (o === dead ? [p] : []))
        expect(movedPartitions(assignment, next)).toEqual(expected)
        for (const p of expected) expect(next.epochs[p]).toBeGreaterThan(assignment.epoch)
      }),
      fcOptions(300),
    )
  })

  it('on a join (equal capacities): floor or ceil of P/N partitions move, all to the new worker, from the most loaded', () => {
    fc.assert(
      fc.property(
        arbBalanced.filter(({ workers }) => workers.length < POOL.length),
        fc.nat(),
        ({ partitions, workers, assignment }, pick) => {
          const outside = POOL.filter((id) => !workers.some((w) => w.id === id))
          const joiner = outside[pick % outside.length]!
          const grown = [...workers, { id: joiner }]
          const next = computeAssignment(assignment, grown)
          checkInvariants(assignment, next, grown)
          const moved = movedPartitions(assignment, next)
          const n = grown.length
          expect([Math.floor(partitions / n), Math.ceil(partitions / n)]).toContain(moved.length)
          for (const p of moved) expect(next.owners[p]).toBe(joiner)
          // Donors are the most loaded: none held fewer than a worker that gave nothing.
          const before = countsOf(assignment)
          const donors = new Set(moved.map((p) => assignment.owners[p]!))
          const kept = workers.filter((w) => !donors.has(w.id)).map((w) => before.get(w.id) ?? 0)
          for (const d of donors) for (const k of kept) expect(before.get(d)!).toBeGreaterThanOrEqual(k)
        },
      ),
      fcOptions(300),
    )
  })
})

// ---------------------------------------------------------------------------------------------
// Random membership histories (fc.commands): every step keeps the invariants, and epochs stay
// valid fencing tokens across the whole history.

interface Model {
  readonly workers: Map<string, number>
  readonly equalCapacity: boolean
}

interface Real {
  assignment: Assignment
  /** Every epoch each partition has carried, in order. */
  readonly history: number[][]
}

function step(model: Model, real: Real, change: () => void): void {
  const prev = real.assignment
  const before = new Map(model.workers)
  change()
  const workers = [...model.workers].map(([id, capacity]) => ({ id, capacity }))
  const next = computeAssignment(prev, workers)
  checkInvariants(prev, next, workers)

  if (model.equalCapacity) {
    const left = [...before.keys()].filter((id) => !model.workers.has(id))
    const joined = [...model.workers.keys()].filter((id) => !before.has(id))
    const moved = movedPartitions(prev, next)
    if (left.length === 1 && joined.length === 0) {
      expect(moved).toEqual(prev.owners.flatMap((o, p) => (o === left[0] ? [p] : [])))
    }
    if (joined.length === 1 && left.length === 0) {
      const n = model.workers.size
      expect([Math.floor(prev.partitions / n), Math.ceil(prev.partitions / n)]).toContain(moved.length)
      for (const p of moved) expect(next.owners[p]).toBe(joined[0])
    }
  }

  // Fencing: a partition's epoch never decreases, and rises exactly when its owner changes,
  // above every epoch any partition carried before.
  const highest = Math.max(...real.history.flat())
  for (let p = 0; p < prev.partitions; p++) {
    const epochs = real.history[p]!
    const last = epochs[epochs.length - 1]!
    if (next.epochs[p] !== last) {
      expect(next.epochs[p]).toBeGreaterThan(highest)
      expect(next.owners[p]).not.toBe(prev.owners[p])
      epochs.push(next.epochs[p]!)
    }
  }
  real.assignment = next
}

class Join implements fc.Command<Model, Real> {
  constructor(
    readonly id: string,
    readonly capacity: number,
  ) {}
  check(m: Readonly<Model>): boolean {
    return !m.workers.has(this.id)
  }
  run(m: Model, r: Real): void {
    step(m, r, () => m.workers.set(this.id, m.equalCapacity ? 1 : this.capacity))
  }
  toString(): string {
    return `join(${this.id}, ${this.capacity})`
  }
}

class Leave implements fc.Command<Model, Real> {
  constructor(readonly id: string) {}
  check(m: Readonly<Model>): boolean {
    return m.workers.has(this.id)
  }
  run(m: Model, r: Real): void {
    step(m, r, () => m.workers.delete(this.id))
  }
  toString(): string {
    return `leave(${this.id})`
  }
}

/** Several workers die and others join in the same round (e.g. a zone outage and a scale-up). */
class Churn implements fc.Command<Model, Real> {
  constructor(
    readonly leave: readonly string[],
    readonly join: readonly string[],
  ) {}
  check(): boolean {
    return true
  }
  run(m: Model, r: Real): void {
    step(m, r, () => {
      for (const id of this.leave) m.workers.delete(id)
      for (const id of this.join) if (!m.workers.has(id)) m.workers.set(id, 1 + (id.charCodeAt(0) % 3))
      if (m.equalCapacity) for (const id of m.workers.keys()) m.workers.set(id, 1)
    })
  }
  toString(): string {
    return `churn(-[${this.leave.join(',')}] +[${this.join.join(',')}])`
  }
}

class Resize implements fc.Command<Model, Real> {
  constructor(
    readonly id: string,
    readonly capacity: number,
  ) {}
  check(m: Readonly<Model>): boolean {
    return !m.equalCapacity && m.workers.has(this.id)
  }
  run(m: Model, r: Real): void {
    step(m, r, () => m.workers.set(this.id, this.capacity))
  }
  toString(): string {
    return `resize(${this.id}, ${this.capacity})`
  }
}

class Recompute implements fc.Command<Model, Real> {
  check(): boolean {
    return true
  }
  run(m: Model, r: Real): void {
    const workers = [...m.workers].map(([id, capacity]) => ({ id, capacity }))
    expect(computeAssignment(r.assignment, workers)).toBe(r.assignment)
  }
  toString(): string {
    return 'recompute()'
  }
}

const arbId = fc.constantFrom(...POOL)
const arbCapacity = fc.integer({ min: 1, max: 4 })
const commands = fc.commands(
  [
    fc.tuple(arbId, arbCapacity).map(([id, c]) => new Join(id, c)),
    arbId.map((id) => new Leave(id)),
    fc
      .tuple(fc.uniqueArray(arbId, { maxLength: 4 }), fc.uniqueArray(arbId, { maxLength: 4 }))
      .map(([l, j]) => new Churn(l, j)),
    fc.tuple(arbId, arbCapacity).map(([id, c]) => new Resize(id, c)),
    fc.constant(new Recompute()),
  ],
  { maxCommands: 40 },
)

describe('random membership histories', () => {
  it.each([
    ['equal capacities', true],
    ['capacity-weighted', false],
  ] as const)('%s: every step keeps the invariants and epochs fence', (_name, equalCapacity) => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 128 }), commands, (partitions, cmds) => {
        const start = emptyAssignment(partitions)
        fc.modelRun(
          () => ({
            model: { workers: new Map<string, number>(), equalCapacity },
            real: { assignment: start, history: start.epochs.map((e) => [e]) },
          }),
          cmds,
        )
      }),
      fcOptions(200),
    )
  })
})
