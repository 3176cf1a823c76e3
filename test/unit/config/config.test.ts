import fc from 'fast-check'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import {
  advertiseAddress,
  CONFIG_FIELDS,
  CONFIG_ROLES,
  ConfigError,
  describeConfig,
  formatFlagHelp,
  loadConfig,
  parseArgv,
  parseStateUrl,
  redactUrl,
  wantsHelp,
  type ConfigRole,
  type LoadConfigOptions,
} from '../../../src/config/index.ts'
import { ErrorCodes, ShoalError } from '../../../src/errors.ts'

const tmp = mkdtempSync(path.join(os.tmpdir(), 'shoal-config-'))
afterAll(() => rmSync(tmp, { recursive: true, force: true }))

const HOST = 'testhost'
const COORD = ['--coordinator', 'coord:7400']

function opts(
  argv: string[] = [],
  env: Record<string, string | undefined> = {},
  cwd = tmp,
): LoadConfigOptions {
  return { argv, env, cwd, hostname: HOST, availableParallelism: 8 }
}

/** The ConfigError thrown by `fn`, or a failure. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError)
    expect((err as ConfigError).code).toBe(ErrorCodes.CONFIG_INVALID)
    return err as ConfigError
  }
  throw new Error('expected a ConfigError')
}

/** The single problem message for a load that must fail with exactly one problem. */
function problem(role: ConfigRole, argv: string[], env: Record<string, string> = {}, cwd = tmp): string {
  const err = configError(() => loadConfig(role, opts(argv, env, cwd)))
  expect(err.problems).toHaveLength(1)
  expect(err.message).toBe(err.problems[0]!.message)
  return err.message
}

let fileCounter = 0
function writeJson(content: unknown, dir = tmp): string {
  const file = path.join(dir, `config-${++fileCounter}.json`)
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content))
  return file
}

const jobFile = path.join(tmp, 'job.mjs')
writeFileSync(jobFile, 'export default {}\n')
const pem = path.join(tmp, 'x.pem')
writeFileSync(pem, '-----BEGIN CERTIFICATE-----\n')

describe('defaults', () => {
  it('coordinator', () => {
    const c = loadConfig('coordinator', opts())
    expect(c).toMatchObject({
      role: 'coordinator',
      listen: { host: '0.0.0.0', port: 7400 },
      http: { host: '0.0.0.0', port: 7401 },
      advertise: { host: HOST, port: 7400 },
      nodeId: HOST,
      transport: 'tcp',
      state: { kind: 'memory', url: 'memory:' },
      partitions: 256,
      heartbeatIntervalMs: 500,
      heartbeatMisses: 3,
      drainTimeoutMs: 20000,
      checkpointIntervalMs: 5000,
      logLevel: 'info',
      token: undefined,
      tls: undefined,
      help: false,
      positionals: [],
      configFile: undefined,
    })
    expect(c.origins.partitions).toBe('default')
  })

  it('worker: ephemeral ports, CPU threads, the count job', () => {
    const w = loadConfig('worker', opts(COORD))
    expect(w).toMatchObject({
      role: 'worker',
      coordinator: { host: 'coord', port: 7400 },
      listen: { host: '0.0.0.0', port: 0 },
      http: { host: '0.0.0.0', port: 0 },
      advertise: { host: HOST, port: 0 },
      job: 'count',
      threads: 8,
      logLevel: 'info',
    })
  })

  it('threads default to os.availableParallelism()', () => {
    const w = loadConfig('worker', { argv: COORD, env: {}, cwd: tmp })
    expect(w.threads).toBe(os.availableParallelism())
  })

  it('up: loopback, 3 workers sharing the CPUs', () => {
    const u = loadConfig('up', opts())
    expect(u).toMatchObject({
      role: 'up',
      workers: 3,
      listen: { host: '127.0.0.1', port: 7400 },
      http: { host: '127.0.0.1', port: 7401 },
      threads: 2,
      demo: false,
      partitions: 256,
      job: 'count',
    })
    expect(loadConfig('up', opts(['--workers', '16'])).threads).toBe(1)
  })

  it('client: warn level, key field "key", positionals kept', () => {
    const c = loadConfig('client', opts(['state', 'get', 'user-1', ...COORD, '--json']))
    expect(c).toMatchObject({
      role: 'client',
      coordinator: { host: 'coord', port: 7400 },
      logLevel: 'warn',
      keyField: 'key',
      json: true,
      strict: false,
      positionals: ['state', 'get', 'user-1'],
    })
  })

  it('is deeply frozen', () => {
    const c = loadConfig('worker', opts(COORD))
    expect(Object.isFrozen(c)).toBe(true)
    expect(Object.isFrozen(c.listen)).toBe(true)
    expect(Object.isFrozen(c.state)).toBe(true)
    expect(Object.isFrozen(c.origins)).toBe(true)
    expect(Object.isFrozen(c.positionals)).toBe(true)
    expect(() => {
      ;(c as { threads: number }).threads = 1
    }).toThrow(TypeError)
  })
})

