/**
 * Sink metrics, read from the runners' status() when the registry is scraped (nothing to update
 * on the write path):
 *
 * | name                           | type    | labels | value                                   |
 * |--------------------------------|---------|--------|-----------------------------------------|
 * | shoal_sink_lag                 | gauge   | sink   | records buffered, not yet written       |
 * | shoal_sink_written_total       | counter | sink   | records written                         |
 * | shoal_sink_errors_total        | counter | sink   | failed write / dead-letter / open tries |
 * | shoal_sink_dead_letters_total  | counter | sink   | records sent to the dead letter         |
 *
 * `sink` is Sink.name. Runners that are gone from the list disappear from the next scrape.
 */
import { Counter, Gauge, type Registry } from 'prom-client'
import type { SinkRunner, SinkStatus } from './runner.ts'

export const SINK_METRIC_NAMES = Object.freeze({
  lag: 'shoal_sink_lag',
  written: 'shoal_sink_written_total',
  errors: 'shoal_sink_errors_total',
  deadLetters: 'shoal_sink_dead_letters_total',
})

/** The runners to report: a fixed list, or a function for a list that changes. */
export type SinkRunnerSource =
  readonly Pick<SinkRunner, 'status'>[] | (() => readonly Pick<SinkRunner, 'status'>[])

/** Register the sink metrics on `registry`, reading `runners` at each scrape. */
export function registerSinkMetrics(registry: Registry, runners: SinkRunnerSource): void {
  const registers = [registry]
  const list = (): SinkStatus[] =>
    (typeof runners === 'function' ? runners() : runners).map((r) => r.status())
  const n = SINK_METRIC_NAMES
  new Gauge({
    name: n.lag,
    help: 'Records buffered for a sink and not yet written',
    labelNames: ['sink'] as const,
    registers,
    collect() {
      this.reset()
      for (const s of list()) this.set({ sink: s.name }, s.lag)
    },
  })
  // Counters mirror the runners' own totals, which only grow.
  const counter = (name: string, help: string, value: (s: SinkStatus) => number): void => {
    new Counter({
      name,
      help,
      labelNames: ['sink'] as const,
      registers,
      collect() {
        this.reset()
        for (const s of list()) this.inc({ sink: s.name }, value(s))
      },
    })
  }
  counter(n.written, 'Records written by a sink', (s) => s.written)
  counter(n.errors, 'Failed sink write, dead-letter and open attempts', (s) => s.errors)
  counter(n.deadLetters, 'Records a sink sent to its dead letter', (s) => s.deadLettered)
}
