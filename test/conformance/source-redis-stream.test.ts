/** The Source suite against RedisStreamSource on a real redis-server (AOF on). */
import { Redis } from 'ioredis'
import { afterAll, beforeAll } from 'vitest'
import { RedisStreamSource } from '../../src/connectors/redis-stream/source.ts'
import { startRedis, type RedisServer } from '../helpers/redis.ts'
import { sourceConformance } from './source-suite.ts'

let redis: RedisServer
let r: Redis
beforeAll(async () => {
  redis = await startRedis({ aof: true })
  r = new Redis(redis.port, redis.host)
})
afterAll(async () => {
  r.disconnect()
  await redis.dispose()
})

let seq = 0
sourceConformance('redis stream', () => {
  const stream = `conf:${++seq}`
  const dlq = `${stream}:dlq`
  return Promise.resolve({
    create: (consumer: string) =>
      new RedisStreamSource({
        consumer,
        spec: {
          kind: 'redis-stream',
          redis: redis.url,
          stream,
          group: 'shoal',
          keyField: 'key',
          dataField: 'data',
          format: 'json',
          start: 'earliest',
          dlq,
          count: 1000,
        },
        scanIntervalMs: 50,
        deadIdleMs: 200,
      }),
    append: async (events: readonly object[]) => {
      const p = r.pipeline()
      for (const e of events) p.xadd(stream, '*', 'data', JSON.stringify(e))
      await p.exec()
    },
    appendUndecodable: async () => {
      await r.xadd(stream, '*', 'data', '{not json')
    },
    readDeadLetters: async () => {
      const entries = await r.xrange(dlq, '-', '+')
      return entries.map(([, fields]) => {
        const i = fields.indexOf('reason')
        return { reason: i >= 0 ? fields[i + 1]! : '' }
      })
    },
    takeoverMs: 1000,
    cleanup: async () => {
      await r.del(stream, dlq, `${stream}:shoal:shoal:readers`)
    },
  })
})
