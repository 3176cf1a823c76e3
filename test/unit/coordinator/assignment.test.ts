import { describe, expect, it } from 'vitest'
import { ErrorCodes, InvalidOptionError } from '../../../src/errors.ts'
import {
  MAX_WORKER_CAPACITY,
  computeAssignment,
  diffAssignments,
  emptyAssignment,
  partitionsByWorker,
  routingTable,
  validateAssignment,
  type Assignment,
  type WorkerSpec,
} from '../../../src/coordinator/assignment.ts'
import { DEFAULT_PARTITIONS } from '../../../src/protocol/partition.ts'

const ws = (...ids: string[]): WorkerSpec[] => ids.map((id) => ({ id }))
const counts = (a: Assignment): Record<string, number> =>
  Object.fromEntries([...partitionsByWorker(a)].map(([id, ps]) => [id, ps.length]))

describe('emptyAssignment', () => {
  it('starts with every partition unowned at epoch 0', () => {
    const a = emptyAssignment(8)
    expect(a).toEqual({
      partitions: 8,
      epoch: 0,
      owners: new Array(8).fill(null),
      epochs: new Array(8).fill(0),
    })
    expect(Object.isFrozen(a)).toBe(true)
    expect(Object.isFrozen(a.owners)).toBe(true)
  })

  it('defaults to DEFAULT_PARTITIONS and validates the count', () => {
    expect(emptyAssignment().partitions).toBe(DEFAULT_PARTITIONS)
    expect(() => emptyAssignment(0)).toThrow('partitions must be an integer in [1, 65536] (got 0)')
  })
})