describe('precedence: flags > env > file > defaults', () => {
  it('each layer overrides the next and records its source', () => {
    const file = writeJson({
      partitions: 16,
      heartbeatIntervalMs: 250,
      heartbeatMisses: 5,
      transport: 'grpc',
    })
    const env = { SHOAL_CONFIG: file, SHOAL_PARTITIONS: '32', SHOAL_HEARTBEAT_INTERVAL_MS: '300' }
    const c = loadConfig('coordinator', opts(['--partitions', '64'], env))
    expect(c.partitions).toBe(64)
    expect(c.heartbeatIntervalMs).toBe(300)
    expect(c.heartbeatMisses).toBe(5)
    expect(c.transport).toBe('grpc')
    expect(c.drainTimeoutMs).toBe(20000)
    expect(c.origins).toMatchObject({
      partitions: 'flag',
      heartbeatIntervalMs: 'env',
      heartbeatMisses: 'file',
      transport: 'file',
      drainTimeoutMs: 'default',
      config: 'env',
    })
    expect(c.configFile).toBe(file)
  })

  it('only the winning value is validated', () => {
    const c = loadConfig('coordinator', opts(['--partitions', '8'], { SHOAL_PARTITIONS: 'abc' }))
    expect(c.partitions).toBe(8)
  })

  it('--config beats SHOAL_CONFIG, and a relative path resolves against cwd', () => {
    const a = writeJson({ partitions: 1 })
    const b = writeJson({ partitions: 2 })
    const c = loadConfig('coordinator', opts(['--config', path.basename(a)], { SHOAL_CONFIG: b }))
    expect(c.partitions).toBe(1)
    expect(c.configFile).toBe(a)
  })

  it('an empty environment variable counts as unset', () => {
    const c = loadConfig('coordinator', opts([], { SHOAL_PARTITIONS: '', SHOAL_TOKEN: '' }))
    expect(c.partitions).toBe(256)
    expect(c.token).toBeUndefined()
  })

  it('environment of fields another command uses is ignored', () => {
    const w = loadConfig('worker', opts(COORD, { SHOAL_PARTITIONS: 'not a number', SHOAL_WORKERS: 'x' }))
    expect(w.role).toBe('worker')
  })

  it('every flag has its environment variable', () => {
    const env = {
      SHOAL_LISTEN: '127.0.0.1:7410',
      SHOAL_HTTP: '127.0.0.1:7411',
      SHOAL_TRANSPORT: 'grpc',
      SHOAL_STATE: 'file:data',
      SHOAL_COORDINATOR: 'c:1',
      SHOAL_JOB: jobFile,
      SHOAL_THREADS: '3',
      SHOAL_TOKEN: 'secret',
      SHOAL_NODE_ID: 'w-1',
      SHOAL_ADVERTISE: 'w1.example:9000',
      SHOAL_HEARTBEAT_INTERVAL_MS: '100',
      SHOAL_HEARTBEAT_MISSES: '4',
      SHOAL_DRAIN_TIMEOUT_MS: '1000',
      SHOAL_LOG_LEVEL: 'debug',
      SHOAL_TLS_CERT: pem,
      SHOAL_TLS_KEY: pem,
      SHOAL_TLS_CA: pem,
      SHOAL_TLS_REQUIRE_CLIENT_CERT: 'true',
    }
    const w = loadConfig('worker', opts([], env))
    expect(w).toMatchObject({
      listen: { host: '127.0.0.1', port: 7410 },
      http: { host: '127.0.0.1', port: 7411 },
      transport: 'grpc',
      state: { kind: 'file', dir: path.join(tmp, 'data') },
      coordinator: { host: 'c', port: 1 },
      job: jobFile,
      threads: 3,
      token: 'secret',
      nodeId: 'w-1',
      advertise: { host: 'w1.example', port: 9000 },
      heartbeatIntervalMs: 100,
      heartbeatMisses: 4,
      drainTimeoutMs: 1000,
      logLevel: 'debug',
      tls: { cert: pem, key: pem, ca: pem, requireClientCert: true },
    })
    for (const k of Object.keys(env)) {
      const field = Object.entries(CONFIG_FIELDS).find(([, s]) => s.env === k)
      expect(field, k).toBeDefined()
      if (k !== 'SHOAL_CONFIG') expect(w.origins[field![0] as keyof typeof w.origins], k).toBe('env')
    }
    const c = loadConfig(
      'coordinator',
      opts([], { SHOAL_PARTITIONS: '9', SHOAL_CHECKPOINT_INTERVAL_MS: '700' }),
    )
    expect([c.partitions, c.checkpointIntervalMs, c.recoveryWindowMs]).toEqual([9, 700, undefined])
    const r = loadConfig('coordinator', opts(['--recovery-window', '30000'], {}))
    expect(r.recoveryWindowMs).toBe(30_000)
    expect(() => loadConfig('coordinator', opts(['--recovery-window', '-1'], {}))).toThrow(/recovery-window/)
    expect(() => loadConfig('worker', opts(['--recovery-window', '10'], {}))).toThrow(/recovery-window/)
    const u = loadConfig('up', opts([], { SHOAL_WORKERS: '5', SHOAL_DEMO: 'yes' }))
    expect([u.workers, u.demo]).toEqual([5, true])
    const cl = loadConfig(
      'client',
      opts([], { SHOAL_COORDINATOR: 'c:1', SHOAL_KEY_FIELD: 'user', SHOAL_STRICT: '1', SHOAL_JSON: 'true' }),
    )
    expect([cl.keyField, cl.strict, cl.json]).toEqual(['user', true, true])
  })
})

