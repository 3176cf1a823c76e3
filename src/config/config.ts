/**
 * Node and CLI configuration: one typed, frozen object per command, resolved from
 *
 *   flags  >  environment (SHOAL_*)  >  config file (JSON)  >  defaults
 *
 * The first source that sets a field wins, and only the winning value is validated (an invalid
 * SHOAL_PARTITIONS overridden by --partitions is not an error). Every problem is collected and
 * thrown together as one {@link ConfigError} (code SHOAL_ERR_CONFIG_INVALID) whose message names
 * the flag, where the value came from and the value received:
 *
 *   --partitions (from SHOAL_PARTITIONS) must be an integer between 1 and 65536, got "abc"
 *
 * This module never reads `process.env` or `process.argv` itself: the CLI passes them in.
 *
 * Rules worth knowing:
 * - An empty environment variable counts as unset (compose's `${X:-}` yields ""), and
 *   environment variables of fields another command uses are ignored, so nodes can share env.
 * - The config file (`--config` / SHOAL_CONFIG) is a JSON object keyed by the field names below
 *   (`listen`, `heartbeatIntervalMs`, `tlsCert`, ...). Keys of fields another command uses are
 *   ignored, so one file can serve every node; unknown keys are errors. Relative paths in the
 *   file (job, TLS files, `file:` state) resolve against the file's directory; relative paths
 *   in flags and environment resolve against `cwd`.
 * - A flag that belongs to another command is an error naming the flag and where it applies.
 * - `--node-id` defaults to POD_NAME, else the host name; a worker appends `-` and 6 random hex
 *   digits (a new instance id per process), so replicas and restarts never share an identity.
 *   An explicit --node-id / SHOAL_NODE_ID is used as given.
 * - `--advertise` defaults to the listen address with a wildcard host (0.0.0.0, ::) replaced by
 *   the host name. Port 0 (an ephemeral listen port) means "the port actually bound": use
 *   {@link advertiseAddress} once listening.
 *
 * Defaults (see {@link CONFIG_FIELDS} for the full table):
 *
 * | field        | coordinator    | worker          | up              | client |
 * |--------------|----------------|-----------------|-----------------|--------|
 * | listen       | 0.0.0.0:7400   | 0.0.0.0:0       | 127.0.0.1:7400  |        |
 * | http         | 0.0.0.0:7401   | 0.0.0.0:0       | 127.0.0.1:7401  |        |
 * | threads      |                | CPUs            | CPUs / workers  |        |
 * | logLevel     | info           | info            | info            | warn   |
 *
 * Workers default to ephemeral ports for both listeners so any number of them can run on one
 * host; each prints the ports it bound, and containers set SHOAL_LISTEN / SHOAL_HTTP to fixed
 * ports (7410 / 7411 in compose and Kubernetes) for their probes. `shoal up` binds loopback: it
 * is a local development cluster. Its `threads` default splits the machine's CPUs between the
 * workers (at least 1 each) instead of giving every worker all of them.
 */
