/**
 * `--source` and `--sink` URLs (ARCHITECTURE.md, "Connecting to real systems") parsed into the
 * specs of spec.ts:
 *
 * ```
 * source  redis://HOST:PORT[/DB]?stream=NAME&group=NAME[&key=FIELD][&field=data]
 *                 [&format=json|msgpack][&start=earliest|latest][&dlq=NAME][&count=N]
 * sink    redis://HOST:PORT[/DB]?stream=NAME[&maxlen=N]
 * sink    postgres://USER:PASS@HOST:PORT/DB?table=NAME[&mode=state|events]   (also postgresql://)
 * sink    file:PATH  ndjson:PATH  file:///abs/path                           NDJSON lines
 * ```
 *
 * The Redis part takes every form `--state` takes (redis://, rediss://, redis+sentinel://,
 * redis+cluster://, rediss+..., user and password in the URL) and is checked by the state
 * parser. Query parameters are percent-decoded; each may be given once. A Redis URL takes only
 * Shoal's parameters; a Postgres URL keeps the others (sslmode, application_name, ...) in
 * `spec.url` for the driver. A file sink takes none (`?` is not allowed in its path).
 *
 * Every problem throws {@link ConnectorUrlError} (code SHOAL_ERR_CONFIG_INVALID) naming the flag,
 * the parameter and the value received; passwords (in the user info and in query parameters
 * whose name says password, secret or token) never appear in messages or in
 * {@link describeSpec}.
 */
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { ErrorCodes, ShoalError } from '../errors.ts'
import { parseStateUrl } from '../state/index.ts'
import type {
  FileSinkSpec,
  PostgresSinkSpec,
  RedisStreamSinkSpec,
  RedisStreamSourceSpec,
  SinkSpec,
  SourceSpec,
} from './spec.ts'

/** Defaults of the optional parameters. */
export const SOURCE_DEFAULTS = Object.freeze({
  keyField: 'key',
  dataField: 'data',
  format: 'json',
  start: 'earliest',
  count: 10_000,
} as const)

/** Bounds of `count` (entries per XREADGROUP), inclusive. */
export const SOURCE_COUNT_LIMITS = Object.freeze([1, 100_000] as const)

const SOURCE_PARAMS = ['stream', 'group', 'key', 'field', 'format', 'start', 'dlq', 'count'] as const
const REDIS_SINK_PARAMS = ['stream', 'maxlen'] as const
const POSTGRES_PARAMS = ['table', 'mode'] as const

const REDIS_SCHEMES: ReadonlySet<string> = new Set([
  'redis',
  'rediss',
  'redis+sentinel',
  'rediss+sentinel',
  'redis+cluster',
  'rediss+cluster',
])
const POSTGRES_SCHEMES: ReadonlySet<string> = new Set(['postgres', 'postgresql'])
const FILE_SCHEMES: ReadonlySet<string> = new Set(['file', 'ndjson'])

/** Query parameters whose values are secrets: redacted in messages and descriptions. */
const SECRET_PARAM = /pass|secret|token/i

/** A `--source`/`--sink` URL that cannot be used. Code SHOAL_ERR_CONFIG_INVALID. */
export class ConnectorUrlError extends ShoalError {
  /** The flag, e.g. `--sink`. */
  readonly flag: string
  /** The offending part: a query parameter's name, or `scheme`, `host`, `path`, `url`, ... */
  readonly parameter: string
  /** The URL with passwords redacted. */
  readonly url: string
  /** The problem without the flag and URL, e.g. `maxlen must be a positive integer, got "0"`. */
  readonly detail: string

  constructor(flag: string, url: string, parameter: string, detail: string) {
    const shown = redactConnectorUrl(url)
    super(ErrorCodes.CONFIG_INVALID, `${flag} ${quote(shown)}: ${detail}`, {
      data: { flag, parameter, url: shown },
    })
    this.flag = flag
    this.parameter = parameter
    this.url = shown
    this.detail = detail
  }
}