describe('config file', () => {
  it('relative paths resolve against the file, flags against cwd', () => {
    const dir = path.join(tmp, 'conf')
    mkdirSync(dir, { recursive: true })
    writeFileSync(path.join(dir, 'job.mjs'), 'export default {}\n')
    const file = writeJson({ job: './job.mjs', state: 'file:./snapshots', coordinator: 'c:1' }, dir)
    const w = loadConfig('worker', opts(['--config', file]))
    expect(w.job).toBe(path.join(dir, 'job.mjs'))
    expect(w.state).toEqual({
      kind: 'file',
      url: `file:${path.join(dir, 'snapshots')}`,
      dir: path.join(dir, 'snapshots'),
    })
    const w2 = loadConfig('worker', opts(['--config', file, '--state', 'file:./snapshots']))
    expect(w2.state).toMatchObject({ dir: path.join(tmp, 'snapshots') })
  })

  it('keys of other commands are ignored; null counts as unset; $schema is allowed', () => {
    const file = writeJson({ $schema: 'x', partitions: 8, workers: 4, coordinator: 'c:1', token: null })
    const w = loadConfig('worker', opts(['--config', file]))
    expect(w.token).toBeUndefined()
    expect(loadConfig('coordinator', opts(['--config', file])).partitions).toBe(8)
  })

  it('accepts JSON numbers and booleans as well as strings', () => {
    const file = writeJson({ partitions: '12', checkpointIntervalMs: 1000, tlsRequireClientCert: false })
    const c = loadConfig('coordinator', opts(['--config', file]))
    expect([c.partitions, c.checkpointIntervalMs, c.tls]).toEqual([12, 1000, undefined])
  })

  it('unknown keys are errors naming the file and the key', () => {
    const file = writeJson({ partitons: 8, help: true })
    const err = configError(() => loadConfig('coordinator', opts(['--config', file])))
    expect(err.problems).toHaveLength(2)
    expect(err.problems[0]!.message).toContain(file)
    expect(err.problems[0]!.message).toContain('unknown key "partitons"')
    expect(err.problems[1]!.message).toContain('unknown key "help"')
  })

  it('bad JSON names the file', () => {
    const file = writeJson('{ "partitions": 8, }')
    const msg = problem('coordinator', ['--config', file])
    expect(msg).toMatch(
      new RegExp(`^config file ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not valid JSON: `),
    )
  })

  it('a JSON value that is not an object names the file', () => {
    const file = writeJson('[1, 2]')
    expect(problem('coordinator', ['--config', file])).toBe(
      `config file ${file} must hold a JSON object, got an array`,
    )
  })

  it('a missing file names the file and the source', () => {
    const missing = path.join(tmp, 'nope.json')
    expect(problem('worker', [...COORD], { SHOAL_CONFIG: missing })).toBe(
      `config file ${missing} (from SHOAL_CONFIG) cannot be read (ENOENT)`,
    )
    expect(problem('worker', [...COORD, '--config', missing])).toContain('(from the command line)')
  })

  it('wrong value types name the file and key', () => {
    const file = writeJson({ partitions: 1.5, listen: 7400, json: 'maybe' })
    const err = configError(() => loadConfig('coordinator', opts(['--config', file])))
    const messages = err.problems.map((p) => p.message)
    expect(messages).toContain(
      `--partitions (from ${file}, key "partitions") must be an integer between 1 and 65536, got 1.5`,
    )
    expect(messages).toContain(`--listen (from ${file}, key "listen") must be a string, got 7400`)
    expect(err.problems.every((p) => p.source === 'file')).toBe(true)
  })
})