describe('computeAssignment', () => {
  it('splits 10 partitions over 3 workers as 4/3/3 in contiguous id-ordered runs at epoch 1', () => {
    const a = computeAssignment(emptyAssignment(10), ws('c', 'a', 'b'), 10)
    expect(a.owners).toEqual(['a', 'a', 'a', 'a', 'b', 'b', 'b', 'c', 'c', 'c'])
    expect(a.epochs).toEqual(new Array(10).fill(1))
    expect(a.epoch).toBe(1)
  })

  it('returns the previous assignment itself when nothing changes', () => {
    const a = computeAssignment(emptyAssignment(10), ws('a', 'b', 'c'))
    expect(computeAssignment(a, ws('c', 'b', 'a'))).toBe(a)
    // No workers and nothing owned: nothing to change either.
    const empty = emptyAssignment(4)
    expect(computeAssignment(empty, [])).toBe(empty)
  })

  it('moves only the partitions of a worker that left, to the least loaded', () => {
    const a = computeAssignment(emptyAssignment(10), ws('a', 'b', 'c'))
    const b = computeAssignment(a, ws('a', 'c'))
    // b's partitions 4, 5, 6 go to a and c so both end with 5.
    expect(b.owners).toEqual(['a', 'a', 'a', 'a', 'a', 'c', 'c', 'c', 'c', 'c'])
    expect(b.epochs).toEqual([1, 1, 1, 1, 2, 2, 2, 1, 1, 1])
    expect(b.epoch).toBe(2)
  })

  it('gives a joining worker floor(P/N) partitions taken from the most loaded', () => {
    const a = computeAssignment(emptyAssignment(10), ws('a', 'b', 'c'))
    const b = computeAssignment(a, ws('a', 'b', 'c', 'd'))
    expect(counts(b)).toEqual({ a: 3, b: 3, c: 2, d: 2 })
    // a (the most loaded) gives up one, b keeps 3 (it already holds ceil), c gives one.
    expect(b.owners).toEqual(['a', 'a', 'a', 'd', 'b', 'b', 'b', 'c', 'c', 'd'])
    expect(b.epochs).toEqual([1, 1, 1, 2, 1, 1, 1, 1, 1, 2])
  })

  it('leaves a joining worker idle when there are fewer partitions than workers', () => {
    const a = computeAssignment(emptyAssignment(2), ws('a', 'b'))
    expect(computeAssignment(a, ws('a', 'b', 'c'))).toBe(a)
  })

  it('unowns every partition, at a new epoch, when the last worker leaves', () => {
    const a = computeAssignment(emptyAssignment(3), ws('a'))
    const b = computeAssignment(a, [])
    expect(b.owners).toEqual([null, null, null])
    expect(b.epochs).toEqual([2, 2, 2])
    const c = computeAssignment(b, ws('z'))
    expect(c.owners).toEqual(['z', 'z', 'z'])
    expect(c.epochs).toEqual([3, 3, 3])
  })

  it('weights shares by capacity (threads)', () => {
    const a = computeAssignment(emptyAssignment(8), [{ id: 'a', capacity: 3 }, { id: 'b' }])
    expect(counts(a)).toEqual({ a: 6, b: 2 })
    const b = computeAssignment(a, [
      { id: 'a', capacity: 3 },
      { id: 'b', capacity: 1 },
      { id: 'c', capacity: 4 },
    ])
    expect(counts(b)).toEqual({ a: 3, b: 1, c: 4 })
    // Only a and b shed, and only to c.
    for (let p = 0; p < 8; p++) if (b.owners[p] !== a.owners[p]) expect(b.owners[p]).toBe('c')
  })

  it('treats an owner missing from the worker list as dead even if it rejoins later', () => {
    const a = computeAssignment(emptyAssignment(4), ws('a', 'b'))
    const withoutB = computeAssignment(a, ws('a'))
    const back = computeAssignment(withoutB, ws('a', 'b'))
    expect(counts(back)).toEqual({ a: 2, b: 2 })
    // b comes back at a new epoch: its old epoch-1 writes stay fenced.
    for (let p = 0; p < 4; p++) if (back.owners[p] === 'b') expect(back.epochs[p]).toBe(3)
  })

  it('is deterministic and independent of worker order', () => {
    const prev = computeAssignment(emptyAssignment(64), ws('w1', 'w2', 'w3'))
    const x = computeAssignment(prev, ws('w4', 'w2', 'w5', 'w1'))
    const y = computeAssignment(prev, ws('w1', 'w2', 'w4', 'w5'))
    expect(x).toEqual(y)
  })

  it('survives a JSON round trip (it is stored and sent as plain data)', () => {
    const a = computeAssignment(emptyAssignment(16), ws('a', 'b', 'c'))
    const stored = validateAssignment(JSON.parse(JSON.stringify(a)))
    expect(stored).toEqual(a)
    expect(computeAssignment(stored, ws('a', 'b', 'c'))).toBe(stored)
  })

  describe('validation', () => {
    const prev = emptyAssignment(8)
    const expectInvalid = (fn: () => unknown, message: string): void => {
      try {
        fn()
        expect.unreachable()
      } catch (err) {
        expect(err).toBeInstanceOf(InvalidOptionError)
        expect((err as InvalidOptionError).code).toBe(ErrorCodes.INVALID_OPTION)
        expect((err as Error).message).toBe(message)
      }
    }

    it('rejects a change of the key-group space', () => {
      expectInvalid(
        () => computeAssignment(prev, ws('a'), 16),
        'partitions must equal previous.partitions (8): the key-group space is fixed for a cluster (got 16)',
      )
      expectInvalid(
        () => computeAssignment(prev, ws('a'), 0),
        'partitions must be an integer in [1, 65536] (got 0)',
      )
    })

    it('rejects bad workers', () => {
      expectInvalid(
        () => computeAssignment(prev, ws('a', 'b', 'a')),
        'workers[2].id "a" duplicates workers[0].id',
      )
      expectInvalid(
        () => computeAssignment(prev, ws('')),
        'workers[0].id must be a non-empty string (got "")',
      )
      expectInvalid(
        () => computeAssignment(prev, [{ id: 'a', capacity: 0 }]),
        `workers[0].capacity must be an integer in [1, ${MAX_WORKER_CAPACITY}] (got 0)`,
      )
      expectInvalid(
        () => computeAssignment(prev, [{ id: 'a', capacity: 1.5 }]),
        `workers[0].capacity must be an integer in [1, ${MAX_WORKER_CAPACITY}] (got 1.5)`,
      )
      expectInvalid(
        () => computeAssignment(prev, [null as unknown as WorkerSpec]),
        'workers[0] must be an object (got null)',
      )
      expectInvalid(
        () => computeAssignment(prev, 'a' as unknown as WorkerSpec[]),
        'workers must be an array (got "a")',
      )
    })

    it('rejects a malformed previous assignment', () => {
      expectInvalid(
        () => computeAssignment({ ...prev, epochs: [...prev.epochs.slice(1), 1] }, ws('a')),
        'previous.epochs[7] must be an integer in [0, previous.epoch = 0] (got 1)',
      )
      expectInvalid(
        () => computeAssignment({ ...prev, owners: prev.owners.slice(1) }, ws('a')),
        'previous.owners must be an array of 8 entries (got 7 entries)',
      )
      expectInvalid(
        () => computeAssignment({ ...prev, owners: ['', ...prev.owners.slice(1)] }, ws('a')),
        'previous.owners[0] must be a non-empty string or null (got "")',
      )
      expectInvalid(
        () => computeAssignment({ ...prev, epoch: -1 }, ws('a')),
        'previous.epoch must be a non-negative safe integer (got -1)',
      )
      expectInvalid(() => validateAssignment(null), 'assignment must be an object (got null)')
    })
  })
})

