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
import type { PumpStatus, SourcePump } from './pump.ts'
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

export const SOURCE_METRIC_NAMES = Object.freeze({
  lag: 'shoal_source_lag',
  inFlight: 'shoal_source_in_flight',
  read: 'shoal_source_read_total',
  acked: 'shoal_source_acked_total',
  deadLetters: 'shoal_source_dead_letters_total',
  redelivered: 'shoal_source_redelivered_total',
  errors: 'shoal_source_errors_total',
})

/**
 * Source metrics, read from the pumps' status() at each scrape: `shoal_source_lag` (entries
 * waiting in the source for the group, when it can tell: Redis 7 XINFO GROUPS lag),
 * `shoal_source_in_flight` (read, not yet acknowledged) and counters of records read, acked,
 * dead-lettered, re-delivered and failed reads/acks. `source` is Source.name.
 */
export function registerSourceMetrics(
  registry: Registry,
  pumps: () => readonly Pick<SourcePump, 'status'>[],
): void {
  const registers = [registry]
  const n = SOURCE_METRIC_NAMES
  const gauge = (name: string, help: string, value: (s: PumpStatus) => number | null): void => {
    new Gauge({
      name,
      help,
      labelNames: ['source'] as const,
      registers,
      collect() {
        this.reset()
        for (const p of pumps()) {
          const s = p.status()
          const v = value(s)
          if (v !== null) this.set({ source: s.name }, v)
        }
      },
    })
  }
  const counter = (name: string, help: string, value: (s: PumpStatus) => number): void => {
    new Counter({
      name,
      help,
      labelNames: ['source'] as const,
      registers,
      collect() {
        this.reset()
        for (const p of pumps()) {
          const s = p.status()
          this.inc({ source: s.name }, value(s))
        }
      },
    })
  }
  gauge(n.lag, 'Entries waiting in the source, not yet read by any reader', (s) => s.backlog)
  gauge(n.inFlight, 'Records read and not yet acknowledged', (s) => s.inFlight)
  counter(n.read, 'Records read from the source', (s) => s.read)
  counter(n.acked, 'Records acknowledged to the source (applied and durable)', (s) => s.acked)
  counter(n.deadLetters, 'Source entries sent to the dead letter', (s) => s.deadLettered)
  counter(n.redelivered, 'Records re-delivered (a dead or restarted reader held them)', (s) => s.redelivered)
  counter(n.errors, 'Failed source reads and acks', (s) => s.errors)
}
