/** The Source suite against MemorySource (an in-process stream with consumer groups). */
import { MemorySource, MemoryStream } from '../../src/connectors/memory/source.ts'
import { sourceConformance } from './source-suite.ts'

sourceConformance('memory', () => {
  const stream = new MemoryStream('conformance')
  return Promise.resolve({
    create: (consumer: string) => new MemorySource({ stream, consumer, deadIdleMs: 100 }),
    append: (events: readonly object[]) => {
      stream.append(events)
      return Promise.resolve()
    },
    appendUndecodable: () => {
      stream.append([{ value: 'no key' }])
      return Promise.resolve()
    },
    readDeadLetters: () => Promise.resolve(stream.deadLetters.map((d) => ({ reason: d.reason }))),
    takeoverMs: 100,
    cleanup: () => Promise.resolve(),
  })
})
