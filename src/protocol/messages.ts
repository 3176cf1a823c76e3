/**
 * The Shoal message model (contract). Five kinds of message travel inside one versioned
 * envelope. Event payloads stay opaque msgpackr bytes so the envelope layer never builds an
 * object per event.
 */
import type { SerializedError } from '../errors.ts'

/**
 * The protocol versions this build speaks, newest first. Version 2 adds the event ops
 * `batches` and `acks` (many partitions' batches, or acks, in one message); a version-1 peer
 * is sent one message per batch and per ack, as before.
 */
export const PROTOCOL_VERSION = 2
export const SUPPORTED_VERSIONS: readonly number[] = [2, 1]
/** The first version with `batches` and `acks`. */
export const BUNDLES_SINCE_VERSION = 2
/** At most this many batches (or acks) in one `batches` (`acks`) message. */
export const MAX_BUNDLE = 4096

export type Role = 'coordinator' | 'worker' | 'client'
export const ROLES: readonly Role[] = ['coordinator', 'worker', 'client']

// ---------------------------------------------------------------------------------------------
// Event: batches of events of one partition, and their acknowledgements.

export interface EventBatchBody {
  op: 'batch'
  /** Key group (partition) all events in the batch hash to. */
  partition: number
  /** Assignment epoch the sender routed by; 0 when it routed without a table. */
  epoch: number
  /** Producer identity and per-(producer, partition) batch sequence: duplicates are dropped by these. */
  producerId: string
  sequence: number
  /**
   * Sources whose batches may be re-formed on re-delivery (e.g. Redis Streams entries) number
   * every event: `firstSequence` is the first event's, `sequence` the last's. A worker refuses a
   * batch that overlaps what it already applied for the producer (firstSequence <= last <
   * sequence) by applying only the events above it (eventSequences says which). Absent: the
   * batch is one unit (`sequence` only).
   */
  firstSequence?: number | undefined
  /** With firstSequence: every event's sequence, increasing (so an overlap can be trimmed). */
  eventSequences?: number[] | undefined
  /** Number of events encoded in `payload`. */
  count: number
  /** msgpackr bytes (records on) of an array of events. */
  payload: Uint8Array
}

export interface EventAckBody {
  op: 'ack'
  partition: number
  producerId: string
  sequence: number
  /** false when the batch was refused; `error` says why (e.g. not the owner: re-route). */
  ok: boolean
  error?: SerializedError | undefined
}

/**
 * Version 2: the batches of one round to one worker (one per partition, each as it would travel
 * alone), in one message. Each is handled and acknowledged as if it had come on its own; the
 * only gain is one message, one decode and one wake-up for all of them.
 */
export interface EventBatchesBody {
  op: 'batches'
  batches: EventBatchBody[]
}

/** Version 2: acks of several batches, in one message (the order carries no meaning). */
export interface EventAcksBody {
  op: 'acks'
  acks: EventAckBody[]
}

export type EventBody = EventBatchBody | EventAckBody | EventBatchesBody | EventAcksBody

// ---------------------------------------------------------------------------------------------
// State: queries, and state transfer / restore.

export interface StateBody {
  op: 'get' | 'dump' | 'result' | 'chunk' | 'end' | 'error'
  key?: string | undefined
  partition?: number | undefined
  /** msgpackr bytes of a value or of an array of [key, value] entries. */
  data?: Uint8Array | undefined
  found?: boolean | undefined
  error?: SerializedError | undefined
}

// ---------------------------------------------------------------------------------------------
// Control: handshake, membership, assignment, lifecycle and errors.

export interface HelloBody {
  op: 'hello'
  /** Versions the dialer speaks; the listener picks the highest it also speaks. */
  versions: number[]
  nodeId: string
  role: Role
  token?: string | undefined
}

export interface WelcomeBody {
  op: 'welcome'
  version: number
  nodeId: string
  role: Role
}

export interface ControlErrorBody {
  op: 'error'
  code: string
  message: string
  /** When true the sender closes the connection after this message. */
  fatal: boolean
}

export interface ControlCommandBody {
  op:
    | 'join'
    | 'joined'
    | 'leave'
    | 'assign'
    | 'revoke'
    | 'revoked'
    | 'pause'
    | 'resume'
    | 'drain'
    | 'drained'
    | 'shutdown'
    | 'routing'
    | 'fenced'
    | 'goaway'
    | 'assigned'
    | 'status'
    | 'subscribe'
    | 'savepoint'
  /** Op-specific fields; each op's owner validates them. */
  [field: string]: unknown
}

export type ControlBody = HelloBody | WelcomeBody | ControlErrorBody | ControlCommandBody

// ---------------------------------------------------------------------------------------------
// Heartbeat: liveness plus load.

export interface HeartbeatBody {
  /** Monotonic per-sender heartbeat counter. */
  n: number
  /** Latest assignment epoch the sender knows. */
  epoch: number
  load?: HeartbeatLoad | undefined
}

export interface HeartbeatLoad {
  queueDepth: number
  inFlight: number
  eventsPerSec: number
  rssBytes: number
  lag: number
  /** Events acknowledged (applied, and logged when durable) per second. */
  ackedPerSec?: number | undefined
  /** Share of the last second (0..1) the data plane spent not reading, waiting for room. */
  backpressure?: number | undefined
}

// ---------------------------------------------------------------------------------------------
// Checkpoint: trigger, ack, complete, abort.

export interface CheckpointBody {
  op: 'trigger' | 'ack' | 'complete' | 'abort'
  checkpointId: number
  partitions?: number[] | undefined
  error?: SerializedError | undefined
  [field: string]: unknown
}

// ---------------------------------------------------------------------------------------------
// The envelope.

export interface Header {
  /** Protocol version of this envelope. */
  v: number
  /** Sender node id. */
  from: string
  /** Per-connection send sequence, assigned by the transport. */
  seq: number
  /** Sender's wall clock in ms; informational only (never compared across hosts). */
  ts: number
  /** Correlates a reply with its request. */
  corr?: number | undefined
}

export type Message =
  | { kind: 'event'; body: EventBody }
  | { kind: 'state'; body: StateBody }
  | { kind: 'control'; body: ControlBody }
  | { kind: 'heartbeat'; body: HeartbeatBody }
  | { kind: 'checkpoint'; body: CheckpointBody }

export type MessageKind = Message['kind']
export type Envelope = Header & Message

/** Wire codes of the kinds. Never renumber: they are part of the protocol. */
export const KIND_CODES: Readonly<Record<MessageKind, number>> = {
  event: 1,
  state: 2,
  control: 3,
  heartbeat: 4,
  checkpoint: 5,
}
export const KINDS_BY_CODE: readonly (MessageKind | undefined)[] = [
  undefined,
  'event',
  'state',
  'control',
  'heartbeat',
  'checkpoint',
]
export const MESSAGE_KINDS: readonly MessageKind[] = ['event', 'state', 'control', 'heartbeat', 'checkpoint']

export const CONTROL_COMMAND_OPS: ReadonlySet<string> = new Set([
  'join',
  'joined',
  'leave',
  'assign',
  'revoke',
  'revoked',
  'pause',
  'resume',
  'drain',
  'drained',
  'shutdown',
  'routing',
  'fenced',
  'goaway',
  'assigned',
  'status',
  'subscribe',
  'savepoint',
])
export const STATE_OPS: ReadonlySet<string> = new Set(['get', 'dump', 'result', 'chunk', 'end', 'error'])
export const CHECKPOINT_OPS: ReadonlySet<string> = new Set(['trigger', 'ack', 'complete', 'abort'])
