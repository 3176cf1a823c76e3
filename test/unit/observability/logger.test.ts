import { Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { createLogger } from '../../../src/observability/logger.ts'

function sink(): { stream: Writable; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = []
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk.toString('utf8'))
      cb()
    },
  })
  return {
    stream,
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  }
}

describe('createLogger', () => {
  it('writes one JSON object per line with level label, name, node id and ISO time', () => {
    const s = sink()
    const log = createLogger({ name: 'worker', nodeId: 'w-1', level: 'info', destination: s.stream })
    log.info({ partitions: 3 }, 'joined')
    log.debug('hidden')
    const [line, ...rest] = s.lines()
    expect(rest).toEqual([])
    expect(line).toMatchObject({
      level: 'info',
      name: 'worker',
      nodeId: 'w-1',
      pid: process.pid,
      partitions: 3,
      msg: 'joined',
    })
    expect(new Date(line!.time as string).toISOString()).toBe(line!.time)
  })

  it('honours the level and child bindings', () => {
    const s = sink()
    const log = createLogger({ name: 'coordinator', level: 'debug', destination: s.stream })
    log.child({ component: 'transport' }).debug('dialing')
    expect(s.lines()[0]).toMatchObject({ level: 'debug', component: 'transport', msg: 'dialing' })
    expect(s.lines()[0]).not.toHaveProperty('nodeId')
    const quiet = createLogger({ name: 'x', level: 'silent', destination: s.stream })
    quiet.fatal('nothing')
    expect(s.lines()).toHaveLength(1)
  })

  it('redacts secrets', () => {
    const s = sink()
    const log = createLogger({ name: 'worker', destination: s.stream })
    log.info(
      {
        token: 'abc',
        config: { token: 'abc', password: 'pw' },
        req: { headers: { authorization: 'Bearer x' } },
      },
      'x',
    )
    const text = JSON.stringify(s.lines())
    expect(text).not.toContain('abc')
    expect(text).not.toContain('pw')
    expect(text).not.toContain('Bearer')
  })

  it('defaults to info on stderr', () => {
    const log = createLogger({ name: 'worker' })
    expect(log.level).toBe('info')
  })
})