/**
 * `scheme://user:secret@host/...?password=x` -> `scheme://user:***@host/...?password=***`.
 * The user info runs to the last `@` of the URL, so a password holding `@`, `/`, `?` or `#`
 * (which should have been percent-encoded) is hidden too; at worst more than the password is.
 */
export function redactConnectorUrl(url: string): string {
  let out = url
  const s = out.indexOf('://')
  const at = out.lastIndexOf('@')
  if (s >= 0 && at > s) {
    const userinfo = out.slice(s + 3, at)
    const c = userinfo.indexOf(':')
    if (c >= 0) out = `${out.slice(0, s + 3)}${userinfo.slice(0, c)}:***${out.slice(at)}`
  }
  const q = out.indexOf('?')
  if (q >= 0) {
    const query = out
      .slice(q + 1)
      .split('&')
      .map((seg) => {
        const eq = seg.indexOf('=')
        const name = eq < 0 ? seg : seg.slice(0, eq)
        return eq >= 0 && SECRET_PARAM.test(safeDecode(name) ?? name) ? `${name}=***` : seg
      })
      .join('&')
    out = `${out.slice(0, q)}?${query}`
  }
  return out
}

/** Parse a `--source` URL. Throws {@link ConnectorUrlError}. */
export function parseSourceUrl(url: string, flag = '--source'): SourceSpec {
  const u = split(url, flag)
  if (!REDIS_SCHEMES.has(u.scheme)) {
    throw new ConnectorUrlError(
      flag,
      url,
      'scheme',
      `unknown source scheme ${u.scheme === '' ? '(none)' : quote(`${u.scheme}:`)}; a source is a Redis Stream: redis://, rediss://, redis+sentinel:// or redis+cluster:// with ?stream=NAME&group=NAME`,
    )
  }
  const redis = checkRedisBase(u, flag, url)
  const p = new Params(u, flag, url, SOURCE_PARAMS, true)
  const stream = p.required('stream', 'the stream to read')
  const group = p.required('group', 'the consumer group')
  const spec: RedisStreamSourceSpec = {
    kind: 'redis-stream',
    redis,
    stream,
    group,
    keyField: p.name('key') ?? SOURCE_DEFAULTS.keyField,
    dataField: p.name('field') ?? SOURCE_DEFAULTS.dataField,
    format: p.oneOf('format', ['json', 'msgpack'] as const) ?? SOURCE_DEFAULTS.format,
    start: p.oneOf('start', ['earliest', 'latest'] as const) ?? SOURCE_DEFAULTS.start,
    dlq: p.name('dlq') ?? `${stream}:dlq`,
    count: p.int('count', SOURCE_COUNT_LIMITS[0], SOURCE_COUNT_LIMITS[1]) ?? SOURCE_DEFAULTS.count,
  }
  if (spec.dlq === stream) {
    throw new ConnectorUrlError(
      flag,
      url,
      'dlq',
      `dlq must differ from the stream read (both ${quote(stream)}): dead letters would be read again`,
    )
  }
  return Object.freeze(spec)
}

export interface ParseSinkOptions {
  /** Resolve a relative file sink path against this directory (the config loader passes cwd). */
  baseDir?: string
}

/** Parse a `--sink` URL. Throws {@link ConnectorUrlError}. */
export function parseSinkUrl(url: string, flag = '--sink', options: ParseSinkOptions = {}): SinkSpec {
  const u = split(url, flag)
  if (REDIS_SCHEMES.has(u.scheme)) {
    const redis = checkRedisBase(u, flag, url)
    const p = new Params(u, flag, url, REDIS_SINK_PARAMS, true)
    const spec: RedisStreamSinkSpec = {
      kind: 'redis-stream',
      redis,
      stream: p.required('stream', 'the stream to write'),
      maxlen: p.int('maxlen', 1, Number.MAX_SAFE_INTEGER) ?? null,
    }
    return Object.freeze(spec)
  }
  if (POSTGRES_SCHEMES.has(u.scheme)) return parsePostgres(u, flag, url)
  if (FILE_SCHEMES.has(u.scheme)) return parseFile(u, flag, url, options.baseDir)
  throw new ConnectorUrlError(
    flag,
    url,
    'scheme',
    `unknown sink scheme ${u.scheme === '' ? '(none)' : quote(`${u.scheme}:`)}; expected redis:// (also rediss://, redis+sentinel://, redis+cluster://), postgres://, file:PATH or ndjson:PATH`,
  )
}

