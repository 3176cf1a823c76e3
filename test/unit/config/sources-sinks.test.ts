import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import {
  CONFIG_FIELDS,
  ConfigError,
  describeConfig,
  formatFlagHelp,
  loadConfig,
  parseArgv,
  type LoadConfigOptions,
} from '../../../src/config/index.ts'
import { ErrorCodes } from '../../../src/errors.ts'

const tmp = mkdtempSync(path.join(os.tmpdir(), 'shoal-config-urls-'))
afterAll(() => rmSync(tmp, { recursive: true, force: true }))

const COORD = ['--coordinator', 'coord:7400']
const SRC = 'redis://redis:6379?stream=events&group=shoal'
const PG = 'postgres://shoal:Secr3tPw@postgres:5432/shoal?table=shoal_state&mode=state'
const RS = 'redis://redis:6379?stream=out&maxlen=1000'

function opts(argv: string[] = [], env: Record<string, string | undefined> = {}): LoadConfigOptions {
  return { argv, env, cwd: tmp, hostname: 'h', availableParallelism: 4 }
}

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

describe('--source and --sink', () => {
  it('default to none', () => {
    const w = loadConfig('worker', opts(COORD))
    expect([w.sources, w.sinks]).toEqual([[], []])
    expect(w.origins.sources).toBe('default')
    const u = loadConfig('up', opts())
    expect([u.sources, u.sinks]).toEqual([[], []])
  })

  it('are repeatable flags, parsed, in order', () => {
    const w = loadConfig('worker', opts([...COORD, '--sink', PG, '--source', SRC, `--sink=${RS}`]))
    expect(w.sources).toEqual([
      expect.objectContaining({
        kind: 'redis-stream',
        redis: 'redis://redis:6379',
        stream: 'events',
        group: 'shoal',
      }),
    ])
    expect(w.sinks).toEqual([
      {
        kind: 'postgres',
        url: 'postgres://shoal:Secr3tPw@postgres:5432/shoal',
        table: 'shoal_state',
        mode: 'state',
      },
      { kind: 'redis-stream', redis: 'redis://redis:6379', stream: 'out', maxlen: 1000 },
    ])
    expect(w.origins).toMatchObject({ sources: 'flag', sinks: 'flag' })
    expect(Object.isFrozen(w.sinks)).toBe(true)
    expect(Object.isFrozen(w.sinks[0])).toBe(true)
    const u = loadConfig('up', opts(['--source', SRC, '--sink', 'file:out.ndjson']))
    expect(u.sources).toHaveLength(1)
    expect(u.sinks).toEqual([{ kind: 'file', path: path.join(tmp, 'out.ndjson') }])
  })

  it('SHOAL_SOURCE / SHOAL_SINK hold several URLs separated by spaces; flags win', () => {
    const env = { SHOAL_SOURCE: ` ${SRC}  `, SHOAL_SINK: `${PG} ${RS}\n file:/tmp/x.ndjson` }
    const w = loadConfig('worker', opts(COORD, env))
    expect(w.sources).toHaveLength(1)
    expect(w.sinks.map((s) => s.kind)).toEqual(['postgres', 'redis-stream', 'file'])
    expect(w.origins).toMatchObject({ sources: 'env', sinks: 'env' })
    const w2 = loadConfig('worker', opts([...COORD, '--sink', RS], env))
    expect(w2.sinks.map((s) => s.kind)).toEqual(['redis-stream'])
    expect(w2.sources).toHaveLength(1)
  })

  it('config file: an array or a space-separated string; file: paths resolve against the file', () => {
    const dir = mkdtempSync(path.join(tmp, 'conf-'))
    const file = path.join(dir, 'shoal.json')
    writeFileSync(
      file,
      JSON.stringify({ coordinator: 'c:1', sources: [SRC], sinks: `${RS} file:./out.ndjson` }),
    )
    const w = loadConfig('worker', opts(['--config', file]))
    expect(w.sources).toHaveLength(1)
    expect(w.sinks).toEqual([
      expect.objectContaining({ kind: 'redis-stream' }),
      { kind: 'file', path: path.join(dir, 'out.ndjson') },
    ])
    expect(w.origins).toMatchObject({ sources: 'file', sinks: 'file' })
    // The coordinator ignores the keys (one file serves every node).
    expect(loadConfig('coordinator', opts(['--config', file])).role).toBe('coordinator')
    writeFileSync(file, JSON.stringify({ coordinator: 'c:1', sinks: [RS, 42] }))
    expect(configError(() => loadConfig('worker', opts(['--config', file]))).message).toContain(
      'must be a URL string or an array of URL strings',
    )
  })

  it('each bad URL is a problem naming the flag, its origin, the parameter and the value, never the password', () => {
    const err = configError(() =>
      loadConfig(
        'worker',
        opts([...COORD, '--sink', 'postgres://shoal:Secr3tPw@db/app?mode=rows&table=t'], {
          SHOAL_SOURCE: `${SRC} redis://:Secr3tPw@redis?stream=s`,
        }),
      ),
    )
    expect(err.problems.map((p) => [p.field, p.source])).toEqual([
      ['--source', 'env'],
      ['--sink', 'flag'],
    ])
    expect(err.problems[0]!.message).toBe(
      '--source (from SHOAL_SOURCE) "redis://:***@redis?stream=s": missing required query parameter group (the consumer group): ?group=NAME',
    )
    expect(err.problems[1]!.message).toBe(
      '--sink (from the command line) "postgres://shoal:***@db/app?mode=rows&table=t": mode must be one of state, events, got "rows"',
    )
    expect(err.message).not.toContain('Secr3tPw')
    expect(JSON.stringify(err.data)).not.toContain('Secr3tPw')
    const maxlen = configError(() =>
      loadConfig('up', opts([], { SHOAL_SINK: 'redis://r?stream=o&maxlen=-3' })),
    )
    expect(maxlen.message).toBe(
      '--sink (from SHOAL_SINK) "redis://r?stream=o&maxlen=-3": maxlen must be a positive integer, got "-3"',
    )
    expect(
      configError(() => loadConfig('worker', opts([...COORD, '--source', 'kafka://k']))).message,
    ).toContain('unknown source scheme "kafka:"')
  })

  it('the same source or sink twice is a problem', () => {
    const err = configError(() =>
      loadConfig('worker', opts([...COORD, '--sink', RS, '--sink', 'redis://redis?maxlen=1000&stream=out'])),
    )
    expect(err.message).toContain('names the same sink twice: redis://redis:6379?stream=out&maxlen=1000')
  })

  it('are not flags of the coordinator or the clients', () => {
    expect(configError(() => loadConfig('coordinator', opts(['--sink', RS]))).message).toContain(
      '--sink is not a flag of shoal coordinator (it applies to: worker, up)',
    )
    expect(loadConfig('coordinator', opts([], { SHOAL_SINK: 'junk' })).role).toBe('coordinator')
    expect(CONFIG_FIELDS.sources).toMatchObject({
      flag: 'source',
      env: 'SHOAL_SOURCE',
      roles: ['worker', 'up'],
    })
    expect(CONFIG_FIELDS.sinks).toMatchObject({ flag: 'sink', env: 'SHOAL_SINK', roles: ['worker', 'up'] })
    expect(formatFlagHelp('worker').some((l) => l.includes('--sink URL') && l.includes('SHOAL_SINK'))).toBe(
      true,
    )
  })

  it('a missing value is an argv problem', () => {
    const err = configError(() => loadConfig('worker', opts([...COORD, '--sink'])))
    expect(err.message).toBe('--sink requires a value')
  })

  it('describeConfig shows them canonical and redacted', () => {
    const w = loadConfig('worker', opts([...COORD, '--sink', PG, '--source', SRC]))
    const d = describeConfig(w)
    expect(d.sinks).toEqual(['postgres://shoal:***@postgres:5432/shoal?table=shoal_state&mode=state'])
    expect(d.sources).toEqual([
      'redis://redis:6379?stream=events&group=shoal&key=key&field=data&format=json&start=earliest&dlq=events:dlq&count=10000',
    ])
    expect(JSON.stringify(d)).not.toContain('Secr3tPw')
  })
})

describe('parseArgv lists', () => {
  it('collects a repeatable flag; others keep the last value', () => {
    const p = parseArgv(['--sink', 'a', '--job', 'x', '--sink=b', '--job', 'y', '--sink', 'c'], {
      strings: new Set(['job']),
      booleans: new Set(),
      lists: new Set(['sink']),
    })
    expect(p.flags.get('sink')).toEqual(['a', 'b', 'c'])
    expect(p.flags.get('job')).toBe('y')
    expect(p.problems).toEqual([])
  })
})