import { randomBytes } from 'node:crypto'
import { accessSync, constants as fsConstants, readFileSync, statSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { ConnectorUrlError, describeSpec, parseSinkUrl, parseSourceUrl } from '../connectors/url.ts'
import type { SinkSpec, SourceSpec } from '../connectors/spec.ts'
import { ErrorCodes, InvalidOptionError, ShoalError } from '../errors.ts'
import { DEFAULT_PARTITIONS, MAX_PARTITIONS } from '../protocol/partition.ts'
import { formatHostPort, parseHostPort } from '../transport/address.ts'

// ---------------------------------------------------------------------------------------------
// Public types

/** The command a configuration is for. 'client' covers send, status and state. */
export type ConfigRole = 'coordinator' | 'worker' | 'up' | 'client'
export const CONFIG_ROLES: readonly ConfigRole[] = ['coordinator', 'worker', 'up', 'client']

/** Where a field's value came from. */
export type ConfigSource = 'flag' | 'env' | 'file' | 'default'

export type TransportKind = 'tcp' | 'grpc'
export const TRANSPORT_KINDS: readonly TransportKind[] = ['tcp', 'grpc']

/** pino's levels, plus 'silent'. */
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

/** Built-in job names accepted by --job (anything else is a path to a job module). */
export const BUILTIN_JOBS: readonly string[] = ['count']

/**
 * What a worker with durable state (file: or redis://) does with an accepted batch: `log`
 * appends it to the partition's replay log before applying and acking it (nothing acked is
 * lost); `none` applies it without a log (checkpoints only: a crash loses what was acked since
 * the last checkpoint).
 */
export type Durability = 'log' | 'none'
export const DURABILITY_KINDS: readonly Durability[] = ['log', 'none']

export interface HostPort {
  readonly host: string
  /** 0 on a listen address: pick a free port. */
  readonly port: number
}

export type RedisMode = 'standalone' | 'sentinel' | 'cluster'

/**
 * A parsed --state URL:
 * - `memory:` in-process (nothing survives the process; fine for one process and tests)
 * - `file:DIR` (also `file:///abs/dir`): snapshots under DIR, an absolute path after loading
 * - `redis://[user:pass@]host[:6379][/db]`, `rediss://...` (TLS)
 * - `redis+sentinel://[user:pass@]host[:26379][,host:port...]/MASTER[/db]` (also `rediss+sentinel`)
 * - `redis+cluster://[user:pass@]host[:6379][,host:port...]` (also `rediss+cluster`)
 * Query parameters of Redis URLs are kept in `params` for the backend to interpret.
 */
export type StateConfig =
  | { readonly kind: 'memory'; readonly url: 'memory:' }
  | { readonly kind: 'file'; readonly url: string; readonly dir: string }
  | RedisStateConfig

export interface RedisStateConfig {
  readonly kind: 'redis'
  /** The URL as given (it may hold a password: log {@link redactUrl}(url), never url). */
  readonly url: string
  readonly mode: RedisMode
  readonly tls: boolean
  /** The server (standalone), the seed nodes (cluster) or the sentinels (sentinel). */
  readonly nodes: readonly HostPort[]
  readonly username: string | undefined
  readonly password: string | undefined
  /** Database index; always 0 on a cluster. */
  readonly db: number
  /** Sentinel only: the monitored master's name. */
  readonly masterName: string | undefined
  readonly params: Readonly<Record<string, string>>
}

/** TLS file paths (absolute after loading). Reading them is the transport's business. */
export interface TlsFilesConfig {
  readonly cert: string | undefined
  readonly key: string | undefined
  readonly ca: string | undefined
  /** Listening side: require and verify client certificates (mTLS). Needs cert, key and ca. */
  readonly requireClientCert: boolean
}

interface BaseConfig {
  readonly transport: TransportKind
  /** Cluster token; never log it (see {@link describeConfig}). */
  readonly token: string | undefined
  /** undefined when no TLS flag was set. */
  readonly tls: TlsFilesConfig | undefined
  readonly logLevel: LogLevel
  /** Absolute path of the config file read, if any. */
  readonly configFile: string | undefined
  /**
   * --help / -h was given: print usage and exit. loadConfig then does not throw, and fields
   * with problems hold their defaults, so use nothing else (see also {@link wantsHelp}).
   */
  readonly help: boolean
  /** Arguments that are not flags, in order (only client commands accept them). */
  readonly positionals: readonly string[]
  /**
   * Where each field's value came from. (Named `origins`, not `sources`: `sources` is the
   * --source URLs of workers.)
   */
  readonly origins: Readonly<Partial<Record<ConfigKey, ConfigSource>>>
}

interface NodeConfigBase extends BaseConfig {
  /** Unique identity of this node in the cluster. */
  readonly nodeId: string
  /** Transport listener. */
  readonly listen: HostPort
  /** HTTP listener: /healthz, /readyz, /metrics, /status. */
  readonly http: HostPort
  /** What others dial to reach this node; port 0 = the bound port ({@link advertiseAddress}). */
  readonly advertise: HostPort
  readonly state: StateConfig
  readonly heartbeatIntervalMs: number
  readonly heartbeatMisses: number
  readonly drainTimeoutMs: number
  /** With a token: /metrics requires it too (it is open by default, for scrapers). */
  readonly metricsAuth: boolean
}

export interface CoordinatorConfig extends NodeConfigBase {
  readonly role: 'coordinator'
  readonly partitions: number
  readonly checkpointIntervalMs: number
  /**
   * After a restart or takeover: how long to wait for workers to rejoin and report what they
   * own before partitions nobody claimed are assigned afresh (ends early once every partition
   * is claimed). Default max(heartbeat interval x misses, 2000); x4 after an HA takeover.
   */
  readonly recoveryWindowMs: number | undefined
}

export interface WorkerConfig extends NodeConfigBase {
  readonly role: 'worker'
  /** The coordinator's transport address (the first of `coordinators`). */
  readonly coordinator: HostPort
  /** Every coordinator replica (`--coordinator a:7400,b:7400`): the worker follows the leader. */
  readonly coordinators: readonly HostPort[]
  /** A built-in job name or an absolute path to a job module. */
  readonly job: string
  readonly threads: number
  /** With file: or redis:// state: replay log on (`log`) or off (`none`). */
  readonly durability: Durability
  /** Redis: acknowledge a batch only once this many replicas have it (WAIT). 0: no WAIT. */
  readonly durabilityReplicas: number
  /** Redis >= 7.2: acknowledge a batch only once the primary's AOF is fsynced (WAITAOF). */
  readonly durabilityAof: boolean
  /** How long WAIT/WAITAOF may take before the batch is refused (retryable). */
  readonly durabilityTimeoutMs: number
  /** Parsed --source URLs (SHOAL_SOURCE), in order; empty: events come from clients only. */
  readonly sources: readonly SourceSpec[]
  /** Parsed --sink URLs (SHOAL_SINK), in order. */
  readonly sinks: readonly SinkSpec[]
}

export interface UpConfig extends BaseConfig {
  readonly role: 'up'
  readonly workers: number
  /** The coordinator's transport listener. */
  readonly listen: HostPort
  /** The coordinator's HTTP listener. */
  readonly http: HostPort
  readonly state: StateConfig
  readonly partitions: number
  readonly job: string
  /** Threads per worker. */
  readonly threads: number
  readonly heartbeatIntervalMs: number
  readonly heartbeatMisses: number
  readonly drainTimeoutMs: number
  readonly checkpointIntervalMs: number
  /** Feed the cluster demo events. */
  readonly demo: boolean
  /** Parsed --source URLs, given to every worker. */
  readonly sources: readonly SourceSpec[]
  /** Parsed --sink URLs, given to every worker. */
  readonly sinks: readonly SinkSpec[]
}

export interface ClientConfig extends BaseConfig {
  readonly role: 'client'
  readonly coordinator: HostPort
  /** Every coordinator replica (`--coordinator a:7400,b:7400`). */
  readonly coordinators: readonly HostPort[]
  /** Print JSON instead of text. */
  readonly json: boolean
  /** `shoal send`: the event field holding the routing key. */
  readonly keyField: string
  /** `shoal send`: stop at the first malformed line. */
  readonly strict: boolean
}

export interface ConfigByRole {
  coordinator: CoordinatorConfig
  worker: WorkerConfig
  up: UpConfig
  client: ClientConfig
}
export type ShoalConfig = ConfigByRole[ConfigRole]

export interface LoadConfigOptions {
  /** Arguments after the command name (e.g. `process.argv.slice(3)`). */
  argv: readonly string[]
  /** Usually `process.env`. Only SHOAL_* variables and POD_NAME are read. */
  env: Readonly<Record<string, string | undefined>>
  /** Base for relative paths given by flags and environment. */
  cwd: string
  /** @default os.hostname() */
  hostname?: string
  /** @default os.availableParallelism() */
  availableParallelism?: number
}

export interface ConfigProblem {
  /** The flag, e.g. '--partitions' (or the config file for file-level problems). */
  readonly field: string
  readonly source: ConfigSource | 'argv'
  readonly message: string
}

/** All configuration problems at once; `problems` has one entry per problem. */
export class ConfigError extends ShoalError {
  readonly problems: readonly ConfigProblem[]
  constructor(role: ConfigRole, problems: readonly ConfigProblem[]) {
    const lines = problems.map((p) => p.message)
    const message =
      lines.length === 1
        ? lines[0]!
        : `${lines.length} configuration problems for ${ROLE_LABEL[role]}:\n  ${lines.join('\n  ')}`
    super(ErrorCodes.CONFIG_INVALID, message, { data: { role, problems: problems.map((p) => ({ ...p })) } })
    this.problems = problems
  }
}

// ---------------------------------------------------------------------------------------------
// The field table

/** 'list': a repeatable flag; its environment variable holds several values separated by spaces. */
type ValueType = 'string' | 'boolean' | 'list'

export interface ConfigFieldSpec {
  /** Flag name without dashes. */
  readonly flag: string
  /** Environment variable, or null (--help). */
  readonly env: string | null
  readonly type: ValueType
  /** Commands that accept the field. */
  readonly roles: readonly ConfigRole[]
  /** Settable from the config file. */
  readonly inFile: boolean
  /** For help text. */
  readonly description: string
  /** For help text. */
  readonly defaultText?: string
}

const ALL: readonly ConfigRole[] = CONFIG_ROLES
const NODES: readonly ConfigRole[] = ['coordinator', 'worker', 'up']
const SERVERS: readonly ConfigRole[] = ['coordinator', 'worker']

/**
 * Every field: its flag, environment variable, type and the commands that take it. The keys
 * are the config file's keys.
 */
export const CONFIG_FIELDS = Object.freeze({
  config: f('config', 'SHOAL_CONFIG', 'string', ALL, false, 'JSON config file'),
  listen: f('listen', 'SHOAL_LISTEN', 'string', NODES, true, 'transport listen address HOST:PORT'),
  http: f('http', 'SHOAL_HTTP', 'string', NODES, true, 'HTTP (health, metrics, status) address HOST:PORT'),
  transport: f('transport', 'SHOAL_TRANSPORT', 'string', ALL, true, 'tcp or grpc', 'tcp'),
  state: f('state', 'SHOAL_STATE', 'string', NODES, true, 'memory:, file:DIR, redis://...', 'memory:'),
  partitions: f(
    'partitions',
    'SHOAL_PARTITIONS',
    'string',
    ['coordinator', 'up'],
    true,
    'key groups (1..65536)',
    '256',
  ),
  coordinator: f(
    'coordinator',
    'SHOAL_COORDINATOR',
    'string',
    ['worker', 'client'],
    true,
    "the coordinator's HOST:PORT, or every replica's: HOST:PORT,HOST:PORT (required)",
  ),
  job: f('job', 'SHOAL_JOB', 'string', ['worker', 'up'], true, 'job module path or built-in name', 'count'),
  threads: f('threads', 'SHOAL_THREADS', 'string', ['worker', 'up'], true, 'processing threads', 'CPUs'),
  token: f('token', 'SHOAL_TOKEN', 'string', ALL, true, 'cluster token'),
  nodeId: f('node-id', 'SHOAL_NODE_ID', 'string', SERVERS, true, 'node identity', 'POD_NAME or host name'),
  advertise: f(
    'advertise',
    'SHOAL_ADVERTISE',
    'string',
    SERVERS,
    true,
    'address others dial (HOST[:PORT])',
    'from --listen',
  ),
  heartbeatIntervalMs: f(
    'heartbeat-interval',
    'SHOAL_HEARTBEAT_INTERVAL_MS',
    'string',
    NODES,
    true,
    'ms between heartbeats',
    '500',
  ),
  heartbeatMisses: f(
    'heartbeat-misses',
    'SHOAL_HEARTBEAT_MISSES',
    'string',
    NODES,
    true,
    'missed heartbeats before a node is dead',
    '3',
  ),
  drainTimeoutMs: f(
    'drain-timeout',
    'SHOAL_DRAIN_TIMEOUT_MS',
    'string',
    NODES,
    true,
    'ms to drain on SIGTERM (< 30000)',
    '20000',
  ),
  checkpointIntervalMs: f(
    'checkpoint-interval',
    'SHOAL_CHECKPOINT_INTERVAL_MS',
    'string',
    ['coordinator', 'up'],
    true,
    'ms between checkpoints',
    '5000',
  ),
  recoveryWindowMs: f(
    'recovery-window',
    'SHOAL_RECOVERY_WINDOW_MS',
    'string',
    ['coordinator'],
    true,
    'ms a restarted coordinator waits for workers to report their partitions',
    'max(2000, hb x misses)',
  ),
  durability: f(
    'durability',
    'SHOAL_DURABILITY',
    'string',
    ['worker'],
    true,
    'log|none: replay log of accepted batches (file:/redis:// state)',
    'log',
  ),
  durabilityReplicas: f(
    'durability-replicas',
    'SHOAL_DURABILITY_REPLICAS',
    'string',
    ['worker'],
    true,
    'redis: ack a batch once N replicas have it (WAIT)',
    '0',
  ),
  durabilityAof: f(
    'durability-aof',
    'SHOAL_DURABILITY_AOF',
    'boolean',
    ['worker'],
    true,
    'redis >= 7.2: ack a batch once the AOF is fsynced (WAITAOF)',
    'false',
  ),
  durabilityTimeoutMs: f(
    'durability-timeout',
    'SHOAL_DURABILITY_TIMEOUT_MS',
    'string',
    ['worker'],
    true,
    'ms WAIT/WAITAOF may take before the batch is refused',
    '1000',
  ),
  logLevel: f(
    'log-level',
    'SHOAL_LOG_LEVEL',
    'string',
    ALL,
    true,
    LOG_LEVELS.join('|'),
    'info (client: warn)',
  ),
  tlsCert: f('tls-cert', 'SHOAL_TLS_CERT', 'string', ALL, true, 'PEM certificate chain file'),
  tlsKey: f('tls-key', 'SHOAL_TLS_KEY', 'string', ALL, true, 'PEM private key file'),
  tlsCa: f('tls-ca', 'SHOAL_TLS_CA', 'string', ALL, true, 'PEM CA file to verify peers'),
  tlsRequireClientCert: f(
    'tls-require-client-cert',
    'SHOAL_TLS_REQUIRE_CLIENT_CERT',
    'boolean',
    NODES,
    true,
    'require client certificates (mTLS)',
    'false',
  ),
  metricsAuth: f(
    'metrics-auth',
    'SHOAL_METRICS_AUTH',
    'boolean',
    SERVERS,
    true,
    'with a token: require it for GET /metrics too',
    'false',
  ),
  sources: f(
    'source',
    'SHOAL_SOURCE',
    'list',
    ['worker', 'up'],
    true,
    'source URL, redis://HOST:PORT?stream=NAME&group=NAME (repeatable; env: separated by spaces)',
  ),
  sinks: f(
    'sink',
    'SHOAL_SINK',
    'list',
    ['worker', 'up'],
    true,
    'sink URL: redis://...?stream=NAME, postgres://...?table=NAME, file:PATH (repeatable)',
  ),
  workers: f('workers', 'SHOAL_WORKERS', 'string', ['up'], true, 'number of workers', '3'),
  demo: f('demo', 'SHOAL_DEMO', 'boolean', ['up'], true, 'feed demo events', 'false'),
  json: f('json', 'SHOAL_JSON', 'boolean', ['client'], true, 'print JSON', 'false'),
  keyField: f(
    'key-field',
    'SHOAL_KEY_FIELD',
    'string',
    ['client'],
    true,
    'event field holding the key',
    'key',
  ),
  strict: f(
    'strict',
    'SHOAL_STRICT',
    'boolean',
    ['client'],
    true,
    'stop at the first malformed line',
    'false',
  ),
  help: f('help', null, 'boolean', ALL, false, 'print usage'),
} satisfies Record<string, ConfigFieldSpec>)

export type ConfigKey = keyof typeof CONFIG_FIELDS

function f(
  flag: string,
  env: string | null,
  type: ValueType,
  roles: readonly ConfigRole[],
  inFile: boolean,
  description: string,
  defaultText?: string,
): ConfigFieldSpec {
  return Object.freeze({
    flag,
    env,
    type,
    roles,
    inFile,
    description,
    ...(defaultText !== undefined ? { defaultText } : {}),
  })
}

const FIELD_KEYS = Object.keys(CONFIG_FIELDS) as ConfigKey[]
const BY_FLAG = new Map<string, ConfigKey>(FIELD_KEYS.map((k) => [CONFIG_FIELDS[k].flag, k]))

const ROLE_LABEL: Record<ConfigRole, string> = {
  coordinator: 'shoal coordinator',
  worker: 'shoal worker',
  up: 'shoal up',
  client: 'client commands (send, status, state)',
}

/** Help lines for a command's flags: `--flag VALUE  SHOAL_ENV  description (default ...)`. */
export function formatFlagHelp(role: ConfigRole): string[] {
  const rows = FIELD_KEYS.map((k) => CONFIG_FIELDS[k])
    .filter((s) => s.roles.includes(role))
    .map(
      (s) =>
        [
          `--${s.flag}${s.type === 'string' ? ' VALUE' : s.type === 'list' ? ' URL' : ''}`,
          s.env ?? '',
          `${s.description}${s.defaultText !== undefined ? ` (default ${s.defaultText})` : ''}`,
        ] as const,
    )
  const w0 = Math.max(...rows.map((r) => r[0].length))
  const w1 = Math.max(...rows.map((r) => r[1].length))
  return rows.map(([a, b, c]) => `  ${a.padEnd(w0)}  ${b.padEnd(w1)}  ${c}`)
}

// ---------------------------------------------------------------------------------------------
// argv

export interface ArgvSpec {
  /** Flags (without dashes) that take a value. */
  readonly strings: ReadonlySet<string>
  /** Flags (without dashes) that are switches. */
  readonly booleans: ReadonlySet<string>
  /** Repeatable flags (without dashes) that take a value; their values collect in an array. */
  readonly lists?: ReadonlySet<string>
  /** Single-letter aliases, e.g. { h: 'help' }. */
  readonly short?: Readonly<Record<string, string>>
}

export interface ArgvProblem {
  /** The flag as written (`--foo`, `-x`). */
  readonly flag: string
  readonly kind: 'unknown' | 'missing-value' | 'bad-boolean'
  readonly message: string
}

export interface ParsedArgv {
  /** Last occurrence wins; a repeatable flag (ArgvSpec.lists) maps to all its values in order. */
  readonly flags: ReadonlyMap<string, string | boolean | readonly string[]>
  readonly positionals: readonly string[]
  readonly problems: readonly ArgvProblem[]
}

const TRUE_WORDS = new Set(['true', '1', 'yes', 'on'])
const FALSE_WORDS = new Set(['false', '0', 'no', 'off'])

/**
 * A small argv parser: `--flag value`, `--flag=value`, switches (`--json`, `--json=false`),
 * `-h`-style aliases, `--` to end flags; everything else is a positional (including `-`, for
 * stdin). A value flag takes the next argument unless there is none or it starts with `--`.
 * A switch never consumes the next argument. Problems are collected, never thrown.
 */
export function parseArgv(argv: readonly string[], spec: ArgvSpec): ParsedArgv {
  const flags = new Map<string, string | boolean | string[]>()
  const positionals: string[] = []
  const problems: ArgvProblem[] = []
  const set = (name: string, value: string): void => {
    if (spec.lists?.has(name) !== true) {
      flags.set(name, value)
      return
    }
    const list = flags.get(name)
    if (Array.isArray(list)) list.push(value)
    else flags.set(name, [value])
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1))
      break
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=')
      const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq)
      const inline = eq < 0 ? undefined : arg.slice(eq + 1)
      if (spec.strings.has(name) || spec.lists?.has(name) === true) {
        if (inline !== undefined) {
          set(name, inline)
        } else {
          const next = argv[i + 1]
          if (next === undefined || next.startsWith('--')) {
            problems.push({ flag: `--${name}`, kind: 'missing-value', message: `--${name} requires a value` })
          } else {
            set(name, next)
            i++
          }
        }
      } else if (spec.booleans.has(name)) {
        const b = inline === undefined ? true : parseBool(inline)
        if (b === undefined) {
          problems.push({
            flag: `--${name}`,
            kind: 'bad-boolean',
            message: `--${name} takes no value or one of true/false/1/0/yes/no, got ${show(inline)}`,
          })
        } else {
          flags.set(name, b)
        }
      } else {
        problems.push({ flag: `--${name}`, kind: 'unknown', message: `unknown flag --${name}` })
      }
      continue
    }
    if (arg.length > 1 && arg.startsWith('-')) {
      const long = spec.short?.[arg.slice(1)]
      if (long !== undefined && spec.booleans.has(long)) flags.set(long, true)
      else problems.push({ flag: arg, kind: 'unknown', message: `unknown flag ${arg}` })
      continue
    }
    positionals.push(arg)
  }
  return { flags, positionals, problems }
}

