/**
 * Sticky, capacity-weighted assignment of key groups (partitions) to workers, with minimal
 * movement and per-partition fencing epochs. Pure functions over plain data: the coordinator
 * persists the {@link Assignment}, calls {@link computeAssignment} whenever membership changes,
 * and drives the revoke-before-assign protocol from {@link diffAssignments}.
 *
 * Algorithm (docs/partitioning.md has the rationale):
 *
 * 1. Live workers are sorted by id (UTF-16 code-unit order, never locale order). Each worker `i`
 *    with capacity `c_i` has the fair share `s_i = P * c_i / C` (C = total capacity) and may hold
 *    `floor(s_i)` or `ceil(s_i)` partitions. Exactly `R = P - sum floor(s_i)` workers get the
 *    `+1`; they are chosen to minimise movement: first workers already holding at least `ceil(s_i)`
 *    (giving them the extra saves a move), then the larger fractional part of `s_i`, then the
 *    smaller id. With equal capacities every worker holds `floor(P/N)` or `ceil(P/N)`.
 * 2. Keep: a live owner keeps its partitions up to its target, lowest partition numbers first.
 * 3. Free: partitions of dead or departed owners, unowned partitions, and the surplus of workers
 *    above their target, in ascending partition order.
 * 4. Fill: workers below their target, in id order, take the next free partitions until full.
 *
 * This moves the minimum possible number of partitions for the given targets: every orphan must
 * move, and a worker sheds only what exceeds its target. From a balanced assignment with equal
 * capacities, a leave moves exactly the departed worker's partitions, and a join moves exactly
 * `floor(P/N')` or `ceil(P/N')` partitions, all to the new worker, taken from the most loaded.
 *
 * Epochs: the assignment carries a cluster epoch, the highest epoch ever issued. A computation
 * that changes any owner issues exactly one new epoch, `previous.epoch + 1`, and stamps it on
 * every partition whose owner changed (including a change to `null`); partitions that stay keep
 * their epoch. A partition's epoch is therefore strictly greater than every epoch it, or any
 * other partition, ever had before, which is what makes it a fencing token.
 */
import { InvalidOptionError } from '../errors.ts'
import { DEFAULT_PARTITIONS, validatePartitions } from '../protocol/partition.ts'

/** Largest accepted worker capacity (threads). Keeps `partitions * capacity` exact. */
export const MAX_WORKER_CAPACITY = 65536

/** A live worker as seen by the assignment. */
export interface WorkerSpec {
  /** Unique, non-empty id. Ties are broken by id in code-unit order. */
  readonly id: string
  /**
   * Relative capacity, normally the worker's thread count: shares are proportional to it.
   * An integer in [1, {@link MAX_WORKER_CAPACITY}].
   * @default 1
   */
  readonly capacity?: number | undefined
}

/** Who owns each key group, and since which epoch. Plain data: store it as is. */
export interface Assignment {
  /** Number of key groups; fixed when the cluster is created. */
  readonly partitions: number
  /** Cluster epoch: the highest epoch ever issued (0 for a fresh cluster). Never decreases. */
  readonly epoch: number
  /** `owners[p]`: id of the worker owning partition `p`, or null while no worker is live. */
  readonly owners: readonly (string | null)[]
  /** `epochs[p]`: the epoch `p` was given to its current owner at (its fencing token); `<= epoch`. */
  readonly epochs: readonly number[]
}

/** One partition changing owner. */
export interface PartitionMove {
  readonly partition: number
  /** Previous owner (null when the partition was unowned). */
  readonly from: string | null
  /** Epoch the previous owner held the partition at. */
  readonly fromEpoch: number
  /** New owner (null when no worker is live). */
  readonly to: string | null
  /** The new fencing epoch; greater than every epoch issued before. */
  readonly toEpoch: number
}

/** A partition a worker must stop serving and flush; `epoch` is the one it held. */
export interface RevokeEntry {
  readonly partition: number
  readonly epoch: number
}

/**
 * A partition a worker must take over at `epoch`. `from` is the previous owner: the coordinator
 * sends this assign only after `from` acknowledged the matching revoke, or was declared dead,
 * or is null.
 */
export interface AssignEntry {
  readonly partition: number
  readonly epoch: number
  readonly from: string | null
}

/** What changes for one worker. Lists are in ascending partition order. */
export interface WorkerChanges {
  readonly workerId: string
  readonly revoke: readonly RevokeEntry[]
  readonly assign: readonly AssignEntry[]
}

