/**
 * Opening a StateBackend from a URL (`--state`, `SHOAL_STATE`):
 *
 * ```
 * memory:                                    private in-process store
 * memory:NAME                                in-process store shared by every backend named NAME
 * file:DIR  file:///abs/dir                  a directory (created if missing)
 * redis://[user[:pass]@]host[:port][/db]     standalone; rediss:// for TLS
 * redis+sentinel://[user[:pass]@]host:port,host:port/master-name[/db]     (rediss+sentinel://)
 * redis+cluster://[user[:pass]@]host:port,host:port                       (rediss+cluster://)
 * ```
 *
 * URL credentials are the Redis AUTH (ACL user and password; `:pass@` for requirepass). Ports
 * default to 6379 (26379 for sentinels). Percent-escapes in credentials and paths are decoded.
 * A bad URL fails with SHOAL_ERR_INVALID_OPTION naming the offending part; passwords never
 * appear in messages. The Redis client is loaded only for Redis URLs.
 */
import { ErrorCodes, ShoalError } from '../errors.ts'
import type { RetryDelay } from '../util/backoff.ts'
import type { StateBackend } from './backend.ts'
import type { RedisHost, RedisTarget, StateTlsOptions } from './redis/redis-backend.ts'

export * from './backend.ts'
export type { RedisHost, RedisTarget, StateTlsOptions, RedisBackend } from './redis/redis-backend.ts'
export type { MemoryBackend } from './memory/memory-backend.ts'
export type { FileBackend } from './file/file-backend.ts'

export interface StateBackendOptions {
  /** Key prefix for this cluster/job: every key lives under it. @default 'shoal' */
  prefix?: string
  /** Redis: TLS settings for rediss:// (CA, client certificate for mutual TLS, servername). */
  tls?: StateTlsOptions
  /** Redis: how long opening waits for the first connection. @default 5000 */
  connectTimeoutMs?: number
  /** Redis: per-command timeout. @default 5000 */
  commandTimeoutMs?: number
  /** Redis: reconnect policy. @default jittered exponential backoff, 50 ms to 2 s */
  retryDelay?: RetryDelay
  /** Redis Sentinel: credentials of the sentinels (URL credentials are the master's). */
  sentinelUsername?: string
  sentinelPassword?: string
  /** File: fsync every write. @default true */
  fsync?: boolean
}

export type StateUrl =
  | { kind: 'memory'; name: string | undefined }
  | { kind: 'file'; dir: string }
  | { kind: 'redis'; target: RedisTarget }

const REDIS_SCHEMES: Record<string, { mode: RedisTarget['mode']; tls: boolean }> = {
  redis: { mode: 'standalone', tls: false },
  rediss: { mode: 'standalone', tls: true },
  'redis+sentinel': { mode: 'sentinel', tls: false },
  'rediss+sentinel': { mode: 'sentinel', tls: true },
  'redis+cluster': { mode: 'cluster', tls: false },
  'rediss+cluster': { mode: 'cluster', tls: true },
}

