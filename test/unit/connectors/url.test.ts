import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  ConnectorUrlError,
  describeSpec,
  parseSinkUrl,
  parseSourceUrl,
  redactConnectorUrl,
} from '../../../src/connectors/url.ts'
import { ErrorCodes, ShoalError } from '../../../src/errors.ts'

/** The ConnectorUrlError thrown by `fn`, or a failure. */
function urlError(fn: () => unknown): ConnectorUrlError {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectorUrlError)
    expect(err).toBeInstanceOf(ShoalError)
    expect((err as ConnectorUrlError).code).toBe(ErrorCodes.CONFIG_INVALID)
    return err as ConnectorUrlError
  }
  throw new Error('expected a ConnectorUrlError')
}

describe('parseSourceUrl', () => {
  it('fills in the defaults', () => {
    expect(parseSourceUrl('redis://redis:6379?stream=events&group=shoal')).toEqual({
      kind: 'redis-stream',
      redis: 'redis://redis:6379',
      stream: 'events',
      group: 'shoal',
      keyField: 'key',
      dataField: 'data',
      format: 'json',
      start: 'earliest',
      dlq: 'events:dlq',
      count: 10_000,
    })
  })

  it('takes every parameter, percent-decoded', () => {
    const s = parseSourceUrl(
      'rediss://app:p%40ss@r1:6380/3?stream=in%3A1&group=g&key=user&field=payload&format=msgpack&start=latest&dlq=bad&count=50',
    )
    expect(s).toEqual({
      kind: 'redis-stream',
      redis: 'rediss://app:p%40ss@r1:6380/3',
      stream: 'in:1',
      group: 'g',
      keyField: 'user',
      dataField: 'payload',
      format: 'msgpack',
      start: 'latest',
      dlq: 'bad',
      count: 50,
    })
  })

  it('takes every Redis form --state takes', () => {
    for (const base of [
      'redis://h',
      'rediss://h:1',
      'redis+sentinel://a:26379,b:26379/mymaster/2',
      'rediss+sentinel://a/m',
      'redis+cluster://a:7000,b:7001',
      'rediss+cluster://u:pw@a:7000',
      'REDIS://h',
    ]) {
      expect(parseSourceUrl(`${base}?stream=s&group=g`).redis).toBe(base)
    }
  })

  it('names the flag, the parameter and the value', () => {
    const cases: [string, string, string][] = [
      ['redis://h?group=g', 'stream', 'missing required query parameter stream'],
      ['redis://h?stream=s', 'group', 'missing required query parameter group'],
      ['redis://h?stream=s&group=g&format=xml', 'format', 'format must be one of json, msgpack, got "xml"'],
      ['redis://h?stream=s&group=g&start=now', 'start', 'start must be one of earliest, latest, got "now"'],
      ['redis://h?stream=s&group=g&count=0', 'count', 'got "0"'],
      ['redis://h?stream=s&group=g&count=1e3', 'count', 'got "1e3"'],
      ['redis://h?stream=s&group=g&maxlen=5', 'maxlen', 'unknown query parameter "maxlen" (value "5")'],
      ['redis://h?stream=s&group=g&stream=t', 'stream', 'given twice'],
      ['redis://h?stream=&group=g', 'stream', 'stream must not be empty'],
      ['redis://h?stream=s&group=g&dlq=s', 'dlq', 'dlq must differ'],
      ['redis://h?stream=s&group', 'group', 'needs a value'],
      ['redis://h:0?stream=s&group=g', 'port', 'port must be an integer'],
      ['redis://a,b?stream=s&group=g', 'host', 'takes one host'],
      ['redis://h/x?stream=s&group=g', 'db', 'database must be an integer'],
      ['redis+cluster://h/1?stream=s&group=g', 'db', 'a cluster has only database 0'],
      ['postgres://h/db?stream=s&group=g', 'scheme', 'unknown source scheme "postgres:"'],
      ['events', 'scheme', 'unknown source scheme (none)'],
    ]
    for (const [url, parameter, text] of cases) {
      const err = urlError(() => parseSourceUrl(url, '--source'))
      expect(err.parameter, url).toBe(parameter)
      expect(err.message, url).toContain(text)
      expect(err.message.startsWith('--source "'), url).toBe(true)
    }
    expect(urlError(() => parseSourceUrl('redis://h', '--my-flag')).message).toMatch(/^--my-flag /)
  })

  it('never shows a password', () => {
    for (const url of [
      'redis://u:Secr3tPw@h?stream=s',
      'redis://:Secr3tPw@h:99999?stream=s&group=g',
      'redis://u:Secr3tPw@h?stream=s&group=g&bogus=x',
      'redis://u:Secr/3tPw@h?stream=s&group=g',
      'redis://u:Secr?3tPw@h?stream=s&group=g',
      'redis://u:Secr#3tPw@h?stream=s&group=g',
      'redis://u:Secr 3tPw@h?stream=s&group=g',
      'redis://u:Secr@3tPw@h?stream=s&group=g',
      'redis://u:Secr%zz3tPw@h?stream=s&group=g',
      'redis://h?stream=s&group=g&password=Secr3tPw',
    ]) {
      const err = urlError(() => parseSourceUrl(url))
      expect(err.message, url).not.toMatch(/Secr|3tPw/)
      expect(JSON.stringify(err.data), url).not.toMatch(/Secr|3tPw/)
    }
  })
})