/** True when argv asks for help (`--help`, `-h`) before any `--`; check it before loadConfig. */
export function wantsHelp(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false
    if (a === '--help' || a === '-h' || a === '--help=true') return true
  }
  return false
}

function parseBool(text: string): boolean | undefined {
  const t = text.trim().toLowerCase()
  return TRUE_WORDS.has(t) ? true : FALSE_WORDS.has(t) ? false : undefined
}

// ---------------------------------------------------------------------------------------------
// Loading

/** Format a received value for a message; long values are cut. */
function show(value: unknown): string {
  if (typeof value === 'string') {
    const s = JSON.stringify(value.length > 200 ? `${value.slice(0, 200)}...` : value)
    return s
  }
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  if (typeof value === 'object') return 'an object'
  if (typeof value === 'number' || typeof value === 'boolean' || value === undefined) return String(value)
  return typeof value
}

interface Raw {
  readonly value: unknown
  readonly source: ConfigSource
  /** The flag and its origin, e.g. `--partitions (from SHOAL_PARTITIONS)`. */
  readonly label: string
  /** Base directory for relative paths in this value. */
  readonly baseDir: string
}

/** Defaults that do not depend on the machine (threads and node id do). */
export const CONFIG_DEFAULTS = Object.freeze({
  transport: 'tcp',
  state: 'memory:',
  partitions: DEFAULT_PARTITIONS,
  job: 'count',
  heartbeatIntervalMs: 500,
  heartbeatMisses: 3,
  drainTimeoutMs: 20_000,
  checkpointIntervalMs: 5000,
  durability: 'log',
  logLevel: 'info',
  clientLogLevel: 'warn',
  workers: 3,
  keyField: 'key',
  coordinatorListen: '0.0.0.0:7400',
  coordinatorHttp: '0.0.0.0:7401',
  workerListen: '0.0.0.0:0',
  workerHttp: '0.0.0.0:0',
  upListen: '127.0.0.1:7400',
  upHttp: '127.0.0.1:7401',
})