describe('argv', () => {
  const spec = {
    strings: new Set(['listen', 'job']),
    booleans: new Set(['json', 'help']),
    short: { h: 'help' },
  }

  it('parses --flag value, --flag=value, switches and positionals', () => {
    const p = parseArgv(['send', '--listen', 'a:1', '--job=x=y', '--json', 'file', '-', '-h'], spec)
    expect(Object.fromEntries(p.flags)).toEqual({ listen: 'a:1', job: 'x=y', json: true, help: true })
    expect(p.positionals).toEqual(['send', 'file', '-'])
    expect(p.problems).toEqual([])
  })

  it('switch values, --, last occurrence wins, values starting with a single dash', () => {
    const p = parseArgv(['--json=false', '--job', 'a', '--job', '-5', '--', '--listen', 'x'], spec)
    expect(Object.fromEntries(p.flags)).toEqual({ json: false, job: '-5' })
    expect(p.positionals).toEqual(['--listen', 'x'])
  })

  it('a switch does not consume the next argument', () => {
    const p = parseArgv(['--json', 'false'], spec)
    expect(p.flags.get('json')).toBe(true)
    expect(p.positionals).toEqual(['false'])
  })

  it('collects unknown flags, missing values and bad switch values', () => {
    const p = parseArgv(['--nope', '-x', '--json=maybe', '--listen', '--job'], spec)
    expect(p.problems.map((x) => [x.flag, x.kind])).toEqual([
      ['--nope', 'unknown'],
      ['-x', 'unknown'],
      ['--json', 'bad-boolean'],
      ['--listen', 'missing-value'],
      ['--job', 'missing-value'],
    ])
  })

  it('wantsHelp', () => {
    expect(wantsHelp(['--coordinator', 'x:1', '-h'])).toBe(true)
    expect(wantsHelp(['--help'])).toBe(true)
    expect(wantsHelp(['--', '--help'])).toBe(false)
    expect(wantsHelp([])).toBe(false)
  })
})

describe('flags', () => {
  it('an unknown flag is an error naming it', () => {
    expect(problem('worker', [...COORD, '--bogus'])).toBe('unknown flag --bogus for shoal worker')
    expect(problem('worker', [...COORD, '-z'])).toBe('unknown flag -z for shoal worker')
  })

  it("another command's flag names where it applies", () => {
    expect(problem('worker', [...COORD, '--partitions', '4'])).toBe(
      '--partitions is not a flag of shoal worker (it applies to: coordinator, up)',
    )
    expect(problem('coordinator', ['--json'])).toBe(
      '--json is not a flag of shoal coordinator (it applies to: send/status/state)',
    )
  })

  it('a value flag without its value', () => {
    expect(problem('coordinator', ['--listen'])).toBe('--listen requires a value')
  })

  it('node commands take no positionals', () => {
    expect(problem('coordinator', ['extra'])).toBe('shoal coordinator takes no arguments, got "extra"')
  })

  it('--help suppresses problems and wins', () => {
    const w = loadConfig('worker', opts(['--help', '--threads', 'x']))
    expect(w.help).toBe(true)
    expect(loadConfig('client', opts(['-h'])).help).toBe(true)
  })

  it('boolean flags and their environment values', () => {
    expect(loadConfig('up', opts(['--demo'])).demo).toBe(true)
    expect(loadConfig('up', opts(['--demo=no'], { SHOAL_DEMO: 'true' })).demo).toBe(false)
    expect(problem('up', [], { SHOAL_DEMO: 'perhaps' })).toBe(
      '--demo (from SHOAL_DEMO) must be a boolean (true/false/1/0/yes/no), got "perhaps"',
    )
    expect(problem('up', ['--demo=perhaps'])).toBe(
      '--demo takes no value or one of true/false/1/0/yes/no, got "perhaps"',
    )
  })

  it('formatFlagHelp lists exactly the flags of the command with their env', () => {
    const lines = formatFlagHelp('worker').join('\n')
    expect(lines).toContain('--coordinator VALUE')
    expect(lines).toContain('SHOAL_THREADS')
    expect(lines).not.toContain('--partitions')
    expect(formatFlagHelp('client').join('\n')).toContain('--key-field')
  })
})

