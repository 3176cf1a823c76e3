/**
 * Cluster control commands: the fields each Control op carries between coordinator, workers
 * and clients, with validators. The envelope codec checks only that an op is known; these
 * parsers check its fields, so a handler never acts on a malformed command. Every parser throws
 * ProtocolError(BAD_MESSAGE) naming the op and field.
 *
 * Worker -> coordinator: join, assigned, revoked, leave.
 * Coordinator -> worker: joined, assign, revoke, fenced, pause, resume, drain, shutdown.
 * Client <-> coordinator: routing (request; reply and pushed updates), status (request; reply).
 */
import { ErrorCodes, ProtocolError } from '../errors.ts'
import type { ControlBody } from './messages.ts'

/** A partition held at an epoch (the fencing token it was assigned at). */
export interface OwnedPartition {
  partition: number
  epoch: number
}

export interface JoinFields {
  /** Unique member identity (POD_NAME or hostname plus a random instance id). */
  memberId: string
  /** host:port where clients reach this worker's data listener. */
  dataAddress: string
  /** host:port of this worker's HTTP health/metrics endpoint, when it has one. */
  httpAddress: string | null
  /** Relative capacity: the worker's thread count. */
  capacity: number
  /** Software version, informational. */
  version: string
  /** Highest cluster epoch this worker has seen (lets a restarted coordinator keep epochs monotonic). */
  epoch: number
  /** Partitions the worker holds right now (non-empty when it rejoins a restarted coordinator). */
  owned: OwnedPartition[]
  /**
   * The worker's job: the built-in name, or the job file's path and a content hash
   * (`/app/job.mjs sha256:0123456789abcdef`). Null: not reported (a worker older than the
   * field); the coordinator then accepts it without checking.
   */
  jobId: string | null
  /** Canonical redacted descriptions of the worker's --source URLs (connectors/url.ts describeSpec); null: not reported. */
  sources: string[] | null
  /** The same for its --sink URLs; null: not reported. */
  sinks: string[] | null
}

export interface JoinedFields {
  memberId: string
  partitions: number
  heartbeatIntervalMs: number
  heartbeatMisses: number
  epoch: number
  /** Of the partitions the join reported, those the worker still owns. It drops the rest. */
  kept: OwnedPartition[]
}

export interface AssignFields {
  epoch: number
  partitions: OwnedPartition[]
}

export interface FencedFields {
  epoch: number
  /** Partitions the worker must stop serving at once: they moved while it was unreachable. */
  partitions: number[]
  reason: string
}

export interface PartitionListFields {
  partitions: OwnedPartition[]
}

export interface PauseFields {
  /** Partitions to pause or resume; absent means all. */
  partitions: number[] | null
}

export interface RouteWire {
  workerId: string
  epoch: number
}

export interface RoutingFields {
  epoch: number
  partitions: number
  /** routes[p]: owner of partition p and its epoch, or null while unowned. */
  routes: (RouteWire | null)[]
  /** Data address of every worker named in routes. */
  addresses: Record<string, string>
  /** The coordinator is still rebuilding its assignment (after a restart or takeover). */
  recovering?: boolean
  /**
   * The leadership epoch (HA lease generation) of the coordinator that made this table; absent
   * without HA. Assignment epochs are per leader: a new leader rebuilds from what the workers
   * claimed and may number its table below what a deposed leader published (docs/cluster.md), so
   * a client orders tables by leader first, then by epoch.
   */
  leader?: number
}

function bad(op: string, field: string, expected: string, got: unknown): ProtocolError {
  const shown =
    typeof got === 'string' ? JSON.stringify(got.slice(0, 60)) : Array.isArray(got) ? 'an array' : typeof got
  return new ProtocolError(
    ErrorCodes.BAD_MESSAGE,
    `control ${op}: ${field} must be ${expected}, got ${shown}`,
    {
      data: { op, field },
    },
  )
}

function str(body: ControlBody, field: string, max = 512): string {
  const v = (body as Record<string, unknown>)[field]
  if (typeof v !== 'string' || v.length === 0 || v.length > max) {
    throw bad(body.op, field, `a non-empty string of at most ${max} characters`, v)
  }
  return v
}

function optStr(body: ControlBody, field: string, max = 512): string | null {
  const v = (body as Record<string, unknown>)[field]
  return v === null || v === undefined ? null : str(body, field, max)
}

function int(body: ControlBody, field: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = (body as Record<string, unknown>)[field]
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw bad(body.op, field, `an integer in [${min}, ${max}]`, v)
  }
  return v
}