describe('diffAssignments', () => {
  it('lists revokes and assigns per worker, each assign naming the owner to wait for', () => {
    const a = computeAssignment(emptyAssignment(10), ws('a', 'b', 'c'))
    const b = computeAssignment(a, ws('a', 'c', 'd'))
    const diff = diffAssignments(a, b)
    expect(diff.fromEpoch).toBe(1)
    expect(diff.toEpoch).toBe(2)
    // b's 4..6 go to d, which needs 3 (10 / 3 -> 4, 3, 3 with a keeping its 4).
    expect(b.owners).toEqual(['a', 'a', 'a', 'a', 'd', 'd', 'd', 'c', 'c', 'c'])
    expect(diff.workers).toEqual([
      { workerId: 'b', revoke: [4, 5, 6].map((partition) => ({ partition, epoch: 1 })), assign: [] },
      {
        workerId: 'd',
        revoke: [],
        assign: [4, 5, 6].map((partition) => ({ partition, epoch: 2, from: 'b' })),
      },
    ])
    expect(diff.moves).toEqual(
      [4, 5, 6].map((partition) => ({ partition, from: 'b', fromEpoch: 1, to: 'd', toEpoch: 2 })),
    )
  })

  it('is empty when nothing changed', () => {
    const a = computeAssignment(emptyAssignment(10), ws('a', 'b'))
    expect(diffAssignments(a, a)).toEqual({ fromEpoch: 1, toEpoch: 1, moves: [], workers: [] })
  })

  it('assigns from null on the first assignment and revokes to null when everyone left', () => {
    const empty = emptyAssignment(2)
    const a = computeAssignment(empty, ws('a'))
    expect(diffAssignments(empty, a).workers).toEqual([
      {
        workerId: 'a',
        revoke: [],
        assign: [
          { partition: 0, epoch: 1, from: null },
          { partition: 1, epoch: 1, from: null },
        ],
      },
    ])
    const none = computeAssignment(a, [])
    const d = diffAssignments(a, none)
    expect(d.workers).toEqual([
      {
        workerId: 'a',
        revoke: [
          { partition: 0, epoch: 1 },
          { partition: 1, epoch: 1 },
        ],
        assign: [],
      },
    ])
    expect(d.moves.map((m) => m.to)).toEqual([null, null])
  })

  it('rejects assignments of different clusters or going back in time', () => {
    const a = computeAssignment(emptyAssignment(4), ws('a'))
    expect(() => diffAssignments(a, emptyAssignment(8))).toThrow(InvalidOptionError)
    expect(() => diffAssignments(a, emptyAssignment(4))).toThrow(
      'next.epoch must be >= previous.epoch (1) (got 0)',
    )
  })
})

describe('routingTable and partitionsByWorker', () => {
  it('maps each partition to its owner and fencing epoch', () => {
    const a = computeAssignment(emptyAssignment(4), ws('a', 'b'))
    const b = computeAssignment(a, ws('a', 'b', 'c', 'd'))
    const table = routingTable(b)
    expect(table).toEqual({
      epoch: 2,
      partitions: 4,
      routes: [
        { workerId: 'a', epoch: 1 },
        { workerId: 'c', epoch: 2 },
        { workerId: 'b', epoch: 1 },
        { workerId: 'd', epoch: 2 },
      ],
    })
    expect(routingTable(emptyAssignment(2)).routes).toEqual([null, null])
    expect([...partitionsByWorker(b)]).toEqual([
      ['a', [0]],
      ['b', [2]],
      ['c', [1]],
      ['d', [3]],
    ])
  })
})
