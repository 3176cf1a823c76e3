/** Human-readable renderings for the CLI. */
import type { ClusterStatus } from '../coordinator/coordinator.ts'

export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd()
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n')
}

function bytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(0)} MiB`
  return `${Math.round(n / 1024)} KiB`
}

export function formatStatus(s: ClusterStatus): string {
  const c = s.coordinator
  const owned = s.assignment.owners.filter((o) => o !== null).length
  const head =
    `coordinator ${c.address} (${c.transport})  ${c.ready ? 'ready' : c.recovering ? 'recovering' : 'not ready'}  ` +
    `epoch ${c.epoch}  partitions ${owned}/${c.partitions} assigned  ` +
    `heartbeat ${c.heartbeatIntervalMs} ms x ${c.heartbeatMisses}`
  const rows = s.members.map((m) => [
    m.id,
    m.state,
    m.dataAddress,
    String(m.capacity),
    `${m.readyPartitions}/${m.partitions}`,
    m.state === 'alive' || m.state === 'suspect' ? `${m.heartbeatAgeMs} ms` : '-',
    String(m.missedHeartbeats),
    m.load === null ? '-' : String(Math.round(m.load.eventsPerSec)),
    m.load === null ? '-' : String(m.load.queueDepth),
    m.load === null ? '-' : bytes(m.load.rssBytes),
  ])
  const members =
    rows.length === 0
      ? '(no workers have joined)'
      : table(
          ['MEMBER', 'STATE', 'ADDRESS', 'CAP', 'PARTS', 'HB AGE', 'MISSED', 'EV/S', 'QUEUE', 'RSS'],
          rows,
        )
  return `${head}\n\n${members}\n`
}
