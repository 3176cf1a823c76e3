import { describe, expect, it, onTestFinished } from 'vitest'
import { ErrorCodes, ShoalError } from '../../src/errors.ts'
import { createStateBackend, parseStateUrl, partitionKey } from '../../src/state/index.ts'
import { MemoryBackend } from '../../src/state/memory/memory-backend.ts'
import { stateConformance } from './state-suite.ts'

stateConformance({
  name: 'memory',
  // A named store, so two backends with one prefix share state (like two processes on one Redis).
  open: (prefix) => createStateBackend('memory:conformance', { prefix }),
  concurrentOpen: true,
})

describe('memory backend', () => {
  it('memory: is private; memory:NAME is shared per name and prefix while one is open', async () => {
    const a = await createStateBackend('memory:')
    const b = await createStateBackend('memory:')
    await a.put('k', Buffer.from('a'))
    expect(await b.get('k')).toBeUndefined()
    await Promise.all([a.close(), b.close()])

    const s1 = await createStateBackend('memory:shared-x', { prefix: 'p' })
    const s2 = await createStateBackend('memory://shared-x', { prefix: 'p' })
    const other = await createStateBackend('memory:shared-x', { prefix: 'q' })
    onTestFinished(() => other.close())
    await s1.put(partitionKey(1, 'k'), Buffer.from('v'))
    expect((await s2.get(partitionKey(1, 'k')))?.toString()).toBe('v')
    expect(await other.get(partitionKey(1, 'k'))).toBeUndefined()
    await s1.close()
    expect((await s2.get(partitionKey(1, 'k')))?.toString()).toBe('v')
    await s2.close()
    const s3 = new MemoryBackend({ name: 'shared-x', prefix: 'p' })
    onTestFinished(() => s3.close())
    expect(await s3.get(partitionKey(1, 'k'))).toBeUndefined()
  })

  it('rejects a bad prefix with INVALID_OPTION', async () => {
    const err = await createStateBackend('memory:', { prefix: 'a{b}' }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ShoalError)
    expect((err as ShoalError).code).toBe(ErrorCodes.INVALID_OPTION)
    expect((err as ShoalError).message).toMatch(/prefix/)
  })
})

describe('state URLs', () => {
  it('parses memory, file and every Redis form', () => {
    expect(parseStateUrl('memory:')).toEqual({ kind: 'memory', name: undefined })
    expect(parseStateUrl('memory:w1')).toEqual({ kind: 'memory', name: 'w1' })
    expect(parseStateUrl('file:./state')).toEqual({ kind: 'file', dir: './state' })
    expect(parseStateUrl('file:/var/lib/shoal')).toEqual({ kind: 'file', dir: '/var/lib/shoal' })
    expect(parseStateUrl('file:///var/lib/my%20state')).toEqual({ kind: 'file', dir: '/var/lib/my state' })

    const r = parseStateUrl('redis://worker:p%40ss@redis.local:6380/2')
    expect(r).toMatchObject({
      kind: 'redis',
      target: {
        mode: 'standalone',
        tls: false,
        hosts: [{ host: 'redis.local', port: 6380 }],
        username: 'worker',
        password: 'p@ss',
        db: 2,
        display: 'redis://worker:***@redis.local:6380/2',
      },
    })
    expect(parseStateUrl('redis://:s3cret@h')).toMatchObject({
      target: { username: undefined, password: 's3cret', hosts: [{ host: 'h', port: 6379 }] },
    })
    expect(parseStateUrl('rediss://[::1]:7000')).toMatchObject({
      target: { tls: true, hosts: [{ host: '::1', port: 7000 }] },
    })
    expect(parseStateUrl('redis+sentinel://s1:26380,s2/mymaster/1')).toMatchObject({
      target: {
        mode: 'sentinel',
        masterName: 'mymaster',
        db: 1,
        hosts: [
          { host: 's1', port: 26380 },
          { host: 's2', port: 26379 },
        ],
      },
    })
    expect(parseStateUrl('rediss+cluster://u:p@a:7000,b:7001,c')).toMatchObject({
      target: {
        mode: 'cluster',
        tls: true,
        username: 'u',
        password: 'p',
        hosts: [
          { host: 'a', port: 7000 },
          { host: 'b', port: 7001 },
          { host: 'c', port: 6379 },
        ],
      },
    })
  })

  it.each([
    ['', 'url'],
    ['mysql://h', 'scheme'],
    ['localhost:6379', 'scheme'],
    ['redis:h', 'scheme'],
    ['file:', 'path'],
    ['file://remote/dir', 'host'],
    ['redis://', 'host'],
    ['redis://h:0', 'port'],
    ['redis://h:99999', 'port'],
    ['redis://h:abc', 'port'],
    ['redis://h/x', 'db'],
    ['redis://a:1,b:2', 'host'],
    ['redis://h?tls=1', 'query'],
    ['redis+sentinel://s1:26379', 'master'],
    ['redis+cluster://a:1/3', 'db'],
    ['redis://u:%ZZ@h', 'password'],
  ])('rejects %j naming the %s', (url, part) => {
    let err: unknown
    try {
      parseStateUrl(url)
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(ShoalError)
    expect((err as ShoalError).code).toBe(ErrorCodes.INVALID_OPTION)
    expect((err as ShoalError).data).toMatchObject({ part })
  })

  it('never puts a password in an error message', () => {
    let err: unknown
    try {
      parseStateUrl('redis://user:topsecret@h:notaport')
    } catch (e) {
      err = e
    }
    expect((err as Error).message).not.toContain('topsecret')
    expect((err as Error).message).toContain('***')
  })
})