/** Replace the password of a URL's userinfo with `***`. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:@/]*:)[^@/]*@/i, '$1***@')
}

function invalid(url: string, part: string, message: string): ShoalError {
  return new ShoalError(
    ErrorCodes.INVALID_OPTION,
    `state URL ${JSON.stringify(redactUrl(url))}: ${message}`,
    {
      data: { url: redactUrl(url), part },
    },
  )
}

function decode(url: string, part: string, s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    throw invalid(url, part, `${part} has a malformed percent-escape`)
  }
}

/** Parse a state URL; throws INVALID_OPTION naming the bad part. */
export function parseStateUrl(url: string): StateUrl {
  if (typeof url !== 'string' || url === '') {
    throw new ShoalError(
      ErrorCodes.INVALID_OPTION,
      `state URL must be a non-empty string such as memory:, file:DIR or redis://host:6379 (got ${JSON.stringify(url)})`,
      { data: { part: 'url' } },
    )
  }
  const colon = url.indexOf(':')
  const scheme = colon < 0 ? '' : url.slice(0, colon).toLowerCase()
  const rest = colon < 0 ? '' : url.slice(colon + 1)
  if (scheme === 'memory') {
    const name = rest.startsWith('//') ? rest.slice(2) : rest
    if (/[/?#]/.test(name))
      throw invalid(url, 'name', `memory store name must not contain / ? or # (got ${JSON.stringify(name)})`)
    return { kind: 'memory', name: name === '' ? undefined : decode(url, 'name', name) }
  }
  if (scheme === 'file') {
    let dir = rest
    if (rest.startsWith('//')) {
      const slash = rest.indexOf('/', 2)
      const host = slash < 0 ? rest.slice(2) : rest.slice(2, slash)
      if (host !== '' && host !== 'localhost') {
        throw invalid(
          url,
          'host',
          `file URLs name a local directory; host ${JSON.stringify(host)} is not supported`,
        )
      }
      dir = slash < 0 ? '' : decode(url, 'path', rest.slice(slash))
    }
    if (dir === '')
      throw invalid(url, 'path', 'file: needs a directory, e.g. file:./state or file:///var/lib/shoal')
    return { kind: 'file', dir }
  }
  const scheme0 = REDIS_SCHEMES[scheme]
  if (scheme0 === undefined) {
    throw invalid(
      url,
      'scheme',
      `unknown scheme ${JSON.stringify(scheme === '' ? url : `${scheme}:`)}; expected memory:, file:, redis://, rediss://, redis+sentinel:// or redis+cluster://`,
    )
  }
  if (!rest.startsWith('//')) throw invalid(url, 'scheme', `expected ${scheme}://host...`)
  const m = /^\/\/(?:([^@/?#]*)@)?([^/?#]*)(\/[^?#]*)?(\?[^#]*)?(#.*)?$/.exec(rest)
  if (m === null) throw invalid(url, 'url', 'cannot parse')
  const [, userinfo, hostList = '', path = '', query, fragment] = m
  if (query !== undefined || fragment !== undefined) {
    throw invalid(
      url,
      'query',
      `query strings and fragments are not supported (got ${JSON.stringify((query ?? '') + (fragment ?? ''))}); pass settings as options`,
    )
  }
  const { mode, tls } = scheme0
  const defaultPort = mode === 'sentinel' ? 26379 : 6379
  if (hostList === '') throw invalid(url, 'host', 'missing host')
  const hosts = hostList.split(',').map((h) => parseHost(url, h, defaultPort))
  if (mode === 'standalone' && hosts.length > 1) {
    throw invalid(
      url,
      'host',
      `${scheme}:// takes one host (got ${hosts.length}); use redis+cluster:// or redis+sentinel://`,
    )
  }
  let username: string | undefined
  let password: string | undefined
  if (userinfo !== undefined) {
    const c = userinfo.indexOf(':')
    const user = c < 0 ? userinfo : userinfo.slice(0, c)
    username = user === '' ? undefined : decode(url, 'username', user)
    password = c < 0 ? undefined : decode(url, 'password', userinfo.slice(c + 1))
    if (password === '') password = undefined
  }
  const segments = path.split('/').filter((s) => s !== '')
  let db: number | undefined
  let masterName: string | undefined
  const parseDb = (s: string): number => {
    if (!/^(0|[1-9][0-9]{0,4})$/.test(s))
      throw invalid(url, 'db', `database must be an integer >= 0 (got ${JSON.stringify(s)})`)
    return Number(s)
  }
  switch (mode) {
    case 'standalone':
      if (segments.length > 1) throw invalid(url, 'db', `path must be /<db> (got ${JSON.stringify(path)})`)
      if (segments[0] !== undefined) db = parseDb(segments[0])
      break
    case 'sentinel':
      if (segments[0] === undefined)
        throw invalid(url, 'master', 'missing master name: redis+sentinel://host:port,host:port/master-name')
      if (segments.length > 2)
        throw invalid(url, 'db', `path must be /<master-name>[/<db>] (got ${JSON.stringify(path)})`)
      masterName = decode(url, 'master', segments[0])
      if (segments[1] !== undefined) db = parseDb(segments[1])
      break
    case 'cluster':
      if (segments.length > 0) {
        throw invalid(
          url,
          'db',
          `a cluster has only database 0; remove the path (got ${JSON.stringify(path)})`,
        )
      }
      break
  }
  return {
    kind: 'redis',
    target: { mode, tls, hosts, username, password, db, masterName, display: redactUrl(url) },
  }
}

function parseHost(url: string, spec: string, defaultPort: number): RedisHost {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+)(?::([^:]*))?$/.exec(spec)
  if (m === null || m[1] === undefined) {
    throw invalid(url, 'host', `bad host ${JSON.stringify(spec)} (expected host[:port] or [ipv6][:port])`)
  }
  const host = m[1].startsWith('[') ? m[1].slice(1, -1) : m[1]
  if (!/^[A-Za-z0-9._:-]+$/.test(host)) throw invalid(url, 'host', `bad host name ${JSON.stringify(host)}`)
  if (m[2] === undefined) return { host, port: defaultPort }
  if (!/^[0-9]{1,5}$/.test(m[2]) || Number(m[2]) < 1 || Number(m[2]) > 65535) {
    throw invalid(url, 'port', `port must be an integer in [1, 65535] (got ${JSON.stringify(m[2])})`)
  }
  return { host, port: Number(m[2]) }
}

/** Open the backend a state URL names. Redis: waits for the first connection (connectTimeoutMs). */
export async function createStateBackend(
  url: string,
  options: StateBackendOptions = {},
): Promise<StateBackend> {
  const parsed = parseStateUrl(url)
  switch (parsed.kind) {
    case 'memory': {
      const { MemoryBackend } = await import('./memory/memory-backend.ts')
      return new MemoryBackend({
        ...(options.prefix === undefined ? {} : { prefix: options.prefix }),
        ...(parsed.name === undefined ? {} : { name: parsed.name }),
      })
    }
    case 'file': {
      const { FileBackend } = await import('./file/file-backend.ts')
      return FileBackend.open({
        dir: parsed.dir,
        ...(options.prefix === undefined ? {} : { prefix: options.prefix }),
        ...(options.fsync === undefined ? {} : { fsync: options.fsync }),
      })
    }
    case 'redis': {
      const { RedisBackend } = await import('./redis/redis-backend.ts')
      return RedisBackend.open({ ...options, target: parsed.target })
    }
  }
}