/**
 * A canonical description of a spec, with every password redacted: the same source or sink
 * written differently (parameter order, defaults spelled out or not, default ports, letter
 * case of the scheme) describes the same. Workers compare these at join; /status shows them.
 */
export function describeSpec(spec: SourceSpec | SinkSpec): string {
  switch (spec.kind) {
    case 'redis-stream':
      return `${canonicalRedis(spec.redis)}?${query(redisParams(spec))}`
    case 'postgres':
      return canonicalPostgres(spec)
    case 'file':
      return `file:${spec.path}`
  }
}

/**
 * The spec as a URL that parses back to it, password included: for handing a node's sources
 * and sinks to the processes it starts (`shoal up`). Never log it; describeSpec is for that.
 */
export function specUrl(spec: SourceSpec | SinkSpec): string {
  const join = (base: string, q: string): string => `${base}${base.includes('?') ? '&' : '?'}${q}`
  switch (spec.kind) {
    case 'redis-stream':
      return join(spec.redis, query(redisParams(spec)))
    case 'postgres':
      return join(
        spec.url,
        query([
          ['table', spec.table],
          ['mode', spec.mode],
        ]),
      )
    case 'file':
      return `file:${spec.path}`
  }
}

/** Shoal's query parameters of a Redis source or sink, every one written out, in a fixed order. */
function redisParams(spec: SourceSpec | Extract<SinkSpec, { kind: 'redis-stream' }>): [string, string][] {
  if ('group' in spec) {
    return [
      ['stream', spec.stream],
      ['group', spec.group],
      ['key', spec.keyField],
      ['field', spec.dataField],
      ['format', spec.format],
      ['start', spec.start],
      ['dlq', spec.dlq],
      ['count', String(spec.count)],
    ]
  }
  return [
    ['stream', spec.stream],
    ...(spec.maxlen === null ? [] : [['maxlen', String(spec.maxlen)] as [string, string]]),
  ]
}

// ---------------------------------------------------------------------------------------------
// Internals

interface SplitUrl {
  /** Lower-case scheme, '' when none. */
  readonly scheme: string
  /** Everything before `?`, as given. */
  readonly base: string
  /** Raw `name=value` segments of the query, in order (empty segments dropped). */
  readonly query: readonly string[]
  readonly hasQuery: boolean
  /** The whole URL, trimmed. */
  readonly full: string
}

function split(url: string, flag: string): SplitUrl {
  if (typeof url !== 'string') {
    throw new ConnectorUrlError(flag, String(url), 'url', `must be a URL string, got ${typeof url}`)
  }
  const v = url.trim()
  if (v === '') throw new ConnectorUrlError(flag, url, 'url', 'must not be empty')
  if (/\s/.test(v)) {
    throw new ConnectorUrlError(
      flag,
      url,
      'url',
      'must not contain whitespace (percent-encode it as %20; several URLs are separated by spaces)',
    )
  }
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(v)
  const scheme = m === null ? '' : m[1]!.toLowerCase()
  if (v.includes('#')) {
    throw new ConnectorUrlError(flag, url, 'url', 'must not contain a fragment (#); percent-encode # as %23')
  }
  const q = v.indexOf('?')
  const base = q < 0 ? v : v.slice(0, q)
  const query =
    q < 0
      ? []
      : v
          .slice(q + 1)
          .split('&')
          .filter((s) => s !== '')
  return { scheme, base, query, hasQuery: q >= 0, full: v }
}