function owned(body: ControlBody, field: string): OwnedPartition[] {
  const v = (body as Record<string, unknown>)[field]
  if (!Array.isArray(v) || v.length > 65536) throw bad(body.op, field, 'an array of {partition, epoch}', v)
  return v.map((e: unknown, i) => {
    const o = e as Record<string, unknown> | null
    if (
      typeof o !== 'object' ||
      o === null ||
      !Number.isInteger(o.partition) ||
      !Number.isInteger(o.epoch) ||
      (o.partition as number) < 0 ||
      (o.epoch as number) < 0
    ) {
      throw bad(body.op, `${field}[${i}]`, '{partition, epoch} with non-negative integers', e)
    }
    return { partition: o.partition as number, epoch: o.epoch as number }
  })
}

/** An optional array of strings (absent or null: null). */
function optStrs(body: ControlBody, field: string, max = 64, maxLength = 4096): string[] | null {
  const v = (body as Record<string, unknown>)[field]
  if (v === null || v === undefined) return null
  if (
    !Array.isArray(v) ||
    v.length > max ||
    !v.every((x) => typeof x === 'string' && x.length > 0 && x.length <= maxLength)
  ) {
    throw bad(body.op, field, `an array of at most ${max} non-empty strings`, v)
  }
  return v as string[]
}

function ints(body: ControlBody, field: string, nullable: boolean): number[] | null {
  const v = (body as Record<string, unknown>)[field]
  if (nullable && (v === null || v === undefined)) return null
  if (!Array.isArray(v) || v.length > 65536 || !v.every((x) => Number.isInteger(x) && (x as number) >= 0)) {
    throw bad(body.op, field, 'an array of non-negative integers', v)
  }
  return v as number[]
}

export function parseJoin(body: ControlBody): JoinFields {
  return {
    memberId: str(body, 'memberId', 253),
    dataAddress: str(body, 'dataAddress'),
    httpAddress: optStr(body, 'httpAddress'),
    capacity: int(body, 'capacity', 1, 65536),
    version: str(body, 'version', 64),
    epoch: int(body, 'epoch'),
    owned: owned(body, 'owned'),
    jobId: optStr(body, 'jobId', 4096),
    sources: optStrs(body, 'sources'),
    sinks: optStrs(body, 'sinks'),
  }
}

export function parseJoined(body: ControlBody): JoinedFields {
  return {
    memberId: str(body, 'memberId', 253),
    partitions: int(body, 'partitions', 1, 65536),
    heartbeatIntervalMs: int(body, 'heartbeatIntervalMs', 1),
    heartbeatMisses: int(body, 'heartbeatMisses', 1),
    epoch: int(body, 'epoch'),
    kept: owned(body, 'kept'),
  }
}

export function parseAssign(body: ControlBody): AssignFields {
  return { epoch: int(body, 'epoch'), partitions: owned(body, 'partitions') }
}

export function parsePartitionList(body: ControlBody): PartitionListFields {
  return { partitions: owned(body, 'partitions') }
}

export function parseFenced(body: ControlBody): FencedFields {
  return {
    epoch: int(body, 'epoch'),
    partitions: ints(body, 'partitions', false) ?? [],
    reason: str(body, 'reason', 1024),
  }
}

export function parsePause(body: ControlBody): PauseFields {
  return { partitions: ints(body, 'partitions', true) }
}

export function parseRouting(body: ControlBody): RoutingFields {
  const epoch = int(body, 'epoch')
  const partitions = int(body, 'partitions', 1, 65536)
  const routes = (body as Record<string, unknown>).routes
  if (!Array.isArray(routes) || routes.length !== partitions) {
    throw bad(body.op, 'routes', `an array of ${partitions} routes`, routes)
  }
  const addresses = (body as Record<string, unknown>).addresses
  if (typeof addresses !== 'object' || addresses === null || Array.isArray(addresses)) {
    throw bad(body.op, 'addresses', 'a map of worker id to address', addresses)
  }
  const out: (RouteWire | null)[] = routes.map((r: unknown, i) => {
    if (r === null || r === undefined) return null
    const o = r as Record<string, unknown>
    if (typeof o.workerId !== 'string' || !Number.isInteger(o.epoch)) {
      throw bad(body.op, `routes[${i}]`, '{workerId, epoch} or null', r)
    }
    if (typeof (addresses as Record<string, unknown>)[o.workerId] !== 'string') {
      throw bad(body.op, `addresses[${JSON.stringify(o.workerId)}]`, 'a host:port string', undefined)
    }
    return { workerId: o.workerId, epoch: o.epoch as number }
  })
  const recovering = (body as Record<string, unknown>).recovering
  if (recovering !== undefined && typeof recovering !== 'boolean') {
    throw bad(body.op, 'recovering', 'a boolean', recovering)
  }
  const leader = (body as Record<string, unknown>).leader
  if (leader !== undefined && (!Number.isSafeInteger(leader) || (leader as number) < 0)) {
    throw bad(body.op, 'leader', 'a non-negative integer', leader)
  }
  return {
    epoch,
    partitions,
    routes: out,
    addresses: addresses as Record<string, string>,
    ...(recovering === true ? { recovering } : {}),
    ...(leader === undefined || leader === 0 ? {} : { leader: leader as number }),
  }
}