/** Bounds checked by loadConfig (inclusive). */
export const CONFIG_LIMITS = Object.freeze({
  partitions: [1, MAX_PARTITIONS],
  threads: [1, 1024],
  workers: [1, 64],
  heartbeatIntervalMs: [10, 60_000],
  heartbeatMisses: [1, 100],
  /** Under 30 s, Kubernetes' default terminationGracePeriodSeconds. */
  drainTimeoutMs: [1, 29_999],
  checkpointIntervalMs: [100, 3_600_000],
  recoveryWindowMs: [0, 600_000],
  durabilityReplicas: [0, 100],
  durabilityTimeoutMs: [1, 60_000],
} satisfies Record<string, readonly [number, number]>)

/**
 * Resolve the configuration of `role`. Throws {@link ConfigError} (SHOAL_ERR_CONFIG_INVALID)
 * listing every problem; the result is deeply frozen.
 */
export function loadConfig<R extends ConfigRole>(role: R, options: LoadConfigOptions): ConfigByRole[R] {
  if (!CONFIG_ROLES.includes(role)) {
    throw new InvalidOptionError(`role must be one of ${CONFIG_ROLES.join(', ')} (got ${show(role)})`)
  }
  const loader = new Loader(role, options)
  return loader.load() as ConfigByRole[R]
}

class Loader {
  readonly #role: ConfigRole
  readonly #o: LoadConfigOptions
  readonly #problems: ConfigProblem[] = []
  readonly #sources: Partial<Record<ConfigKey, ConfigSource>> = {}
  #flags: ReadonlyMap<string, string | boolean | readonly string[]> = new Map()
  #file: { path: string; dir: string; values: Record<string, unknown> } | undefined

  constructor(role: ConfigRole, o: LoadConfigOptions) {
    this.#role = role
    this.#o = o
  }

