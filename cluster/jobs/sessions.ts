/**
 * User sessions: a key's events at most 30 minutes apart form one session (docs/time.md,
 * "Sessions"). When a session closes (the watermark passes its last event + 30 min) its result
 * is emitted on stream `windows`: { key, start, end, state: { events, pages } }.
 *
 *   shoal up --job ./cluster/jobs/sessions.ts
 *
 * `merge` combines two sessions that a late event bridges, so a session keeps only its summary,
 * not its events.
 */
import { defineJob, windows } from 'shoal'

interface Session {
  events: number
  pages: string[]
}

export default defineJob({
  name: 'sessions',
  eventTime: (e: { ts: number }) => e.ts,
  watermark: { outOfOrdernessMs: 5_000, idleMs: 60_000 },
  window: windows.session({ gapMs: 30 * 60_000 }),
  allowedLatenessMs: 60_000,
  init: (): Session => ({ events: 0, pages: [] }),
  process(s: Session, e: { page?: string }) {
    s.events++
    if (typeof e.page === 'string' && !s.pages.includes(e.page) && s.pages.length < 50) s.pages.push(e.page)
  },
  merge(a: Session, b: Session): Session {
    const pages = [...a.pages]
    for (const p of b.pages) if (!pages.includes(p) && pages.length < 50) pages.push(p)
    return { events: a.events + b.events, pages }
  },
})