/** Validate the Redis part with the state parser; returns it (the URL without the query). */
function checkRedisBase(u: SplitUrl, flag: string, url: string): string {
  checkAt(u, flag, url)
  try {
    parseStateUrl(u.base)
  } catch (err) {
    if (!(err instanceof ShoalError)) throw err
    const part = typeof err.data?.part === 'string' ? err.data.part : 'url'
    // The state parser's message starts with `state URL "<redacted>": `; keep what follows.
    const i = err.message.indexOf('": ')
    const detail = i < 0 ? err.message : err.message.slice(i + 3)
    throw new ConnectorUrlError(flag, url, part, detail.replace(/^state URL /, ''))
  }
  return u.base
}

/**
 * At most one `@`, ending the user info. Anywhere else it means a password holding `@`, `/` or
 * `?` that was not percent-encoded, and the parts of such a URL would quote the password.
 */
function checkAt(u: SplitUrl, flag: string, url: string): void {
  const s = u.full.indexOf('://')
  if (s < 0) return
  const rest = u.full.slice(s + 3)
  const end = rest.search(/[/?]/)
  const authority = end < 0 ? rest : rest.slice(0, end)
  const outside = end < 0 ? '' : rest.slice(end)
  if (outside.includes('@') || authority.indexOf('@') !== authority.lastIndexOf('@')) {
    throw new ConnectorUrlError(
      flag,
      url,
      'url',
      'has "@" outside the user info: percent-encode @, /, ? and # in a user or password (%40, %2F, %3F, %23) and @ in parameter values',
    )
  }
}

/** The query parameters of one URL, checked against the names its kind takes. */
class Params {
  readonly #values = new Map<string, string>()
  readonly #flag: string
  readonly #url: string

  constructor(u: SplitUrl, flag: string, url: string, known: readonly string[], strict: boolean) {
    this.#flag = flag
    this.#url = url
    for (const seg of u.query) {
      const eq = seg.indexOf('=')
      const rawName = eq < 0 ? seg : seg.slice(0, eq)
      const name = safeDecode(rawName)
      if (name === undefined)
        this.#fail('url', `query parameter ${quote(rawName)} has a malformed percent-escape`)
      if (!known.includes(name)) {
        if (!strict) continue
        this.#fail(
          name,
          `unknown query parameter ${quote(name)}${eq >= 0 && !SECRET_PARAM.test(name) ? ` (value ${quote(seg.slice(eq + 1))})` : ''}; known: ${known.join(', ')}`,
        )
      }
      if (eq < 0) this.#fail(name, `query parameter ${name} needs a value (${name}=...)`)
      const value = safeDecode(seg.slice(eq + 1))
      if (value === undefined) {
        this.#fail(name, `${name} has a malformed percent-escape, got ${quote(seg.slice(eq + 1))}`)
      }
      if (this.#values.has(name)) {
        this.#fail(name, `${name} is given twice, got ${quote(this.#values.get(name)!)} and ${quote(value)}`)
      }
      this.#values.set(name, value)
    }
  }

  #fail(parameter: string, detail: string): never {
    throw new ConnectorUrlError(this.#flag, this.#url, parameter, detail)
  }

  /** A non-empty name (stream, group, field, table...), or undefined when absent. */
  name(param: string): string | undefined {
    const v = this.#values.get(param)
    if (v === undefined) return undefined
    if (v === '') this.#fail(param, `${param} must not be empty, got ""`)
    if (v.length > 1024) this.#fail(param, `${param} must be at most 1024 characters, got ${v.length}`)
    return v
  }

  required(param: string, what: string): string {
    const v = this.name(param)
    if (v === undefined)
      this.#fail(param, `missing required query parameter ${param} (${what}): ?${param}=NAME`)
    return v
  }

  oneOf<T extends string>(param: string, allowed: readonly T[]): T | undefined {
    const v = this.#values.get(param)
    if (v === undefined) return undefined
    const t = v.toLowerCase()
    if (!(allowed as readonly string[]).includes(t)) {
      this.#fail(param, `${param} must be one of ${allowed.join(', ')}, got ${quote(v)}`)
    }
    return t as T
  }

  int(param: string, min: number, max: number): number | undefined {
    const v = this.#values.get(param)
    if (v === undefined) return undefined
    const n = /^[0-9]{1,16}$/.test(v) ? Number(v) : NaN
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      const what =
        max === Number.MAX_SAFE_INTEGER && min === 1
          ? 'a positive integer'
          : `an integer between ${min} and ${max}`
      this.#fail(param, `${param} must be ${what}, got ${quote(v)}`)
    }
    return n
  }
}