/** The difference between two assignments, shaped for revoke-before-assign. */
export interface AssignmentDiff {
  /** Cluster epoch before and after. */
  readonly fromEpoch: number
  readonly toEpoch: number
  /** Every partition whose owner changed, in ascending partition order. */
  readonly moves: readonly PartitionMove[]
  /** Per worker (only those with changes), sorted by id: partitions to revoke, then to assign. */
  readonly workers: readonly WorkerChanges[]
}

/** Where to send events of one partition, and the epoch to stamp on them. */
export interface Route {
  readonly workerId: string
  readonly epoch: number
}

/** The routing table clients use: `routes[p]` is null while partition `p` has no owner. */
export interface RoutingTable {
  readonly epoch: number
  readonly partitions: number
  readonly routes: readonly (Route | null)[]
}

function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'object' && value !== null) return Array.isArray(value) ? 'an array' : 'an object'
  return String(value)
}

function invalid(option: string, message: string): InvalidOptionError {
  return new InvalidOptionError(message, { data: { option } })
}

/** A fresh cluster's assignment: every partition unowned at epoch 0. */
/**
 * No owners yet. `epoch`: where epochs start; a coordinator that restarts over existing state
 * starts above every epoch already stored, so the fencing tokens it hands out are never stale.
 */
export function emptyAssignment(partitions: number = DEFAULT_PARTITIONS, epoch = 0): Assignment {
  validatePartitions(partitions)
  return freeze(
    partitions,
    epoch,
    new Array<string | null>(partitions).fill(null),
    new Array<number>(partitions).fill(0),
  )
}

function freeze(partitions: number, epoch: number, owners: (string | null)[], epochs: number[]): Assignment {
  return Object.freeze({ partitions, epoch, owners: Object.freeze(owners), epochs: Object.freeze(epochs) })
}

/**
 * Check that `a` is a well-formed assignment (it may come from storage or the wire). Throws
 * InvalidOptionError naming `name` and the offending field.
 */
export function validateAssignment(a: unknown, name = 'assignment'): Assignment {
  if (typeof a !== 'object' || a === null) {
    throw invalid(name, `${name} must be an object (got ${show(a)})`)
  }
  const { partitions, epoch, owners, epochs } = a as Record<string, unknown>
  validatePartitions(partitions, `${name}.partitions`)
  const p = partitions as number
  if (typeof epoch !== 'number' || !Number.isSafeInteger(epoch) || epoch < 0) {
    throw invalid(`${name}.epoch`, `${name}.epoch must be a non-negative safe integer (got ${show(epoch)})`)
  }
  if (!Array.isArray(owners) || owners.length !== p) {
    throw invalid(
      `${name}.owners`,
      `${name}.owners must be an array of ${p} entries (got ${Array.isArray(owners) ? `${owners.length} entries` : show(owners)})`,
    )
  }
  if (!Array.isArray(epochs) || epochs.length !== p) {
    throw invalid(
      `${name}.epochs`,
      `${name}.epochs must be an array of ${p} entries (got ${Array.isArray(epochs) ? `${epochs.length} entries` : show(epochs)})`,
    )
  }
  for (let i = 0; i < p; i++) {
    const o: unknown = owners[i]
    if (o !== null && (typeof o !== 'string' || o === '')) {
      throw invalid(
        `${name}.owners`,
        `${name}.owners[${i}] must be a non-empty string or null (got ${show(o)})`,
      )
    }
    const e: unknown = epochs[i]
    if (typeof e !== 'number' || !Number.isInteger(e) || e < 0 || e > epoch) {
      throw invalid(
        `${name}.epochs`,
        `${name}.epochs[${i}] must be an integer in [0, ${name}.epoch = ${epoch}] (got ${show(e)})`,
      )
    }
  }
  return a as Assignment
}

interface LiveWorker {
  readonly id: string
  readonly capacity: number
}

