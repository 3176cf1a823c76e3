/**
 * The coordinator's dashboard in a real browser (Debian's chromium through playwright-core)
 * against a real cluster of processes: every worker named and alive; a worker killed with
 * SIGKILL shown dead and its partitions moved without a reload; every request to the
 * coordinator's own origin; no console errors; the token asked for, a wrong one refused, the
 * right one accepted and never put in a URL; a coordinator restart ridden out. Screenshots go
 * to .tmp/ (light and dark); with SHOAL_UPDATE_SCREENSHOTS=1 one is copied to docs/dashboard.png.
 */
import { copyFileSync, mkdirSync } from 'node:fs'
import type { Browser, Page } from 'playwright-core'
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from 'vitest'
import type { ClusterStatus } from '../../src/coordinator/coordinator.ts'
import { launchChromium } from '../helpers/browser.ts'
import { freePort, killAll, startShoal, waitSettled, type ShoalProcess } from '../helpers/processes.ts'

const HB = ['--heartbeat-interval', '200', '--heartbeat-misses', '3']
/** SHOAL_UPDATE_SCREENSHOTS=1 copies the failover screenshot to docs/dashboard.png (for the README). */
const UPDATE_SCREENSHOTS = process.env.SHOAL_UPDATE_SCREENSHOTS === '1'

let browser: Browser

beforeAll(async () => {
  mkdirSync('.tmp', { recursive: true })
  browser = await launchChromium()
}, 60_000)

afterAll(async () => {
  await browser?.close()
})

afterEach(killAll)

function coordinator(extra: string[] = [], env: Record<string, string> = {}): Promise<ShoalProcess> {
  return startShoal(['coordinator', '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', ...HB, ...extra], env)
}

function worker(c: ShoalProcess, env: Record<string, string> = {}): Promise<ShoalProcess> {
  return startShoal(
    [
      'worker',
      '--coordinator',
      c.info.address,
      '--listen',
      '127.0.0.1:0',
      '--http',
      '127.0.0.1:0',
      '--threads',
      '1',
      ...HB,
    ],
    env,
  )
}

async function status(c: ShoalProcess, token?: string): Promise<ClusterStatus> {
  const res = await fetch(`http://${c.info.http}/status`, {
    headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(3000),
  })
  return (await res.json()) as ClusterStatus
}

/** Every worker alive, every partition owned by one of them and ready. */
function settled(c: ShoalProcess, n: number, token?: string): Promise<ClusterStatus> {
  return waitSettled(() => status(c, token), n)
}

interface Watched {
  page: Page
  /** Console errors and uncaught exceptions. */
  errors: string[]
  /** Requests to anywhere but the coordinator's origin. */
  offsite: string[]
  /** Every request URL (to check the token never appears in one). */
  urls: string[]
  loads: () => number
}

async function open(c: ShoalProcess, colorScheme: 'light' | 'dark' = 'light'): Promise<Watched> {
  const base = `http://${c.info.http}`
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, colorScheme })
  const page = await context.newPage()
  const errors: string[] = []
  const offsite: string[] = []
  const urls: string[] = []
  let loads = 0
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`${m.text()} (${m.location().url})`)
  })
  page.on('pageerror', (e) => errors.push(e.message))
  page.on('request', (r) => {
    urls.push(r.url())
    // data: URLs (the page's empty favicon) never leave the browser.
    if (!r.url().startsWith('data:') && new URL(r.url()).origin !== base) offsite.push(r.url())
  })
  page.on('websocket', (w) => offsite.push(w.url()))
  page.on('load', () => loads++)
  await page.goto(base + '/')
  return { page, errors, offsite, urls, loads: () => loads }
}

/** POST events to the coordinator until stopped, so the charts have something to show. */
function feed(c: ShoalProcess): { stop(): Promise<void> } {
  let stopped = false
  let n = 0
  const loop = (async () => {
    while (!stopped) {
      const lines = Array.from({ length: 200 }, () => JSON.stringify({ key: `k${n++ % 500}`, n })).join('\n')
      await fetch(`http://${c.info.http}/events`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-ndjson' },
        body: lines,
        signal: AbortSignal.timeout(3000),
      }).then(
        (r) => r.arrayBuffer(),
        () => undefined, // during a failover: retried by the next round
      )
      await new Promise((r) => setTimeout(r, 100))
    }
  })()
  return {
    stop: async () => {
      stopped = true
      await loop
    },
  }
}

const memberRow = (page: Page, id: string, state: string) =>
  page.locator(`#members tbody tr[data-member="${id}"][data-state="${state}"]`)