const TABLE_NAME = /^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$/

function parsePostgres(u: SplitUrl, flag: string, url: string): PostgresSinkSpec {
  if (!/^[^:]+:\/\//.test(u.base)) {
    throw new ConnectorUrlError(
      flag,
      url,
      'url',
      `must be ${u.scheme}://USER:PASSWORD@HOST:PORT/DB?table=NAME`,
    )
  }
  checkAt(u, flag, url)
  const hostport = (/^[^:]+:\/\/([^/]*)/.exec(u.base)?.[1] ?? '').replace(/^.*@/, '')
  const port = /\]?:([^:\]]*)$/.exec(hostport)?.[1]
  if (port !== undefined && port !== '' && !(/^[0-9]{1,5}$/.test(port) && +port >= 1 && +port <= 65535)) {
    throw new ConnectorUrlError(
      flag,
      url,
      'port',
      `port must be an integer in [1, 65535], got ${quote(port)}`,
    )
  }
  let parsed: URL
  try {
    parsed = new URL(u.base)
  } catch {
    throw new ConnectorUrlError(
      flag,
      url,
      'url',
      `is not a valid URL: ${u.scheme}://USER:PASSWORD@HOST:PORT/DB?table=NAME`,
    )
  }
  if (safeDecode(parsed.username) === undefined || safeDecode(parsed.password) === undefined) {
    throw new ConnectorUrlError(flag, url, 'password', 'the user or password has a malformed percent-escape')
  }
  const p = new Params(u, flag, url, POSTGRES_PARAMS, false)
  const others = u.query
    .map((seg) => safeDecode(seg.slice(0, seg.includes('=') ? seg.indexOf('=') : seg.length)) ?? seg)
    .filter((n) => !(POSTGRES_PARAMS as readonly string[]).includes(n))
  const table = p.required(
    'table',
    `the table to write${others.length === 0 ? '' : `; the driver gets the other parameters: ${others.join(', ')}`}`,
  )
  if (!TABLE_NAME.test(table)) {
    throw new ConnectorUrlError(
      flag,
      url,
      'table',
      `table must be a Postgres identifier (letters, digits, _ and $, at most 63 characters, optionally schema.table), got ${quote(table)}`,
    )
  }
  const mode = p.oneOf('mode', ['state', 'events'] as const) ?? 'state'
  // The driver gets every other parameter (sslmode, application_name, ...) unchanged.
  const rest = u.query.filter((seg) => {
    const eq = seg.indexOf('=')
    const name = safeDecode(eq < 0 ? seg : seg.slice(0, eq))
    return name === undefined || !(POSTGRES_PARAMS as readonly string[]).includes(name)
  })
  const spec: PostgresSinkSpec = {
    kind: 'postgres',
    url: rest.length === 0 ? u.base : `${u.base}?${rest.join('&')}`,
    table,
    mode,
  }
  return Object.freeze(spec)
}