describe('parseSinkUrl', () => {
  it('Redis Stream', () => {
    expect(parseSinkUrl('redis://h:6379?stream=out')).toEqual({
      kind: 'redis-stream',
      redis: 'redis://h:6379',
      stream: 'out',
      maxlen: null,
    })
    expect(parseSinkUrl('redis+cluster://a,b?stream=out&maxlen=100000')).toMatchObject({ maxlen: 100000 })
    for (const bad of ['0', '-1', 'x', '1.5', '99999999999999999']) {
      const err = urlError(() => parseSinkUrl(`redis://h?stream=out&maxlen=${bad}`))
      expect(err.message).toBe(
        `--sink "redis://h?stream=out&maxlen=${bad}": maxlen must be a positive integer, got "${bad}"`,
      )
      expect(err.parameter).toBe('maxlen')
    }
    expect(urlError(() => parseSinkUrl('redis://h?stream=o&group=g')).parameter).toBe('group')
    expect(urlError(() => parseSinkUrl('redis://h?maxlen=3')).parameter).toBe('stream')
  })

  it('Postgres keeps the driver parameters and removes its own', () => {
    expect(
      parseSinkUrl('postgres://shoal:pw@db:5432/app?sslmode=require&table=shoal_state&application_name=x'),
    ).toEqual({
      kind: 'postgres',
      url: 'postgres://shoal:pw@db:5432/app?sslmode=require&application_name=x',
      table: 'shoal_state',
      mode: 'state',
    })
    expect(parseSinkUrl('postgresql://db/app?table=public.ev&mode=events')).toEqual({
      kind: 'postgres',
      url: 'postgresql://db/app',
      table: 'public.ev',
      mode: 'events',
    })
    const missing = urlError(() => parseSinkUrl('postgres://u:pw@db/app?tabel=t'))
    expect(missing.parameter).toBe('table')
    expect(missing.message).toContain('tabel')
    expect(urlError(() => parseSinkUrl('postgres://db/app?table=t&mode=upsert')).message).toContain(
      'mode must be one of state, events, got "upsert"',
    )
    expect(urlError(() => parseSinkUrl('postgres://db/app?table=drop%20table')).parameter).toBe('table')
    expect(urlError(() => parseSinkUrl('postgres://db/app?table=a;b')).parameter).toBe('table')
    expect(urlError(() => parseSinkUrl('postgres://db:70000/app?table=t')).parameter).toBe('port')
    expect(urlError(() => parseSinkUrl('postgres:app?table=t')).parameter).toBe('url')
  })

  it('file: and ndjson:', () => {
    expect(parseSinkUrl('file:./out.ndjson')).toEqual({ kind: 'file', path: './out.ndjson' })
    expect(parseSinkUrl('ndjson:/var/out.ndjson')).toEqual({ kind: 'file', path: '/var/out.ndjson' })
    expect(parseSinkUrl('file:///tmp/a%20b.ndjson')).toEqual({ kind: 'file', path: '/tmp/a b.ndjson' })
    expect(parseSinkUrl('file:out.ndjson', '--sink', { baseDir: '/data' })).toEqual({
      kind: 'file',
      path: '/data/out.ndjson',
    })
    expect(urlError(() => parseSinkUrl('file:')).parameter).toBe('path')
    expect(urlError(() => parseSinkUrl('file:out?maxlen=3')).parameter).toBe('path')
    expect(urlError(() => parseSinkUrl('file://remote/x')).parameter).toBe('path')
  })

  it('unknown schemes', () => {
    const err = urlError(() => parseSinkUrl('kafka://broker:9092?topic=x', '--sink'))
    expect(err.parameter).toBe('scheme')
    expect(err.message).toContain('"kafka:"')
  })

  it('never shows a password', () => {
    for (const url of [
      'postgres://u:Secr3tPw@db/app',
      'postgres://u:Secr3tPw@db/app?table=t&mode=x',
      'postgres://u:Secr/3tPw@db/app?table=t',
      'postgres://u:Secr@3tPw@db/app?table=t',
      'postgres://u:pw@db/app?password=Secr3tPw',
      'redis://:Secr3tPw@h?stream=s&maxlen=0',
    ]) {
      const err = urlError(() => parseSinkUrl(url))
      expect(err.message, url).not.toMatch(/Secr|3tPw/)
    }
  })
})