describe('validation', () => {
  const int = (
    role: ConfigRole,
    flag: string,
    env: string,
    bad: string,
    range: string,
    extra: string[] = role === 'worker' ? COORD : [],
  ): void => {
    expect(problem(role, extra, { [env]: bad })).toBe(
      `--${flag} (from ${env}) must be an integer between ${range}, got ${JSON.stringify(bad)}`,
    )
  }

  it('partitions', () => {
    expect(problem('coordinator', [], { SHOAL_PARTITIONS: 'abc' })).toBe(
      '--partitions (from SHOAL_PARTITIONS) must be an integer between 1 and 65536, got "abc"',
    )
    int('coordinator', 'partitions', 'SHOAL_PARTITIONS', '0', '1 and 65536')
    int('coordinator', 'partitions', 'SHOAL_PARTITIONS', '65537', '1 and 65536')
    int('coordinator', 'partitions', 'SHOAL_PARTITIONS', '1.5', '1 and 65536')
    int('coordinator', 'partitions', 'SHOAL_PARTITIONS', '1e3', '1 and 65536')
    expect(problem('coordinator', ['--partitions', '-5'])).toBe(
      '--partitions (from the command line) must be an integer between 1 and 65536, got "-5"',
    )
    expect(loadConfig('coordinator', opts(['--partitions', '65536'])).partitions).toBe(65536)
  })

  it('threads, workers, heartbeats, checkpoint interval', () => {
    int('worker', 'threads', 'SHOAL_THREADS', '0', '1 and 1024')
    int('up', 'workers', 'SHOAL_WORKERS', '0', '1 and 64')
    int('coordinator', 'heartbeat-interval', 'SHOAL_HEARTBEAT_INTERVAL_MS', '5', '10 and 60000')
    int('coordinator', 'heartbeat-misses', 'SHOAL_HEARTBEAT_MISSES', 'three', '1 and 100')
    int('coordinator', 'checkpoint-interval', 'SHOAL_CHECKPOINT_INTERVAL_MS', '99', '100 and 3600000')
  })

  it('drain timeout must fit Kubernetes’ default grace period', () => {
    expect(problem('worker', COORD, { SHOAL_DRAIN_TIMEOUT_MS: '30000' })).toBe(
      '--drain-timeout (from SHOAL_DRAIN_TIMEOUT_MS) must be an integer between 1 and 29999 (ms; under 30000 so a drain fits Kubernetes\' default 30 s termination grace period), got "30000"',
    )
    expect(loadConfig('worker', opts([...COORD, '--drain-timeout', '29999'])).drainTimeoutMs).toBe(29999)
  })

  it('durability: log by default, none to turn the replay log off; workers only', () => {
    expect(loadConfig('worker', opts(COORD)).durability).toBe('log')
    const w = loadConfig('worker', opts([...COORD, '--durability', 'NONE']))
    expect([w.durability, w.origins.durability]).toEqual(['none', 'flag'])
    expect(loadConfig('worker', opts(COORD, { SHOAL_DURABILITY: 'none' })).durability).toBe('none')
    expect(problem('worker', COORD, { SHOAL_DURABILITY: 'fsync' })).toBe(
      '--durability (from SHOAL_DURABILITY) must be one of log, none, got "fsync"',
    )
    expect(problem('coordinator', ['--durability', 'none'])).toContain('--durability is not a flag of')
    // Other commands ignore the worker's environment variable.
    expect(() => loadConfig('coordinator', opts([], { SHOAL_DURABILITY: 'none' }))).not.toThrow()
  })

  it('durability acknowledgements (WAIT/WAITAOF): off by default; replicas, aof, timeout', () => {
    const d = loadConfig('worker', opts(COORD))
    expect([d.durabilityReplicas, d.durabilityAof, d.durabilityTimeoutMs]).toEqual([0, false, 1000])
    const w = loadConfig(
      'worker',
      opts([...COORD, '--durability-replicas', '2', '--durability-aof'], {
        SHOAL_DURABILITY_TIMEOUT_MS: '250',
      }),
    )
    expect([w.durabilityReplicas, w.durabilityAof, w.durabilityTimeoutMs]).toEqual([2, true, 250])
    expect(problem('worker', [...COORD, '--durability-replicas', '-1'])).toContain('--durability-replicas')
    expect(problem('coordinator', ['--durability-replicas', '1'])).toContain('is not a flag of')
  })

  it('transport and log level', () => {
    expect(problem('client', [...COORD, '--transport', 'udp'])).toBe(
      '--transport (from the command line) must be one of tcp, grpc, got "udp"',
    )
    expect(loadConfig('client', opts([...COORD, '--transport', 'GRPC'])).transport).toBe('grpc')
    expect(problem('coordinator', [], { SHOAL_LOG_LEVEL: 'loud' })).toBe(
      '--log-level (from SHOAL_LOG_LEVEL) must be one of fatal, error, warn, info, debug, trace, silent, got "loud"',
    )
  })

  it('listen and http addresses', () => {
    expect(problem('coordinator', ['--listen', 'nohost'])).toBe(
      '--listen (from the command line) must be HOST:PORT with a port between 0 and 65535, got "nohost"',
    )
    expect(problem('coordinator', [], { SHOAL_HTTP: '0.0.0.0:70000' })).toContain('--http (from SHOAL_HTTP)')
    expect(problem('coordinator', ['--http', 'bad host:80'])).toContain('must be HOST:PORT')
    const c = loadConfig('coordinator', opts(['--listen', ':9000', '--http', '9001']))
    expect(c.listen).toEqual({ host: '0.0.0.0', port: 9000 })
    expect(c.http).toEqual({ host: '0.0.0.0', port: 9001 })
    expect(loadConfig('coordinator', opts(['--listen', '[::1]:9000'])).listen).toEqual({
      host: '::1',
      port: 9000,
    })
  })

  it('http must not take the transport port; port 0 is always fine', () => {
    expect(problem('coordinator', ['--http', '127.0.0.1:7400'])).toBe(
      '--http (from the command line) and --listen (default) must use different ports, got "127.0.0.1:7400" and "0.0.0.0:7400"',
    )
    expect(problem('coordinator', [], { SHOAL_LISTEN: '127.0.0.1:7401' })).toBe(
      '--http (default) and --listen (from SHOAL_LISTEN) must use different ports, got "0.0.0.0:7401" and "127.0.0.1:7401"',
    )
    expect(loadConfig('worker', opts([...COORD, '--listen', ':0', '--http', ':0'])).http.port).toBe(0)
    expect(
      loadConfig('coordinator', opts(['--listen', '127.0.0.1:7400', '--http', '127.0.0.2:7400'])).http.port,
    ).toBe(7400)
  })

  it('coordinator: required, HOST:PORT to dial', () => {
    expect(problem('worker', [])).toBe(
      "--coordinator (or SHOAL_COORDINATOR) is required for shoal worker: the coordinator's HOST:PORT",
    )
    expect(problem('client', [])).toContain('required for client commands')
    for (const bad of ['coord', 'coord:0', '0.0.0.0:7400', 'a:b:c']) {
      expect(problem('worker', [], { SHOAL_COORDINATOR: bad })).toBe(
        `--coordinator (from SHOAL_COORDINATOR) must be the HOST:PORT to dial, with a port between 1 and 65535, got ${JSON.stringify(bad)}`,
      )
    }
    expect(loadConfig('client', opts(['--coordinator', ':7400'])).coordinator).toEqual({
      host: '127.0.0.1',
      port: 7400,
    })
  })

  it('advertise: derived from listen, bare host keeps the listen port, wildcards refused', () => {
    const base = [...COORD, '--listen', '0.0.0.0:7410']
    expect(loadConfig('worker', opts(base)).advertise).toEqual({ host: HOST, port: 7410 })
    expect(loadConfig('worker', opts([...COORD, '--listen', '10.1.2.3:7410'])).advertise).toEqual({
      host: '10.1.2.3',
      port: 7410,
    })
    expect(loadConfig('worker', opts([...base, '--advertise', '10.0.0.7'])).advertise).toEqual({
      host: '10.0.0.7',
      port: 7410,
    })
    expect(loadConfig('worker', opts([...base, '--advertise', 'fd00::7'])).advertise).toEqual({
      host: 'fd00::7',
      port: 7410,
    })
    expect(loadConfig('worker', opts([...base, '--advertise', 'pod.svc:9'])).advertise).toEqual({
      host: 'pod.svc',
      port: 9,
    })
    for (const bad of ['0.0.0.0', '::', ':9000', 'bad host']) {
      expect(problem('worker', [...base, '--advertise', bad])).toBe(
        `--advertise (from the command line) must be HOST or HOST:PORT that other nodes can dial (not a wildcard address), got ${JSON.stringify(bad)}`,
      )
    }
  })

  it('advertiseAddress fills in the bound port', () => {
    const w = loadConfig('worker', opts(COORD))
    expect(advertiseAddress(w, 40123)).toBe(`${HOST}:40123`)
    const w2 = loadConfig('worker', opts([...COORD, '--advertise', 'fd00::1:9']))
    expect(w2.advertise).toEqual({ host: 'fd00::1:9', port: 0 })
    const w3 = loadConfig('worker', opts([...COORD, '--advertise', '[fd00::1]:9']))
    expect(advertiseAddress(w3, 1)).toBe('[fd00::1]:9')
  })

  it('node id', () => {
    expect(problem('coordinator', ['--node-id', 'has space'])).toBe(
      '--node-id (from the command line) must be 1 to 200 printable ASCII characters without spaces, got "has space"',
    )
    expect(loadConfig('worker', opts([...COORD, '--node-id', 'w-1'])).nodeId).toBe('w-1')
  })

  it('state URLs', () => {
    const bad = (url: string, msg: string): void => {
      expect(problem('coordinator', ['--state', url])).toBe(
        `--state (from the command line) ${msg}, got ${JSON.stringify(redactUrl(url))}`,
      )
    }
    bad(
      'postgres://x',
      'must be memory:, file:DIR, redis://, rediss://, redis+sentinel:// or redis+cluster://',
    )
    bad('file:', 'must name a directory after file: (e.g. file:./data)')
    bad('redis://', 'must name a host, e.g. redis://127.0.0.1:6379')
    bad(
      'redis://:pw@a:1,b:2',
      'names several hosts; use redis+cluster:// or redis+sentinel:// for more than one',
    )
    bad('redis://h:99999', 'has an invalid host "h:99999" (HOST[:PORT], port 1..65535)')
    bad('redis://h/db', 'has an invalid database index "db"')
    bad('redis+sentinel://s1,s2', 'must name the master: redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER[/DB]')
    bad('redis+cluster://n1,n2/3', 'must not select a database: Redis Cluster has only database 0')
    bad('redis+sentinel://s/%zz', 'has a badly percent-encoded master name')
    bad('redis://%zz@h', 'has a badly percent-encoded user or password')
  })

  it('parses every state form', () => {
    expect(parseStateUrl('memory:', '/')).toEqual({ kind: 'memory', url: 'memory:' })
    expect(parseStateUrl('file:/var/lib/shoal', '/x')).toEqual({
      kind: 'file',
      url: 'file:/var/lib/shoal',
      dir: '/var/lib/shoal',
    })
    expect(parseStateUrl(pathToFileURL('/data/s').href, '/x')).toMatchObject({ dir: '/data/s' })
    expect(parseStateUrl('redis://user:p%40ss@redis:6380/2?name=x', '/')).toEqual({
      kind: 'redis',
      url: 'redis://user:p%40ss@redis:6380/2?name=x',
      mode: 'standalone',
      tls: false,
      nodes: [{ host: 'redis', port: 6380 }],
      username: 'user',
      password: 'p@ss',
      db: 2,
      masterName: undefined,
      params: { name: 'x' },
    })
    expect(parseStateUrl('rediss://:pw@r', '/')).toMatchObject({
      tls: true,
      password: 'pw',
      username: undefined,
      nodes: [{ host: 'r', port: 6379 }],
    })
    expect(parseStateUrl('redis+sentinel://s1,s2:5000/mymaster/1', '/')).toMatchObject({
      mode: 'sentinel',
      nodes: [
        { host: 's1', port: 26379 },
        { host: 's2', port: 5000 },
      ],
      masterName: 'mymaster',
      db: 1,
    })
    expect(parseStateUrl('rediss+cluster://n1:7000,n2:7001,[::1]', '/')).toMatchObject({
      mode: 'cluster',
      tls: true,
      nodes: [
        { host: 'n1', port: 7000 },
        { host: 'n2', port: 7001 },
        { host: '::1', port: 6379 },
      ],
      db: 0,
    })
  })

  it('job: built-in name or a readable module file', () => {
    expect(loadConfig('worker', opts([...COORD, '--job', 'count'])).job).toBe('count')
    expect(loadConfig('worker', opts([...COORD, '--job', 'job.mjs'])).job).toBe(jobFile)
    expect(loadConfig('worker', opts([...COORD, '--job', pathToFileURL(jobFile).href])).job).toBe(jobFile)
    expect(problem('worker', [...COORD, '--job', 'wordcount'])).toBe(
      `--job (from the command line) must be a built-in job (count) or the path of a job module; no readable file at ${path.join(tmp, 'wordcount')}, got "wordcount"`,
    )
  })

  it('token: never echoed', () => {
    const msg = problem('coordinator', [], { SHOAL_TOKEN: 'has secret space' })
    expect(msg).toBe(
      '--token (from SHOAL_TOKEN) must be 1 to 4096 characters without whitespace, got 16 characters',
    )
    expect(msg).not.toContain('secret')
    const file = writeJson({ token: '' })
    expect(problem('coordinator', ['--config', file])).toContain('got 0 characters')
  })

  it('TLS files and their combinations', () => {
    const missing = path.join(tmp, 'missing.pem')
    expect(problem('coordinator', ['--tls-cert', missing, '--tls-key', pem])).toBe(
      `--tls-cert (from the command line) must name a readable PEM file; none at ${missing}, got ${JSON.stringify(missing)}`,
    )
    expect(problem('coordinator', ['--tls-cert', pem])).toBe(
      '--tls-cert and --tls-key must be given together (--tls-key is missing)',
    )
    expect(problem('coordinator', ['--tls-cert', pem, '--tls-key', pem, '--tls-require-client-cert'])).toBe(
      '--tls-require-client-cert needs --tls-cert, --tls-key and --tls-ca (the CA that signs client certificates)',
    )
    expect(loadConfig('client', opts([...COORD, '--tls-ca', 'x.pem'])).tls).toEqual({
      cert: undefined,
      key: undefined,
      ca: pem,
      requireClientCert: false,
    })
    expect(problem('client', [...COORD, '--tls-require-client-cert'])).toContain(
      'is not a flag of client commands',
    )
  })

  it('key field must not be empty', () => {
    expect(problem('client', [...COORD, '--key-field='])).toBe(
      '--key-field (from the command line) must not be empty, got ""',
    )
  })

  it('collects every problem, not just the first', () => {
    const err = configError(() =>
      loadConfig(
        'worker',
        opts(['--bogus', '--threads', '0', 'extra'], {
          SHOAL_TRANSPORT: 'udp',
          SHOAL_STATE: 'nope',
          SHOAL_HEARTBEAT_MISSES: '0',
        }),
      ),
    )
    expect(err.problems.map((p) => p.field).sort()).toEqual(
      [
        '--bogus',
        'argv',
        '--transport',
        '--state',
        '--heartbeat-misses',
        '--threads',
        '--coordinator',
      ].sort(),
    )
    expect(err.message.split('\n')[0]).toBe('7 configuration problems for shoal worker:')
    expect(err.data).toMatchObject({ role: 'worker' })
    expect((err.data!.problems as unknown[]).length).toBe(7)
    expect(err).toBeInstanceOf(ShoalError)
  })
})