describe('dashboard', { timeout: 120_000 }, () => {
  it('names every worker alive, then shows a killed one dead and its partitions moved, live', async () => {
    const c = await coordinator()
    const workers = await Promise.all([worker(c), worker(c), worker(c)])
    await settled(c, 3)
    const load = feed(c)
    onTestFinished(() => load.stop())
    const w = await open(c)
    const { page } = w

    for (const wk of workers) {
      const row = memberRow(page, wk.info.nodeId, 'alive')
      await row.waitFor({ timeout: 10_000 })
      expect(await row.innerText()).toContain(wk.info.nodeId)
      expect(await row.innerText()).toContain('alive')
    }
    await expect.poll(() => page.locator('#partition-map li').count(), { timeout: 5000 }).toBe(256)
    await expect.poll(() => page.locator('#connection').innerText(), { timeout: 5000 }).toContain('Live')
    // Charts fill from the coordinator's history.
    await page.locator('#chart-eps svg path.series').first().waitFor({ state: 'attached', timeout: 10_000 })
    await expect
      .poll(() => page.locator('#summary').innerText(), { timeout: 10_000 })
      .toMatch(/Events\/s\s+[1-9]/)
    await page.screenshot({ path: '.tmp/dashboard-light.png', fullPage: true })
    await page.emulateMedia({ colorScheme: 'dark' })
    await page.screenshot({ path: '.tmp/dashboard-dark.png', fullPage: true })
    await page.emulateMedia({ colorScheme: 'light' })

    // A marker a reload would clear.
    await page.evaluate('window.__notReloaded = 42')
    const victim = workers[1]
    const victimId = victim.info.nodeId
    const owned = await page.locator(`#partition-map li[data-owner="${victimId}"]`).count()
    expect(owned).toBeGreaterThan(0)
    victim.signal('SIGKILL')

    await memberRow(page, victimId, 'dead').waitFor({ timeout: 15_000 })
    expect(await memberRow(page, victimId, 'dead').innerText()).toContain('dead')
    await expect
      .poll(() => page.locator(`#partition-map li[data-owner="${victimId}"]`).count(), { timeout: 15_000 })
      .toBe(0)
    // Its partitions are highlighted as moved and listed as moves from it.
    expect(await page.locator('#partition-map li.moved').count()).toBeGreaterThanOrEqual(owned)
    await expect
      .poll(() => page.locator('#moves').innerText(), { timeout: 5000 })
      .toContain(`from ${victimId}`)
    for (const wk of [workers[0], workers[2]]) {
      await memberRow(page, wk.info.nodeId, 'alive').waitFor({ timeout: 5000 })
    }
    expect(await page.evaluate<number>('window.__notReloaded')).toBe(42)
    expect(w.loads()).toBe(1)
    await page.screenshot({ path: '.tmp/dashboard-failover.png', fullPage: true })
    await page.emulateMedia({ colorScheme: 'dark' })
    await page.screenshot({ path: '.tmp/dashboard-failover-dark.png', fullPage: true })
    if (UPDATE_SCREENSHOTS) copyFileSync('.tmp/dashboard-failover.png', 'docs/dashboard.png')

    expect(w.errors).toEqual([])
    expect(w.offsite).toEqual([])
    await page.context().close()
  })

  it('with a token: asks for it, refuses a wrong one, accepts the right one, never in a URL', async () => {
    const token = 'dashboard-secret-' + 'x'.repeat(16)
    const c = await coordinator([], { SHOAL_TOKEN: token })
    const wk = await worker(c, { SHOAL_TOKEN: token })
    await settled(c, 1, token)
    const w = await open(c)
    const { page } = w

    // Asked for, and nothing shown before it is given.
    const input = page.locator('#login input[type=password]')
    await input.waitFor({ timeout: 5000 })
    expect(await page.locator('#content').isHidden()).toBe(true)
    expect(await page.locator('#login').innerText()).toContain('token')

    await input.fill('not-the-token')
    await input.press('Enter')
    await expect
      .poll(() => page.locator('#login-error').innerText(), { timeout: 5000 })
      .toContain('Wrong token')
    expect(await page.locator('#content').isHidden()).toBe(true)
    await page.screenshot({ path: '.tmp/dashboard-token.png' })

    await input.fill(token)
    await input.press('Enter')
    await memberRow(page, wk.info.nodeId, 'alive').waitFor({ timeout: 10_000 })
    expect(await page.locator('#login').isHidden()).toBe(true)
    expect(await page.evaluate<string | null>(`sessionStorage.getItem('shoal.dashboard.token')`)).toBe(token)

    expect(w.urls.filter((u) => u.includes(token) || u.includes('not-the-token'))).toEqual([])
    expect(w.offsite).toEqual([])
    // The only console errors are the browser's report of the refused wrong token.
    expect(w.errors.filter((e) => !/status of 401/.test(e))).toEqual([])
    expect(w.errors.length).toBeGreaterThan(0)

    // A reload in the same tab keeps the token (session storage) and asks nothing.
    await page.reload()
    await memberRow(page, wk.info.nodeId, 'alive').waitFor({ timeout: 10_000 })
    expect(await page.locator('#login').isHidden()).toBe(true)
    await page.context().close()
  })

  it('rides out a coordinator restart: shows reconnecting, then live again without a reload', async () => {
    const [listen, http] = await Promise.all([freePort(), freePort()])
    const args = ['--listen', `127.0.0.1:${listen}`, '--http', `127.0.0.1:${http}`]
    const start = (): Promise<ShoalProcess> => startShoal(['coordinator', ...args, ...HB])
    let c = await start()
    const workers = await Promise.all([worker(c), worker(c)])
    await settled(c, 2)
    const w = await open(c)
    const { page } = w
    await memberRow(page, workers[0].info.nodeId, 'alive').waitFor({ timeout: 10_000 })
    await page.evaluate('window.__notReloaded = 7')

    c.signal('SIGKILL')
    await c.exited
    await expect
      .poll(() => page.locator('#connection').innerText(), { timeout: 10_000 })
      .toContain('Reconnecting')
    await page.screenshot({ path: '.tmp/dashboard-reconnecting.png' })

    c = await start()
    await expect.poll(() => page.locator('#connection').innerText(), { timeout: 15_000 }).toContain('Live')
    for (const wk of workers) await memberRow(page, wk.info.nodeId, 'alive').waitFor({ timeout: 20_000 })
    expect(await page.evaluate<number>('window.__notReloaded')).toBe(7)
    expect(w.loads()).toBe(1)
    expect(w.offsite).toEqual([])
    // Refused and cut connections while the coordinator was down are the only errors.
    expect(
      w.errors.filter(
        (e) =>
          !/net::ERR_(CONNECTION_REFUSED|INCOMPLETE_CHUNKED_ENCODING|EMPTY_RESPONSE|CONNECTION_RESET)/.test(
            e,
          ),
      ),
    ).toEqual([])
    await page.context().close()
  })
})