describe('describeSpec', () => {
  it('is canonical and redacted', () => {
    const a = parseSinkUrl('postgres://shoal:pw1@db:5432/app?table=s')
    const b = parseSinkUrl('POSTGRESQL://shoal:pw2@DB/app?mode=state&table=s')
    expect(describeSpec(a)).toBe('postgres://shoal:***@db:5432/app?table=s&mode=state')
    expect(describeSpec(b)).toBe(describeSpec(a))
    expect(describeSpec(parseSinkUrl('postgres://db/app?sslmode=require&table=s&password=x'))).toBe(
      'postgres://db:5432/app?table=s&mode=state&password=***&sslmode=require',
    )
    const s1 = parseSourceUrl('redis://:pw@redis?stream=events&group=shoal')
    const s2 = parseSourceUrl('redis://:other@redis:6379/0?group=shoal&format=json&stream=events')
    expect(describeSpec(s1)).toBe(
      'redis://:***@redis:6379?stream=events&group=shoal&key=key&field=data&format=json&start=earliest&dlq=events:dlq&count=10000',
    )
    expect(describeSpec(s2)).toBe(describeSpec(s1))
    expect(describeSpec(parseSourceUrl('redis://redis?stream=events&group=other'))).not.toBe(describeSpec(s1))
    expect(describeSpec(parseSinkUrl('redis+sentinel://u:pw@a,b:1/m/2?stream=o&maxlen=5'))).toBe(
      'redis+sentinel://u:***@a:26379,b:1/m/2?stream=o&maxlen=5',
    )
    expect(describeSpec(parseSinkUrl('ndjson:/x/y'))).toBe('file:/x/y')
    expect(describeSpec(parseSinkUrl('redis://h?stream=a%26b'))).toBe('redis://h:6379?stream=a%26b')
  })
})