describe('node id', () => {
  it('two worker loads never share an identity', () => {
    const a = loadConfig('worker', opts(COORD))
    const b = loadConfig('worker', opts(COORD))
    expect(a.nodeId).toMatch(new RegExp(`^${HOST}-[0-9a-f]{6}$`))
    expect(b.nodeId).toMatch(new RegExp(`^${HOST}-[0-9a-f]{6}$`))
    expect(a.nodeId).not.toBe(b.nodeId)
  })

  it('POD_NAME is used when set', () => {
    const env = { POD_NAME: 'shoal-worker-7c9f' }
    expect(loadConfig('worker', opts(COORD, env)).nodeId).toMatch(/^shoal-worker-7c9f-[0-9a-f]{6}$/)
    expect(loadConfig('coordinator', opts([], { POD_NAME: 'shoal-coordinator-0' })).nodeId).toBe(
      'shoal-coordinator-0',
    )
  })

  it('an explicit node id is used verbatim; odd host names are sanitized', () => {
    expect(loadConfig('worker', opts(COORD, { SHOAL_NODE_ID: 'fixed' })).nodeId).toBe('fixed')
    const c = loadConfig('coordinator', { argv: [], env: {}, cwd: tmp, hostname: 'my host/1' })
    expect(c.nodeId).toBe('my-host-1')
  })
})