function parseFile(u: SplitUrl, flag: string, url: string, baseDir: string | undefined): FileSinkSpec {
  if (u.hasQuery) {
    throw new ConnectorUrlError(
      flag,
      url,
      'path',
      `a ${u.scheme}: sink takes no query parameters and its path no "?" (percent-encode it in a file:// URL), got ${quote(u.query.join('&'))}`,
    )
  }
  const rest = u.base.slice(u.scheme.length + 1)
  let file: string
  if (rest.startsWith('//')) {
    try {
      file = fileURLToPath(`file:${rest}`)
    } catch (err) {
      throw new ConnectorUrlError(
        flag,
        url,
        'path',
        `is not a valid file:// URL (${(err as Error).message}); use ${u.scheme}:PATH or file:///absolute/path`,
      )
    }
  } else {
    file = rest
  }
  if (file === '' || file.includes('\0')) {
    throw new ConnectorUrlError(
      flag,
      url,
      'path',
      `must name a file after ${u.scheme}: (e.g. ${u.scheme}:./out.ndjson)`,
    )
  }
  const spec: FileSinkSpec = {
    kind: 'file',
    path: baseDir === undefined ? file : path.resolve(baseDir, file),
  }
  return Object.freeze(spec)
}

function canonicalRedis(redisUrl: string): string {
  let parsed: ReturnType<typeof parseStateUrl>
  try {
    parsed = parseStateUrl(redisUrl)
  } catch {
    parsed = { kind: 'memory', name: undefined }
  }
  if (parsed.kind !== 'redis') return redactConnectorUrl(redisUrl)
  const { target } = parsed
  const scheme = `${target.tls ? 'rediss' : 'redis'}${target.mode === 'standalone' ? '' : `+${target.mode}`}`
  const user = target.username === undefined ? '' : encodeName(target.username)
  const userinfo =
    target.password !== undefined ? `${user}:***@` : target.username !== undefined ? `${user}@` : ''
  const hosts = target.hosts
    .map((h) => `${h.host.includes(':') ? `[${h.host.toLowerCase()}]` : h.host.toLowerCase()}:${h.port}`)
    .join(',')
  const db = target.db === undefined || target.db === 0 ? '' : `/${target.db}`
  const master = target.masterName === undefined ? '' : `/${encodeName(target.masterName)}`
  return `${scheme}://${userinfo}${hosts}${master}${db}`
}

function canonicalPostgres(spec: PostgresSinkSpec): string {
  const q = spec.url.indexOf('?')
  const base = q < 0 ? spec.url : spec.url.slice(0, q)
  const others = (q < 0 ? [] : spec.url.slice(q + 1).split('&'))
    .filter((s) => s !== '')
    .map((seg): [string, string] => {
      const eq = seg.indexOf('=')
      const name = eq < 0 ? seg : seg.slice(0, eq)
      const value = eq < 0 ? '' : seg.slice(eq + 1)
      const n = safeDecode(name) ?? name
      return [n, SECRET_PARAM.test(n) ? '***' : (safeDecode(value) ?? value)]
    })
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
  let head: string
  try {
    const u = new URL(base)
    const user = u.username === '' ? '' : encodeName(safeDecode(u.username) ?? u.username)
    const userinfo = u.password !== '' ? `${user}:***@` : user !== '' ? `${user}@` : ''
    const host = u.hostname.toLowerCase()
    const port = u.port === '' ? (host === '' ? '' : ':5432') : `:${u.port}`
    head = `postgres://${userinfo}${host}${port}${u.pathname}`
  } catch {
    head = redactConnectorUrl(base)
  }
  return `${head}?${query([['table', spec.table], ['mode', spec.mode], ...others])}`
}

function query(pairs: readonly (readonly [string, string])[]): string {
  return pairs.map(([k, v]) => `${encodeName(k)}=${encodeName(v)}`).join('&')
}

/** Percent-encode only what would change a URL's meaning (`%&=#?@`, whitespace, controls). */
function encodeName(s: string): string {
  let out = ''
  for (const c of s) {
    const code = c.charCodeAt(0)
    out += /[%&=#?@\s]/.test(c) || code < 0x20 || code === 0x7f ? encodeURIComponent(c) : c
  }
  return out
}

function safeDecode(s: string): string | undefined {
  try {
    return decodeURIComponent(s)
  } catch {
    return undefined
  }
}

function quote(s: string): string {
  return JSON.stringify(s.length > 200 ? `${s.slice(0, 200)}...` : s)
}