  load(): ShoalConfig {
    const role = this.#role
    const positionals = this.#parseArgv()
    const configFile = this.#loadFile()
    const help = this.#bool('help', false)
    delete this.#sources.help
    const D = CONFIG_DEFAULTS
    const transport = this.#oneOf('transport', TRANSPORT_KINDS, D.transport)
    const token = this.#token()
    const logLevel = this.#oneOf('logLevel', LOG_LEVELS, role === 'client' ? D.clientLogLevel : D.logLevel)
    const tls = this.#tls()
    // `origins` fills in as the fields below are resolved; it is frozen with the rest.
    const base = { transport, token, tls, logLevel, configFile, help, positionals, origins: this.#sources }

    let config: ShoalConfig
    switch (role) {
      case 'coordinator':
      case 'worker': {
        const isWorker = role === 'worker'
        const listen = this.#address('listen', isWorker ? D.workerListen : D.coordinatorListen)
        const http = this.#address('http', isWorker ? D.workerHttp : D.coordinatorHttp)
        this.#distinct(listen, http)
        const node = {
          nodeId: this.#nodeId(isWorker),
          listen: listen?.value ?? { host: '0.0.0.0', port: 0 },
          http: http?.value ?? { host: '0.0.0.0', port: 0 },
          advertise: this.#advertise(listen?.value),
          state: this.#state(),
          heartbeatIntervalMs: this.#int('heartbeatIntervalMs', D.heartbeatIntervalMs),
          heartbeatMisses: this.#int('heartbeatMisses', D.heartbeatMisses),
          drainTimeoutMs: this.#drainTimeout(),
          metricsAuth: this.#bool('metricsAuth', false),
        }
        if (isWorker) {
          config = {
            role: 'worker',
            ...base,
            ...node,
            ...this.#coordinators(),
            job: this.#job(),
            threads: this.#int('threads', this.#cpus()),
            durability: this.#oneOf('durability', DURABILITY_KINDS, D.durability),
            durabilityReplicas: this.#int('durabilityReplicas', 0),
            durabilityAof: this.#bool('durabilityAof', false),
            durabilityTimeoutMs: this.#int('durabilityTimeoutMs', 1000),
            sources: this.#urls('sources', parseSourceUrl),
            sinks: this.#urls('sinks', parseSinkUrl),
          }
        } else {
          config = {
            role: 'coordinator',
            ...base,
            ...node,
            partitions: this.#int('partitions', D.partitions),
            checkpointIntervalMs: this.#int('checkpointIntervalMs', D.checkpointIntervalMs),
            recoveryWindowMs:
              this.#raw('recoveryWindowMs') === undefined ? undefined : this.#int('recoveryWindowMs', 0),
          }
        }
        break
      }
      case 'up': {
        const listen = this.#address('listen', D.upListen)
        const http = this.#address('http', D.upHttp)
        this.#distinct(listen, http)
        const workers = this.#int('workers', D.workers)
        config = {
          role: 'up',
          ...base,
          workers,
          listen: listen?.value ?? { host: '127.0.0.1', port: 0 },
          http: http?.value ?? { host: '127.0.0.1', port: 0 },
          state: this.#state(),
          partitions: this.#int('partitions', D.partitions),
          job: this.#job(),
          threads: this.#int('threads', Math.max(1, Math.floor(this.#cpus() / workers))),
          heartbeatIntervalMs: this.#int('heartbeatIntervalMs', D.heartbeatIntervalMs),
          heartbeatMisses: this.#int('heartbeatMisses', D.heartbeatMisses),
          drainTimeoutMs: this.#drainTimeout(),
          checkpointIntervalMs: this.#int('checkpointIntervalMs', D.checkpointIntervalMs),
          demo: this.#bool('demo', false),
          sources: this.#urls('sources', parseSourceUrl),
          sinks: this.#urls('sinks', parseSinkUrl),
        }
        break
      }
      case 'client':
        config = {
          role: 'client',
          ...base,
          ...this.#coordinators(),
          json: this.#bool('json', false),
          keyField: this.#nonEmpty('keyField', D.keyField),
          strict: this.#bool('strict', false),
        }
        break
    }
    // With --help the caller prints usage and exits: don't fail on a missing --coordinator.
    if (this.#problems.length > 0 && !help) throw new ConfigError(role, this.#problems)
    return deepFreeze(config)
  }

  // --- sources -------------------------------------------------------------------------------

  #parseArgv(): string[] {
    const role = this.#role
    const strings = new Set<string>()
    const booleans = new Set<string>()
    const lists = new Set<string>()
    // Parse every known flag so one belonging to another command gets a precise message.
    for (const k of FIELD_KEYS) {
      const s: ConfigFieldSpec = CONFIG_FIELDS[k]
      ;(s.type === 'string' ? strings : s.type === 'list' ? lists : booleans).add(s.flag)
    }
    const parsed = parseArgv(this.#o.argv, { strings, booleans, lists, short: { h: 'help' } })
    for (const p of parsed.problems)
      this.#problem(p.flag, 'argv', p.kind === 'unknown' ? `${p.message} for ${ROLE_LABEL[role]}` : p.message)
    const flags = new Map<string, string | boolean | readonly string[]>()
    for (const [name, value] of parsed.flags) {
      const key = BY_FLAG.get(name)!
      const spec: ConfigFieldSpec = CONFIG_FIELDS[key]
      if (!spec.roles.includes(role)) {
        const where = spec.roles.map((r) => (r === 'client' ? 'send/status/state' : r)).join(', ')
        this.#problem(
          `--${name}`,
          'flag',
          `--${name} is not a flag of ${ROLE_LABEL[role]} (it applies to: ${where})`,
        )
        continue
      }
      flags.set(name, value)
    }
    this.#flags = flags
    if (role !== 'client' && parsed.positionals.length > 0) {
      this.#problem(
        'argv',
        'argv',
        `${ROLE_LABEL[role]} takes no arguments, got ${show(parsed.positionals[0])}`,
      )
    }
    return [...parsed.positionals]
  }