describe('describeConfig and redactUrl', () => {
  it('redacts the token and the redis password', () => {
    const c = loadConfig('coordinator', opts(['--token', 'tok', '--state', 'redis://u:secret@r:6379']))
    const d = JSON.stringify(describeConfig(c))
    expect(d).not.toContain('secret')
    expect(d).not.toContain('"tok"')
    expect(d).toContain('redis://u:***@r:6379')
    expect(c.token).toBe('tok')
  })

  it('redactUrl', () => {
    expect(redactUrl('redis://:pw@h')).toBe('redis://:***@h')
    expect(redactUrl('rediss+cluster://user@h')).toBe('rediss+cluster://***@h')
    expect(redactUrl('memory:')).toBe('memory:')
  })
})

describe('property: loading never throws anything but a config error', () => {
  const envNames = Object.values(CONFIG_FIELDS)
    .map((s) => s.env)
    .filter((e): e is string => e !== null)
  // Mostly-plausible values mixed with junk, so both valid and invalid paths run.
  const value = fc.oneof(
    fc.string({ maxLength: 40 }),
    fc.integer({ min: -10, max: 100_000 }).map(String),
    fc.constantFrom(
      'tcp',
      'grpc',
      'memory:',
      'file:x',
      'redis://h:1',
      'redis+sentinel://a/m',
      'true',
      'no',
      '127.0.0.1:0',
      '[::1]:1',
      ':',
      'count',
      'info',
      '{',
      path.join(tmp, 'nope.json'),
      jobFile,
      '%%',
      'redis://%zz@h',
      'redis+sentinel://s/%zz',
      'file://remote-host/x',
      'rediss+cluster://a,,b',
    ),
  )
  const arbEnv = fc.dictionary(fc.constantFrom(...envNames, 'POD_NAME'), value, { maxKeys: 10 })
  const arbArgv = fc.array(
    fc.oneof(
      fc.constantFrom(...Object.values(CONFIG_FIELDS).map((s) => `--${s.flag}`), '-h', '--', '-', '--x=1'),
      value,
    ),
    { maxLength: 8 },
  )

  it('random environment values and argv', () => {
    fc.assert(
      fc.property(fc.constantFrom(...CONFIG_ROLES), arbEnv, arbArgv, (role, env, argv) => {
        try {
          const c = loadConfig(role, opts(argv, env))
          expect(c.role).toBe(role)
          expect(Object.isFrozen(c)).toBe(true)
        } catch (err) {
          expect(err).toBeInstanceOf(ShoalError)
          expect((err as ShoalError).code).toBe(ErrorCodes.CONFIG_INVALID)
          expect((err as ConfigError).problems.length).toBeGreaterThan(0)
        }
      }),
      { numRuns: 500, interruptAfterTimeLimit: 4000 },
    )
  })
})