describe('properties', () => {
  const only = (fn: () => unknown): void => {
    try {
      fn()
    } catch (err) {
      if (!(err instanceof ConnectorUrlError) || err.code !== ErrorCodes.CONFIG_INVALID) throw err
    }
  }
  const scheme = fc.constantFrom(
    'redis',
    'rediss',
    'redis+sentinel',
    'rediss+cluster',
    'redis+cluster',
    'postgres',
    'postgresql',
    'file',
    'ndjson',
    'http',
    '',
  )
  const piece = fc.oneof(
    fc.string({ maxLength: 12 }),
    fc.string({ unit: 'grapheme', maxLength: 6 }),
    fc.constantFrom(
      'stream',
      'group',
      'key',
      'field',
      'format',
      'start',
      'dlq',
      'count',
      'maxlen',
      'table',
      'mode',
      '=',
      '&',
      '?',
      '@',
      ':',
      '/',
      '%',
      '%zz',
      '#',
      ',',
      '[::1]',
      'h:6379',
      'json',
      'msgpack',
      'latest',
      'events',
      '0',
      '1',
    ),
  )
  const urlish = fc
    .tuple(scheme, fc.constantFrom('', ':', '://'), fc.array(piece, { maxLength: 14 }))
    .map(([s, sep, parts]) => `${s}${sep}${parts.join('')}`)

  it('throws only ConnectorUrlError (CONFIG_INVALID) on arbitrary strings', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string({ unit: 'binary' }), urlish), (s) => {
        only(() => parseSourceUrl(s))
        only(() => parseSinkUrl(s))
        only(() => describeSpec(parseSinkUrl(s)))
        only(() => describeSpec(parseSourceUrl(s)))
        expect(typeof redactConnectorUrl(s)).toBe('string')
      }),
      { numRuns: 1500, interruptAfterTimeLimit: 3000 },
    )
  })

  it('never shows the password of a URL, whatever surrounds it', () => {
    const password = fc
      .tuple(
        fc.stringMatching(/^[A-Za-z0-9]{4}$/),
        fc.constantFrom('', '@', '/', '?', '#', ':', '%zz', '&', '='),
        fc.stringMatching(/^[A-Za-z0-9]{4}$/),
      )
      .map(([a, mid, b]) => `Pw${a}${mid}${b}Zq`)
    fc.assert(
      fc.property(
        fc.constantFrom('redis', 'rediss+cluster', 'redis+sentinel', 'postgres'),
        password,
        fc.array(piece, { maxLength: 8 }),
        (s, pw, rest) => {
          const url = `${s}://user:${pw}@${rest.join('')}`
          for (const parse of [parseSourceUrl, parseSinkUrl]) {
            try {
              const spec = parse(url)
              expect(describeSpec(spec)).not.toContain(pw)
            } catch (err) {
              if (!(err instanceof ConnectorUrlError)) throw err
              for (const part of pw.split(/[^A-Za-z0-9]+/)) {
                expect(err.message, url).not.toContain(part)
                expect(JSON.stringify(err.data), url).not.toContain(part)
              }
            }
          }
        },
      ),
      { numRuns: 2000, interruptAfterTimeLimit: 4000 },
    )
  })

  it('parameter order and defaults do not change the description', () => {
    const opt = fc.record(
      {
        key: fc.constantFrom('key', 'user'),
        format: fc.constantFrom('json', 'msgpack', 'JSON'),
        start: fc.constantFrom('earliest', 'latest'),
        count: fc.integer({ min: 1, max: 100000 }).map(String),
      },
      { requiredKeys: [] },
    )
    fc.assert(
      fc.property(opt, fc.infiniteStream(fc.nat()), (o, rnd) => {
        const pairs = [['stream', 's'], ['group', 'g'], ...Object.entries(o)]
        const shuffled = [...pairs].sort(() => (rnd.next().value % 3) - 1)
        const a = parseSourceUrl(`redis://h?${pairs.map(([k, v]) => `${k}=${v}`).join('&')}`)
        const b = parseSourceUrl(`redis://h:6379/0?${shuffled.map(([k, v]) => `${k}=${v}`).join('&')}`)
        expect(describeSpec(b)).toBe(describeSpec(a))
        expect(describeSpec(parseSourceUrl(describeSpec(a)))).toBe(describeSpec(a))
      }),
      { numRuns: 300 },
    )
  })
})