  #env(name: string): string | undefined {
    const v = this.#o.env[name]
    return v === undefined || v === '' ? undefined : v
  }

  #loadFile(): string | undefined {
    const raw = this.#raw('config')
    if (raw === undefined) return undefined
    if (typeof raw.value !== 'string' || raw.value.trim() === '') {
      this.#problem('--config', raw.source, `${raw.label} must be a file path, got ${show(raw.value)}`)
      return undefined
    }
    const file = path.resolve(this.#o.cwd, raw.value)
    let text: string
    try {
      text = readFileSync(file, 'utf8')
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error'
      const from = raw.source === 'flag' ? 'the command line' : 'SHOAL_CONFIG'
      this.#problem('--config', raw.source, `config file ${file} (from ${from}) cannot be read (${code})`)
      return file
    }
    let values: unknown
    try {
      values = JSON.parse(text)
    } catch (err) {
      this.#problem('--config', 'file', `config file ${file} is not valid JSON: ${(err as Error).message}`)
      return file
    }
    if (typeof values !== 'object' || values === null || Array.isArray(values)) {
      this.#problem('--config', 'file', `config file ${file} must hold a JSON object, got ${show(values)}`)
      return file
    }
    const obj = values as Record<string, unknown>
    for (const key of Object.keys(obj)) {
      if (key === '$schema') continue
      if (!Object.hasOwn(CONFIG_FIELDS, key) || !CONFIG_FIELDS[key as ConfigKey].inFile) {
        const known = FIELD_KEYS.filter((k) => CONFIG_FIELDS[k].inFile).join(', ')
        this.#problem(
          '--config',
          'file',
          `config file ${file} has an unknown key ${show(key)} (known keys: ${known})`,
        )
      }
    }
    this.#file = { path: file, dir: path.dirname(file), values: obj }
    return file
  }

  /** The winning raw value of a field, or undefined (use the default). */
  #raw(key: ConfigKey): Raw | undefined {
    const spec: ConfigFieldSpec = CONFIG_FIELDS[key]
    const flagName = `--${spec.flag}`
    const fromFlag = this.#flags.get(spec.flag)
    if (fromFlag !== undefined) {
      this.#sources[key] = 'flag'
      return {
        value: fromFlag,
        source: 'flag',
        label: `${flagName} (from the command line)`,
        baseDir: this.#o.cwd,
      }
    }
    if (spec.env !== null) {
      const fromEnv = this.#env(spec.env)
      if (fromEnv !== undefined) {
        this.#sources[key] = 'env'
        return {
          value: fromEnv,
          source: 'env',
          label: `${flagName} (from ${spec.env})`,
          baseDir: this.#o.cwd,
        }
      }
    }
    // JSON null counts as unset, so templated files can leave a field out.
    const file = spec.inFile ? this.#file : undefined
    const fileValue = file !== undefined && Object.hasOwn(file.values, key) ? file.values[key] : undefined
    if (file !== undefined && fileValue !== undefined && fileValue !== null) {
      this.#sources[key] = 'file'
      return {
        value: fileValue,
        source: 'file',
        label: `${flagName} (from ${file.path}, key ${show(key)})`,
        baseDir: file.dir,
      }
    }
    this.#sources[key] = 'default'
    return undefined
  }

  #problem(field: string, source: ConfigSource | 'argv', message: string): void {
    this.#problems.push({ field, source, message })
  }

  #bad(key: ConfigKey, raw: Raw, what: string, shown: string = show(raw.value)): void {
    this.#problem(`--${CONFIG_FIELDS[key].flag}`, raw.source, `${raw.label} ${what}, got ${shown}`)
  }

  // --- typed getters -------------------------------------------------------------------------

  #string(key: ConfigKey): { raw: Raw; value: string } | undefined {
    const raw = this.#raw(key)
    if (raw === undefined) return undefined
    if (typeof raw.value !== 'string') {
      this.#bad(key, raw, 'must be a string')
      return undefined
    }
    return { raw, value: raw.value }
  }

  #nonEmpty(key: ConfigKey, def: string): string {
    const s = this.#string(key)
    if (s === undefined) return def
    if (s.value.trim() === '') {
      this.#bad(key, s.raw, 'must not be empty')
      return def
    }
    return s.value
  }

  #bool(key: ConfigKey, def: boolean): boolean {
    const raw = this.#raw(key)
    if (raw === undefined) return def
    if (typeof raw.value === 'boolean') return raw.value
    const b = typeof raw.value === 'string' ? parseBool(raw.value) : undefined
    if (b === undefined) {
      this.#bad(key, raw, 'must be a boolean (true/false/1/0/yes/no)')
      return def
    }
    return b
  }

  #int(key: keyof typeof CONFIG_LIMITS, def: number, hint = ''): number {
    const [min, max] = CONFIG_LIMITS[key]
    const raw = this.#raw(key)
    if (raw === undefined) return def
    let n = NaN
    if (typeof raw.value === 'number') n = raw.value
    else if (typeof raw.value === 'string' && /^\s*\d{1,16}\s*$/.test(raw.value)) n = Number(raw.value)
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      this.#bad(key, raw, `must be an integer between ${min} and ${max}${hint}`)
      return def
    }
    return n
  }

  #oneOf<T extends string>(key: ConfigKey, allowed: readonly T[], def: T): T {
    const raw = this.#raw(key)
    if (raw === undefined) return def
    const v = typeof raw.value === 'string' ? raw.value.trim().toLowerCase() : undefined
    if (v === undefined || !(allowed as readonly string[]).includes(v)) {
      this.#bad(key, raw, `must be one of ${allowed.join(', ')}`)
      return def
    }
    return v as T
  }

  #drainTimeout(): number {
    return this.#int(
      'drainTimeoutMs',
      CONFIG_DEFAULTS.drainTimeoutMs,
      " (ms; under 30000 so a drain fits Kubernetes' default 30 s termination grace period)",
    )
  }

  #cpus(): number {
    return Math.max(1, this.#o.availableParallelism ?? os.availableParallelism())
  }

  #hostname(): string {
    return this.#o.hostname ?? os.hostname()
  }

  #token(): string | undefined {
    const raw = this.#raw('token')
    if (raw === undefined) return undefined
    // Never echo a token back: describe it instead.
    if (typeof raw.value !== 'string') {
      this.#bad('token', raw, 'must be a string', typeof raw.value)
      return undefined
    }
    if (raw.value.length === 0 || raw.value.length > 4096 || /\s/.test(raw.value)) {
      this.#bad(
        'token',
        raw,
        'must be 1 to 4096 characters without whitespace',
        `${raw.value.length} characters`,
      )
      return undefined
    }
    return raw.value
  }

  /** A listen address: HOST:PORT, [V6]:PORT, :PORT or PORT; port 0 = any free port. */
  #address(key: 'listen' | 'http', def: string): { value: HostPort; raw: Raw | undefined } | undefined {
    const s = this.#string(key)
    if (s === undefined) {
      return this.#sources[key] === 'default' ? { value: parseHostPort(def), raw: undefined } : undefined
    }
    const hp = parseAddress(s.value, '0.0.0.0')
    if (hp === undefined) {
      this.#bad(key, s.raw, 'must be HOST:PORT with a port between 0 and 65535')
      return undefined
    }
    return { value: hp, raw: s.raw }
  }

  /** The transport and HTTP listeners cannot share a (non-ephemeral) port on overlapping hosts. */
  #distinct(
    listen: { value: HostPort; raw: Raw | undefined } | undefined,
    http: { value: HostPort; raw: Raw | undefined } | undefined,
  ): void {
    if (listen === undefined || http === undefined) return
    const a = listen.value
    const b = http.value
    if (a.port === 0 || a.port !== b.port) return
    if (a.host !== b.host && !isWildcard(a.host) && !isWildcard(b.host)) return
    const httpLabel = http.raw?.label ?? '--http (default)'
    const listenLabel = listen.raw?.label ?? '--listen (default)'
    this.#problem(
      '--http',
      http.raw?.source ?? listen.raw?.source ?? 'default',
      `${httpLabel} and ${listenLabel} must use different ports, got ${show(formatHostPort(b.host, b.port))} and ${show(formatHostPort(a.host, a.port))}`,
    )
  }

  /** `--coordinator`: one address or a comma-separated list of replicas (HA). */
  #coordinators(): { coordinator: HostPort; coordinators: HostPort[] } {
    const s = this.#string('coordinator')
    if (s === undefined || !s.value.includes(',')) {
      const one = this.#dialAddress('coordinator')
      return { coordinator: one, coordinators: [one] }
    }
    const list: HostPort[] = []
    for (const part of s.value.split(',')) {
      const hp = parseAddress(part.trim(), '127.0.0.1')
      if (hp === undefined || hp.port === 0 || isWildcard(hp.host)) {
        this.#bad(
          'coordinator',
          s.raw,
          `each replica must be a HOST:PORT to dial, with a port between 1 and 65535 (got ${JSON.stringify(part.trim())})`,
        )
        const fallback = { host: '127.0.0.1', port: 7400 }
        return { coordinator: fallback, coordinators: [fallback] }
      }
      list.push(hp)
    }
    return { coordinator: list[0]!, coordinators: list }
  }

  /** An address to dial: HOST:PORT with a port in 1..65535. Required. */
  #dialAddress(key: 'coordinator'): HostPort {
    const s = this.#string(key)
    const fallback = { host: '127.0.0.1', port: 7400 }
    if (s === undefined) {
      if (this.#sources[key] === 'default') {
        this.#problem(
          '--coordinator',
          'default',
          `--coordinator (or SHOAL_COORDINATOR) is required for ${ROLE_LABEL[this.#role]}: the coordinator's HOST:PORT`,
        )
      }
      return fallback
    }
    const hp = parseAddress(s.value, '127.0.0.1')
    if (hp === undefined || hp.port === 0 || isWildcard(hp.host)) {
      this.#bad(key, s.raw, 'must be the HOST:PORT to dial, with a port between 1 and 65535')
      return fallback
    }
    return hp
  }

  #advertise(listen: HostPort | undefined): HostPort {
    const s = this.#string('advertise')
    const fromListen = (): HostPort => ({
      host: listen === undefined || isWildcard(listen.host) ? sanitizeHost(this.#hostname()) : listen.host,
      port: listen?.port ?? 0,
    })
    if (s === undefined) return fromListen()
    const v = s.value.trim()
    let hp: HostPort | undefined
    if (net.isIPv6(v) || (!v.includes(':') && !/^\d+$/.test(v))) {
      // A bare host (or IPv6 address) keeps the listen port.
      hp = isHost(v) ? { host: v, port: listen?.port ?? 0 } : undefined
    } else {
      hp = parseAddress(v, '')
    }
    if (hp === undefined || hp.host === '' || isWildcard(hp.host)) {
      this.#bad(
        'advertise',
        s.raw,
        'must be HOST or HOST:PORT that other nodes can dial (not a wildcard address)',
      )
      return fromListen()
    }
    return hp
  }

  #nodeId(isWorker: boolean): string {
    const s = this.#string('nodeId')
    if (s !== undefined) {
      if (!/^[\x21-\x7e]{1,200}$/.test(s.value)) {
        this.#bad('nodeId', s.raw, 'must be 1 to 200 printable ASCII characters without spaces')
      }
      return s.value
    }
    const base = sanitizeHost(this.#env('POD_NAME') ?? this.#hostname()).slice(0, 180) || 'shoal'
    return isWorker ? `${base}-${randomBytes(3).toString('hex')}` : base
  }

  #state(): StateConfig {
    const s = this.#string('state')
    if (s === undefined) return { kind: 'memory', url: 'memory:' } // CONFIG_DEFAULTS.state
    const parsed = parseStateUrl(s.value, s.raw.baseDir)
    if (typeof parsed === 'string') {
      this.#bad('state', s.raw, parsed, show(redactUrl(s.value)))
      return { kind: 'memory', url: 'memory:' }
    }
    return parsed
  }

  #job(): string {
    const s = this.#string('job')
    if (s === undefined) return CONFIG_DEFAULTS.job
    const v = s.value.trim()
    if (BUILTIN_JOBS.includes(v)) return v
    if (v === '') {
      this.#bad(
        'job',
        s.raw,
        `must be a built-in job (${BUILTIN_JOBS.join(', ')}) or the path of a job module`,
      )
      return 'count'
    }
    let file: string
    try {
      file = v.startsWith('file:') ? fileURLToPath(v) : path.resolve(s.raw.baseDir, v)
    } catch {
      this.#bad('job', s.raw, 'must be a valid file: URL')
      return 'count'
    }
    // A job module path that does not exist is the job loader's to report (SHOAL_ERR_JOB_INVALID,
    // before the node starts); a bare word without an extension is a mistyped built-in name.
    if (!isReadableFile(file) && !/\.(?:[mc]?[jt]s)$/.test(file)) {
      this.#bad(
        'job',
        s.raw,
        `must be a built-in job (${BUILTIN_JOBS.join(', ')}) or the path of a job module; no readable file at ${file}`,
      )
      return 'count'
    }
    return file
  }

  /**
   * A repeatable URL field: the flag's values, or the environment variable's (separated by
   * whitespace), or the file's (an array of strings, or one string separated like the
   * environment). Every URL is parsed; each bad one is a problem of its own, and so is the
   * same source or sink given twice. Relative file: sink paths resolve like other paths.
   */
  #urls<T extends SourceSpec | SinkSpec>(
    key: 'sources' | 'sinks',
    parse: (url: string, flag: string, options: { baseDir: string }) => T,
  ): T[] {
    const raw = this.#raw(key)
    if (raw === undefined) return []
    const v = raw.value
    let urls: string[]
    if (typeof v === 'string') urls = v.split(/\s+/).filter((u) => u !== '')
    else if (Array.isArray(v) && v.every((u): u is string => typeof u === 'string')) {
      urls = raw.source === 'file' ? v.flatMap((u) => u.split(/\s+/)).filter((u) => u !== '') : v
    } else {
      this.#bad(key, raw, 'must be a URL string or an array of URL strings', show(v))
      return []
    }
    const flag = `--${CONFIG_FIELDS[key].flag}`
    const out: T[] = []
    const seen = new Set<string>()
    for (const url of urls) {
      try {
        const spec = parse(url, flag, { baseDir: raw.baseDir })
        const described = describeSpec(spec)
        if (seen.has(described)) {
          this.#problem(
            flag,
            raw.source,
            `${raw.label} names the same ${key.slice(0, -1)} twice: ${described}`,
          )
          continue
        }
        seen.add(described)
        out.push(spec)
      } catch (err) {
        if (!(err instanceof ConnectorUrlError)) throw err
        this.#problem(flag, raw.source, `${raw.label} ${show(err.url)}: ${err.detail}`)
      }
    }
    return out
  }

  #tls(): TlsFilesConfig | undefined {
    const file = (key: 'tlsCert' | 'tlsKey' | 'tlsCa'): { path: string; raw: Raw } | undefined => {
      const s = this.#string(key)
      if (s === undefined) return undefined
      const p = path.resolve(s.raw.baseDir, s.value)
      if (s.value.trim() === '' || !isReadableFile(p)) {
        this.#bad(key, s.raw, `must name a readable PEM file; none at ${p}`)
        return undefined
      }
      return { path: p, raw: s.raw }
    }
    const rawSeen = (key: ConfigKey): boolean =>
      this.#sources[key] !== undefined && this.#sources[key] !== 'default'
    const cert = file('tlsCert')
    const key = file('tlsKey')
    const ca = file('tlsCa')
    const requireClientCert = CONFIG_FIELDS.tlsRequireClientCert.roles.includes(this.#role)
      ? this.#bool('tlsRequireClientCert', false)
      : false
    if (rawSeen('tlsCert') !== rawSeen('tlsKey')) {
      const [given, missing] = rawSeen('tlsCert') ? ['--tls-cert', '--tls-key'] : ['--tls-key', '--tls-cert']
      this.#problem(
        missing,
        'default',
        `${given} and ${missing} must be given together (${missing} is missing)`,
      )
    }
    if (requireClientCert && !(rawSeen('tlsCert') && rawSeen('tlsKey') && rawSeen('tlsCa'))) {
      const src = this.#sources.tlsRequireClientCert ?? 'default'
      this.#problem(
        '--tls-require-client-cert',
        src,
        '--tls-require-client-cert needs --tls-cert, --tls-key and --tls-ca (the CA that signs client certificates)',
      )
    }
    if (cert === undefined && key === undefined && ca === undefined && !requireClientCert) return undefined
    return { cert: cert?.path, key: key?.path, ca: ca?.path, requireClientCert }
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers (exported where another module may want them)