/** Validate the workers and return them sorted by id. */
function normalizeWorkers(workers: readonly WorkerSpec[]): LiveWorker[] {
  if (!Array.isArray(workers)) throw invalid('workers', `workers must be an array (got ${show(workers)})`)
  const seen = new Map<string, number>()
  const live: LiveWorker[] = []
  for (let i = 0; i < workers.length; i++) {
    const w: unknown = workers[i]
    if (typeof w !== 'object' || w === null) {
      throw invalid('workers', `workers[${i}] must be an object (got ${show(w)})`)
    }
    const { id, capacity } = w as Record<string, unknown>
    if (typeof id !== 'string' || id === '') {
      throw invalid('workers', `workers[${i}].id must be a non-empty string (got ${show(id)})`)
    }
    const c = capacity ?? 1
    if (typeof c !== 'number' || !Number.isInteger(c) || c < 1 || c > MAX_WORKER_CAPACITY) {
      throw invalid(
        'workers',
        `workers[${i}].capacity must be an integer in [1, ${MAX_WORKER_CAPACITY}] (got ${show(capacity)})`,
      )
    }
    const first = seen.get(id)
    if (first !== undefined) {
      throw invalid('workers', `workers[${i}].id ${show(id)} duplicates workers[${first}].id`)
    }
    seen.set(id, i)
    live.push({ id, capacity: c })
  }
  return live.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
}

/**
 * Target partition counts (parallel to `live`): floor or ceil of each capacity-weighted share,
 * summing to `partitions`, with the `+1`s placed where they save a move. `held[i]` is how many
 * partitions worker `i` owns now.
 */
function computeTargets(live: readonly LiveWorker[], held: readonly number[], partitions: number): number[] {
  let total = 0
  for (const w of live) total += w.capacity
  const targets: number[] = []
  const remainders: number[] = []
  let assigned = 0
  for (const w of live) {
    // Exact integer arithmetic: partitions * capacity <= 2^32.
    const num = partitions * w.capacity
    const rem = num % total
    const floor = (num - rem) / total
    targets.push(floor)
    remainders.push(rem)
    assigned += floor
  }
  const extra = partitions - assigned
  if (extra > 0) {
    const candidates: number[] = []
    for (let i = 0; i < live.length; i++) if (remainders[i]! > 0) candidates.push(i)
    const saves = (i: number): number => (held[i]! > targets[i]! ? 1 : 0)
    candidates.sort((a, b) => saves(b) - saves(a) || remainders[b]! - remainders[a]! || a - b)
    for (let k = 0; k < extra; k++) targets[candidates[k]!]! += 1
  }
  return targets
}

/**
 * Compute the next assignment from `previous` for the live `workers` (order does not matter).
 * Pure and deterministic. Every partition is owned by exactly one live worker when any exists
 * (null otherwise); each worker holds the floor or ceil of its capacity-weighted share; a
 * partition whose owner is live stays unless that owner holds more than its share; changed
 * partitions get epoch `previous.epoch + 1`. Returns `previous` itself when nothing changes.
 *
 * `partitions` must equal `previous.partitions`: the key-group space is fixed for a cluster.
 * Throws InvalidOptionError for a malformed previous assignment, bad workers or partitions.
 */
export function computeAssignment(
  previous: Assignment,
  workers: readonly WorkerSpec[],
  partitions: number = previous.partitions,
): Assignment {
  validatePartitions(partitions)
  validateAssignment(previous, 'previous')
  if (previous.partitions !== partitions) {
    throw invalid(
      'partitions',
      `partitions must equal previous.partitions (${previous.partitions}): the key-group space is fixed for a cluster (got ${partitions})`,
    )
  }
  const live = normalizeWorkers(workers)
  const owners: (string | null)[] = new Array<string | null>(partitions).fill(null)

  if (live.length > 0) {
    const index = new Map<string, number>()
    for (let i = 0; i < live.length; i++) index.set(live[i]!.id, i)
    // Current owner index per partition (-1: unowned or owner gone) and holdings per worker.
    const ownerIndex = new Int32Array(partitions)
    const held = new Array<number>(live.length).fill(0)
    for (let p = 0; p < partitions; p++) {
      const o = previous.owners[p]
      const i = o === null || o === undefined ? undefined : index.get(o)
      ownerIndex[p] = i ?? -1
      if (i !== undefined) held[i]! += 1
    }
    const targets = computeTargets(live, held, partitions)
    // Keep up to the target, lowest partitions first; everything else is free.
    const kept = new Array<number>(live.length).fill(0)
    const free: number[] = []
    for (let p = 0; p < partitions; p++) {
      const i = ownerIndex[p]!
      if (i >= 0 && kept[i]! < targets[i]!) {
        kept[i]! += 1
        owners[p] = live[i]!.id
      } else {
        free.push(p)
      }
    }
    // Fill workers below target in id order from the ascending free list.
    let next = 0
    for (let i = 0; i < live.length; i++) {
      for (let need = targets[i]! - kept[i]!; need > 0; need--) owners[free[next++]!] = live[i]!.id
    }
  }

  const newEpoch = previous.epoch + 1
  const epochs = new Array<number>(partitions)
  let changed = false
  for (let p = 0; p < partitions; p++) {
    if (owners[p] === previous.owners[p]) {
      epochs[p] = previous.epochs[p]!
    } else {
      epochs[p] = newEpoch
      changed = true
    }
  }
  if (!changed) return previous
  return freeze(partitions, newEpoch, owners, epochs)
}

