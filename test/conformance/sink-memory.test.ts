/** The Sink suite against MemorySink (events and state, effectively once). */
import { MemorySink } from '../../src/connectors/memory/sink.ts'
import { sinkConformance } from './sink-suite.ts'

sinkConformance(
  'memory',
  () => {
    const sink = new MemorySink()
    return Promise.resolve({
      sink,
      read: () =>
        Promise.resolve({
          events: sink.records.map((r) => ({ ...r })),
          state: new Map([...sink.rows].map(([k, r]) => [k, { state: r.state, version: r.version }])),
        }),
      readDeadLetters: () =>
        Promise.resolve(
          sink.deadLetters.map((d) => ({
            partition: d.partition,
            offset: d.offset,
            index: d.index,
            stream: d.record[0],
            key: d.record[1],
            event: d.record[2],
            error: d.error,
            attempts: d.attempts,
          })),
        ),
      cleanup: () => Promise.resolve(),
    })
  },
  { effectivelyOnce: true },
)