function isWildcard(host: string): boolean {
  return host === '0.0.0.0' || host === '::' || host === '[::]' || host === ''
}

function isHost(host: string): boolean {
  return net.isIP(host) !== 0 || /^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$/.test(host)
}

/** Host names may hold characters a node id or address should not; keep the safe ones. */
function sanitizeHost(host: string): string {
  return host.replace(/[^A-Za-z0-9._-]/g, '-')
}

function isReadableFile(p: string): boolean {
  try {
    if (!statSync(p).isFile()) return false
    accessSync(p, fsConstants.R_OK)
    return true
  } catch {
    return false
  }
}

/** HOST:PORT, [V6]:PORT, :PORT or a bare PORT; undefined when invalid. */
function parseAddress(value: string, defaultHost: string): HostPort | undefined {
  const v = value.trim()
  const withHost = /^\d{1,5}$/.test(v) ? `:${v}` : v
  try {
    const hp = parseHostPort(withHost, defaultHost)
    if (hp.host !== '' && !isHost(hp.host)) return undefined
    return hp
  } catch {
    return undefined
  }
}

/**
 * The address to advertise once the transport listener is bound: the configured advertise
 * address, with port 0 replaced by the port actually bound.
 */
export function advertiseAddress(config: { readonly advertise: HostPort }, boundPort: number): string {
  const { host, port } = config.advertise
  return formatHostPort(host, port === 0 ? boundPort : port)
}

