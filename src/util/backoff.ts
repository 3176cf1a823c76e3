/** Reconnect policy: attempt number (1-based) -> delay in ms, or null to give up. */
export type RetryDelay = (attempt: number) => number | null

export interface BackoffOptions {
  /** @default 100 */
  initialDelayMs?: number
  /** @default 5000 */
  maxDelayMs?: number
  /** @default 2 */
  factor?: number
  /** Fraction of the delay randomized away ("equal jitter"), in [0, 1]. @default 0.5 */
  jitter?: number
  /** Give up after this many attempts; Infinity retries forever. @default Infinity */
  maxAttempts?: number
}

/**
 * Jittered exponential backoff. Jitter spreads reconnect storms after a coordinator restart:
 * delay = base * (1 - jitter * random), base = min(max, initial * factor^(attempt-1)).
 */
export function exponentialBackoff(
  options: BackoffOptions = {},
  random: () => number = Math.random,
): RetryDelay {
  const initial = options.initialDelayMs ?? 100
  const max = options.maxDelayMs ?? 5000
  const factor = options.factor ?? 2
  const jitter = options.jitter ?? 0.5
  const maxAttempts = options.maxAttempts ?? Infinity
  if (!(initial >= 0)) throw new RangeError(`backoff.initialDelayMs must be >= 0 (got ${initial})`)
  if (!(max >= initial)) throw new RangeError(`backoff.maxDelayMs must be >= initialDelayMs (got ${max})`)
  if (!(factor >= 1)) throw new RangeError(`backoff.factor must be >= 1 (got ${factor})`)
  if (!(jitter >= 0 && jitter <= 1)) throw new RangeError(`backoff.jitter must be in [0, 1] (got ${jitter})`)
  if (!(maxAttempts >= 1)) throw new RangeError(`backoff.maxAttempts must be >= 1 (got ${maxAttempts})`)
  return (attempt) => {
    if (attempt > maxAttempts) return null
    const base = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt - 1)))
    return Math.round(base * (1 - jitter * random()))
  }
}
