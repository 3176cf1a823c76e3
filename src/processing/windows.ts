/**
 * Window assigners for event-time jobs (docs/time.md). A spec is plain data: it crosses into the
 * processing threads with the job module and is validated once, by `defineJob`.
 */

export interface TumblingWindow {
  readonly kind: 'tumbling'
  readonly sizeMs: number
}
export interface SlidingWindow {
  readonly kind: 'sliding'
  readonly sizeMs: number
  readonly slideMs: number
}
export interface SessionWindow {
  readonly kind: 'session'
  readonly gapMs: number
}
export type WindowSpec = TumblingWindow | SlidingWindow | SessionWindow

/** The window a windowed job's `process` is folding an event into: `[start, end)` in ms. */
export interface WindowRef {
  readonly start: number
  readonly end: number
}

function positiveMs(where: string, field: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new TypeError(
      `${where}: ${field} must be a positive integer number of milliseconds (got ${describe(v)})`,
    )
  }
  return v
}

function describe(v: unknown): string {
  if (typeof v === 'number' || typeof v === 'boolean') return String(v)
  if (typeof v === 'string') return JSON.stringify(v)
  return v === null ? 'null' : typeof v
}

export const windows = {
  /** Fixed, non-overlapping windows `[k * sizeMs, (k + 1) * sizeMs)`. */
  tumbling(options: { sizeMs: number }): TumblingWindow {
    return Object.freeze({
      kind: 'tumbling',
      sizeMs: positiveMs('windows.tumbling', 'sizeMs', options?.sizeMs),
    })
  },
  /** Windows of `sizeMs` starting every `slideMs`; an event belongs to `sizeMs / slideMs` of them. */
  sliding(options: { sizeMs: number; slideMs: number }): SlidingWindow {
    const sizeMs = positiveMs('windows.sliding', 'sizeMs', options?.sizeMs)
    const slideMs = positiveMs('windows.sliding', 'slideMs', options?.slideMs)
    if (slideMs > sizeMs) {
      throw new TypeError(`windows.sliding: slideMs (${slideMs}) must not exceed sizeMs (${sizeMs})`)
    }
    return Object.freeze({ kind: 'sliding', sizeMs, slideMs })
  },
  /** Per key, events at most `gapMs` apart form one session `[first, last + gapMs)`. */
  session(options: { gapMs: number }): SessionWindow {
    return Object.freeze({ kind: 'session', gapMs: positiveMs('windows.session', 'gapMs', options?.gapMs) })
  },
}

/** Check a window spec that may not come from `windows.*` (a job written by hand). */
export function validateWindow(spec: unknown): WindowSpec {
  if (typeof spec !== 'object' || spec === null) {
    throw new TypeError(
      `defineJob: window must be windows.tumbling/sliding/session(...) (got ${describe(spec)})`,
    )
  }
  const s = spec as Record<string, unknown>
  switch (s.kind) {
    case 'tumbling':
      return windows.tumbling({ sizeMs: s.sizeMs as number })
    case 'sliding':
      return windows.sliding({ sizeMs: s.sizeMs as number, slideMs: s.slideMs as number })
    case 'session':
      return windows.session({ gapMs: s.gapMs as number })
    default:
      throw new TypeError(
        `defineJob: window.kind must be 'tumbling', 'sliding' or 'session' (got ${describe(s.kind)})`,
      )
  }
}
