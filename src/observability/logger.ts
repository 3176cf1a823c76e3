/**
 * The node logger: pino, one JSON object per line on stderr (stdout stays free for the CLI's
 * machine-readable output, e.g. the `{"shoal":"listening",...}` line). Level names are written
 * as labels (`"level":"info"`), times as ISO strings, and secrets under the usual keys are
 * redacted. Components take `logger.child({ component: 'transport' })`.
 */
import { pino, type DestinationStream, type LevelWithSilent, type Logger } from 'pino'

export type { Logger } from 'pino'

export interface LoggerOptions {
  /** @default 'info' */
  level?: LevelWithSilent
  /** Logger name, usually the role ('coordinator', 'worker'). */
  name: string
  nodeId?: string
  /** Where lines go. @default stderr, written synchronously so nothing is lost at exit */
  destination?: DestinationStream
}

/** Paths pino censors in every log line. */
export const REDACTED_PATHS: readonly string[] = [
  'token',
  '*.token',
  'password',
  '*.password',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'req.headers.authorization',
]

export function createLogger(options: LoggerOptions): Logger {
  const destination = options.destination ?? pino.destination({ dest: 2, sync: true })
  return pino(
    {
      name: options.name,
      level: options.level ?? 'info',
      base: { pid: process.pid, ...(options.nodeId !== undefined ? { nodeId: options.nodeId } : {}) },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: [...REDACTED_PATHS], censor: '***' },
    },
    destination,
  )
}