/**
 * The changes from `previous` to `next` (`next` normally computed from `previous`), grouped per
 * worker for the revoke-before-assign protocol:
 *
 * 1. Send every worker its `revoke` list; a live worker stops accepting events for those
 *    partitions, finishes in-flight batches, checkpoints, and acknowledges.
 * 2. Send each `assign` entry once its `from` worker acknowledged the revoke, was declared dead
 *    (its writes are fenced by the epoch anyway), or is null.
 *
 * Workers with no changes are omitted; a departed worker may appear with revokes only.
 */
export function diffAssignments(previous: Assignment, next: Assignment): AssignmentDiff {
  validateAssignment(previous, 'previous')
  validateAssignment(next, 'next')
  if (previous.partitions !== next.partitions) {
    throw invalid(
      'next.partitions',
      `next.partitions must equal previous.partitions (${previous.partitions}) (got ${next.partitions})`,
    )
  }
  if (next.epoch < previous.epoch) {
    throw invalid(
      'next.epoch',
      `next.epoch must be >= previous.epoch (${previous.epoch}) (got ${next.epoch})`,
    )
  }
  const moves: PartitionMove[] = []
  const perWorker = new Map<string, { revoke: RevokeEntry[]; assign: AssignEntry[] }>()
  const entry = (id: string): { revoke: RevokeEntry[]; assign: AssignEntry[] } => {
    let e = perWorker.get(id)
    if (e === undefined) perWorker.set(id, (e = { revoke: [], assign: [] }))
    return e
  }
  for (let p = 0; p < previous.partitions; p++) {
    const from = previous.owners[p] ?? null
    const to = next.owners[p] ?? null
    const fromEpoch = previous.epochs[p]!
    const toEpoch = next.epochs[p]!
    // An owner re-issued at a new epoch (same id) is a move too: it must re-fence.
    if (from === to && fromEpoch === toEpoch) continue
    moves.push(Object.freeze({ partition: p, from, fromEpoch, to, toEpoch }))
    if (from !== null) entry(from).revoke.push(Object.freeze({ partition: p, epoch: fromEpoch }))
    if (to !== null) entry(to).assign.push(Object.freeze({ partition: p, epoch: toEpoch, from }))
  }
  const ids = [...perWorker.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
  const workers = ids.map((workerId) => {
    const e = perWorker.get(workerId)!
    return Object.freeze({ workerId, revoke: Object.freeze(e.revoke), assign: Object.freeze(e.assign) })
  })
  return Object.freeze({
    fromEpoch: previous.epoch,
    toEpoch: next.epoch,
    moves: Object.freeze(moves),
    workers: Object.freeze(workers),
  })
}

/** The routing-table view of an assignment: partition -> `{ workerId, epoch }` or null. */
export function routingTable(assignment: Assignment): RoutingTable {
  const routes: (Route | null)[] = new Array<Route | null>(assignment.partitions)
  for (let p = 0; p < assignment.partitions; p++) {
    const workerId = assignment.owners[p] ?? null
    routes[p] = workerId === null ? null : Object.freeze({ workerId, epoch: assignment.epochs[p]! })
  }
  return Object.freeze({
    epoch: assignment.epoch,
    partitions: assignment.partitions,
    routes: Object.freeze(routes),
  })
}

/** Partitions per owner, each list ascending; owners sorted by id. Unowned partitions are left out. */
export function partitionsByWorker(assignment: Assignment): ReadonlyMap<string, readonly number[]> {
  const byWorker = new Map<string, number[]>()
  for (let p = 0; p < assignment.partitions; p++) {
    const o = assignment.owners[p]
    if (o === null || o === undefined) continue
    let list = byWorker.get(o)
    if (list === undefined) byWorker.set(o, (list = []))
    list.push(p)
  }
  return new Map([...byWorker.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
}