/** `redis://user:secret@host` -> `redis://user:***@host`; other strings unchanged. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z+]+:\/\/)([^@/]*)@/i, (_m, scheme: string, userinfo: string) => {
    const i = userinfo.indexOf(':')
    return i < 0 ? `${scheme}***@` : `${scheme}${userinfo.slice(0, i)}:***@`
  })
}

/**
 * Parse a --state URL (see {@link StateConfig}); returns the problem as a string when invalid.
 * Relative `file:` directories resolve against `baseDir`.
 */
export function parseStateUrl(value: string, baseDir: string): StateConfig | string {
  const v = value.trim()
  if (v === 'memory:' || v === 'memory://') return { kind: 'memory', url: 'memory:' }
  if (/^file:/i.test(v)) {
    let dir: string
    if (/^file:\/\//i.test(v)) {
      try {
        dir = fileURLToPath(v)
      } catch {
        return 'must be file:DIR or a valid file:// URL'
      }
    } else {
      dir = v.slice('file:'.length)
    }
    if (dir.trim() === '') return 'must name a directory after file: (e.g. file:./data)'
    const abs = path.resolve(baseDir, dir)
    return { kind: 'file', url: `file:${abs}`, dir: abs }
  }
  const m = /^(rediss?)(?:\+(sentinel|cluster))?:\/\/(.*)$/i.exec(v)
  if (m === null) {
    return 'must be memory:, file:DIR, redis://, rediss://, redis+sentinel:// or redis+cluster://'
  }
  const tls = m[1]!.toLowerCase() === 'rediss'
  const mode: RedisMode = m[2] === undefined ? 'standalone' : (m[2].toLowerCase() as RedisMode)
  let rest = m[3]!
  const q = rest.indexOf('?')
  const params: Record<string, string> = {}
  if (q >= 0) {
    for (const [k, val] of new URLSearchParams(rest.slice(q + 1))) params[k] = val
    rest = rest.slice(0, q)
  }
  const slash = rest.indexOf('/')
  let authority = slash < 0 ? rest : rest.slice(0, slash)
  const pathPart = slash < 0 ? '' : rest.slice(slash + 1)
  let username: string | undefined
  let password: string | undefined
  const at = authority.lastIndexOf('@')
  if (at >= 0) {
    const userinfo = authority.slice(0, at)
    authority = authority.slice(at + 1)
    const colon = userinfo.indexOf(':')
    try {
      const u = decodeURIComponent(colon < 0 ? userinfo : userinfo.slice(0, colon))
      const p = colon < 0 ? undefined : decodeURIComponent(userinfo.slice(colon + 1))
      username = u === '' ? undefined : u
      password = p === '' ? undefined : p
    } catch {
      return 'has a badly percent-encoded user or password'
    }
  }
  const defaultPort = mode === 'sentinel' ? 26379 : 6379
  const hosts = authority.split(',')
  const nodes: HostPort[] = []
  for (const h of hosts) {
    if (h === '') return 'must name a host, e.g. redis://127.0.0.1:6379'
    const hp =
      /^\[[^\]]+\]$/.test(h) || !h.includes(':')
        ? parseAddress(`${h}:${defaultPort}`, '')
        : parseAddress(h, '')
    if (hp === undefined || hp.host === '' || hp.port === 0)
      return `has an invalid host ${show(h)} (HOST[:PORT], port 1..65535)`
    nodes.push(hp)
  }
  if (mode === 'standalone' && nodes.length !== 1) {
    return 'names several hosts; use redis+cluster:// or redis+sentinel:// for more than one'
  }
  const segments = pathPart.split('/').filter((s) => s !== '')
  let db = 0
  let masterName: string | undefined
  const dbOf = (s: string | undefined): number | string => {
    if (s === undefined) return 0
    return /^\d{1,5}$/.test(s) ? Number(s) : `has an invalid database index ${show(s)}`
  }
  if (mode === 'sentinel') {
    if (segments.length < 1 || segments.length > 2)
      return 'must name the master: redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER[/DB]'
    try {
      masterName = decodeURIComponent(segments[0]!)
    } catch {
      return 'has a badly percent-encoded master name'
    }
    const d = dbOf(segments[1])
    if (typeof d === 'string') return d
    db = d
  } else if (mode === 'cluster') {
    if (segments.length > 1 || (segments.length === 1 && segments[0] !== '0')) {
      return 'must not select a database: Redis Cluster has only database 0'
    }
  } else {
    if (segments.length > 1) return 'must be redis://[USER:PASSWORD@]HOST[:PORT][/DB]'
    const d = dbOf(segments[0])
    if (typeof d === 'string') return d
    db = d
  }
  return { kind: 'redis', url: v, mode, tls, nodes, username, password, db, masterName, params }
}

/** A copy safe to log: the token and any Redis password are redacted. */
export function describeConfig(config: ShoalConfig): Record<string, unknown> {
  const out: Record<string, unknown> = { ...config }
  if (config.token !== undefined) out.token = '***'
  if (config.role === 'worker' || config.role === 'up') {
    out.sources = config.sources.map(describeSpec)
    out.sinks = config.sinks.map(describeSpec)
  }
  if ('state' in config && config.state.kind === 'redis') {
    out.state = {
      ...config.state,
      url: redactUrl(config.state.url),
      password: config.state.password === undefined ? undefined : '***',
    }
  }
  return out
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v)
    Object.freeze(value)
  }
  return value
}
