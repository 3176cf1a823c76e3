// Shoal dashboard: reads the coordinator's state stream (GET /dashboard/events, Server-Sent
// Events read with fetch so the token travels in the Authorization header, never in a URL) and
// draws it. No framework and no other file: everything is served by the coordinator.
/* global document, sessionStorage, fetch, TextDecoderStream, AbortController, setTimeout, clearTimeout, setInterval */

const TOKEN_KEY = 'shoal.dashboard.token'
const SVG = 'http://www.w3.org/2000/svg'
const NEEDS_TOKEN = document.querySelector('meta[name="shoal-auth"]')?.getAttribute('content') === 'token'
/** A live stream silent for this long is dropped and dialled again (a hung or vanished coordinator). */
const SILENCE_MS = 5000
const DASHES = ['', '6 3', '2 3', '9 3 2 3', '1 3', '12 4', '4 2 1 2', '3 6']
const STATE_SYMBOL = { alive: '●', suspect: '◐', dead: '✕', left: '↓', draining: '↘' }

let token = sessionStorage.getItem(TOKEN_KEY)
let state = null
let history = []
let attempt = 0
let controller = null
let retryTimer = null
let lastMessageAt = 0
let live = false

const $ = (id) => document.getElementById(id)

// --- DOM helpers --------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue
    if (k === 'class') el.className = v
    else if (k === 'text') el.textContent = v
    else el.setAttribute(k, v === true ? '' : String(v))
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c)
  return el
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue
    if (k === 'text') el.textContent = v
    else el.setAttribute(k, String(v))
  }
  for (const c of children) if (c) el.append(c)
  return el
}

// --- formatting ---------------------------------------------------------------------------------

const nf = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 })
function num(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–'
  if (Math.abs(n) >= 1e6) return nf.format(n / 1e6) + ' M'
  if (Math.abs(n) >= 1e4) return nf.format(n / 1e3) + ' k'
  return nf.format(n)
}
function bytes(n) {
  if (n === null || n === undefined) return '–'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024
    i++
  }
  return `${nf.format(n)} ${units[i]}`
}
function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '–'
  if (ms < 1000) return `${Math.round(ms)} ms`
  const s = ms / 1000
  if (s < 60) return `${nf.format(s)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`
  const hours = Math.floor(m / 60)
  if (hours < 48) return `${hours} h ${m % 60} min`
  return `${Math.floor(hours / 24)} d ${hours % 24} h`
}
function clock(ms) {
  return new Date(ms).toLocaleTimeString()
}
function ago(iso) {
  const t = Date.parse(iso)
  if (!Number.isFinite(t) || state === null) return '–'
  return `${duration(Math.max(0, state.now - t))} ago`
}

// --- connection ---------------------------------------------------------------------------------

function setConnection(kind, text) {
  const el = $('connection')
  el.dataset.state = kind
  $('connection-text').textContent = text
}

function showLogin(message) {
  live = false
  $('content').hidden = true
  $('login').hidden = false
  $('forget-token').hidden = true
  $('login-error').textContent = message
  setConnection('auth', 'Token needed')
  $('coordinator').textContent = 'Coordinator: waiting for the token'
  $('token').focus()
}

function scheduleRetry(reason) {
  live = false
  $('content').classList.add('stale')
  attempt++
  const delay = Math.min(2000, 250 * 2 ** Math.min(attempt - 1, 3))
  setConnection('reconnecting', `Reconnecting… (attempt ${attempt}${reason ? `: ${reason}` : ''})`)
  clearTimeout(retryTimer)
  retryTimer = setTimeout(connect, delay)
}

async function connect() {
  clearTimeout(retryTimer)
  controller?.abort()
  if (NEEDS_TOKEN && !token) {
    showLogin('')
    return
  }
  const ctrl = new AbortController()
  controller = ctrl
  const headers = { accept: 'text/event-stream' }
  if (token) headers.authorization = `Bearer ${token}`
  if (attempt === 0 && state === null) setConnection('connecting', 'Connecting…')
  let res
  try {
    res = await fetch('/dashboard/events', { headers, cache: 'no-store', signal: ctrl.signal })
  } catch {
    if (controller === ctrl) scheduleRetry('coordinator unreachable')
    return
  }
  if (res.status === 401) {
    const sent = Boolean(token)
    token = null
    sessionStorage.removeItem(TOKEN_KEY)
    showLogin(sent ? 'Wrong token: the coordinator refused it (401). Check it and try again.' : '')
    return
  }
  if (!res.ok || !res.body) {
    scheduleRetry(`HTTP ${res.status}`)
    return
  }
  attempt = 0
  live = true
  lastMessageAt = Date.now()
  $('login').hidden = true
  $('forget-token').hidden = !NEEDS_TOKEN && !token
  setConnection('live', 'Live')
  try {
    await readEvents(res.body, ctrl)
  } catch {
    // the stream broke: dial again below
  }
  if (controller === ctrl) scheduleRetry('stream ended')
}

async function readEvents(body, ctrl) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader()
  ctrl.signal.addEventListener('abort', () => void reader.cancel().catch(() => {}), { once: true })
  let buf = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    buf += value
    let i
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i)
      buf = buf.slice(i + 2)
      let event = 'message'
      const data = []
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim()
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''))
      }
      if (event === 'state' && data.length > 0) onState(JSON.parse(data.join('\n')))
    }
  }
}

function onState(s) {
  lastMessageAt = Date.now()
  if (s.historyReset) history = s.history
  else {
    history.push(...s.history)
    if (history.length > s.historySamples) history.splice(0, history.length - s.historySamples)
  }
  state = s
  $('content').hidden = false
  $('content').classList.remove('stale')
  render()
}

setInterval(() => {
  if (live && Date.now() - lastMessageAt > SILENCE_MS) {
    controller?.abort()
    scheduleRetry('no update for 5 s')
  }
}, 1000)

$('login-form').addEventListener('submit', (e) => {
  e.preventDefault()
  const value = $('token').value.trim()
  if (value === '') {
    $('login-error').textContent = 'Enter the token first.'
    return
  }
  token = value
  sessionStorage.setItem(TOKEN_KEY, value)
  $('token').value = ''
  $('login-error').textContent = ''
  setConnection('connecting', 'Checking the token…')
  attempt = 0
  void connect()
})

$('forget-token').addEventListener('click', () => {
  controller?.abort()
  controller = null
  token = null
  sessionStorage.removeItem(TOKEN_KEY)
  showLogin('Token forgotten.')
})

// --- rendering ----------------------------------------------------------------------------------

/** Members keep a number (and a colour) in list order: the number is the label, colour extra. */
function memberIndex() {
  const m = new Map()
  state.members.forEach((x, i) => m.set(x.id, i + 1))
  return m
}
const colourClass = (i) => (i > 0 ? `c${((i - 1) % 8) + 1}` : 'c0')
const isLive = (m) => m.state === 'alive' || m.state === 'suspect'

function render() {
  const idx = memberIndex()
  renderHeader()
  renderSummary()
  renderMembers(idx)
  renderCharts(idx)
  renderPartitions(idx)
  renderCheckpoints()
  renderConnectors()
}

function renderHeader() {
  const c = state.coordinator
  const parts = [`Coordinator ${c.nodeId ?? '?'}`]
  if (c.address) parts.push(String(c.address))
  if (typeof c.role === 'string') parts.push(c.role)
  if (typeof c.leader === 'string') parts.push(`leader ${c.leader}`)
  if (Array.isArray(c.standbys)) parts.push(`standbys: ${c.standbys.length ? c.standbys.join(', ') : 'none'}`)
  parts.push(c.ready ? 'ready' : c.recovering ? 'recovering' : 'not ready')
  if (typeof c.uptimeMs === 'number') parts.push(`up ${duration(c.uptimeMs)}`)
  $('coordinator').textContent = parts.join(' · ')
  const t = $('updated')
  t.textContent = clock(state.now)
  t.setAttribute('datetime', new Date(state.now).toISOString())
}

function renderSummary() {
  const ms = state.members
  const alive = ms.filter((m) => m.state === 'alive').length
  const suspect = ms.filter((m) => m.state === 'suspect').length
  const dead = ms.filter((m) => m.state === 'dead').length
  const liveMs = ms.filter(isLive)
  const eps = liveMs.reduce((n, m) => n + (m.load?.eventsPerSec ?? 0), 0)
  const lag = liveMs.reduce((n, m) => n + (m.load?.lag ?? 0), 0)
  const p = state.partitions
  const owned = p.owners.filter((o) => o >= 0).length
  const ready = p.ready.reduce((n, r) => n + r, 0)
  const cp = state.checkpoints
  const dl = state.deadLetters
  const polled = state.workers.some((w) => w.polledAt !== null)
  const items = [
    [
      'Workers alive',
      `${alive} of ${ms.length}${suspect ? `, ${suspect} suspect` : ''}${dead ? `, ${dead} dead` : ''}`,
    ],
    ['Partitions ready', `${ready} of ${p.count}${owned < p.count ? ` (${p.count - owned} unowned)` : ''}`],
    ['Assignment epoch', String(p.epoch)],
    ['Events/s', num(eps)],
    ['Lag (batches)', num(lag)],
    ['Checkpoints', `${cp.completed}${cp.inFlight ? ' (one running)' : ''}`],
    ['Last checkpoint', cp.last ? `${duration(cp.last.durationMs)}, ${ago(cp.last.finishedAt)}` : 'none yet'],
    ['Dead letters', polled ? num(dl.total) : '–'],
  ]
  $('summary').replaceChildren(
    ...items.map(([k, v]) => h('div', {}, h('dt', { text: k }), h('dd', { text: v }))),
  )
}

function stateCell(m) {
  const word =
    m.state === 'suspect' && m.missedHeartbeats > 0 ? `suspect (${m.missedHeartbeats} missed)` : m.state
  return h('td', { class: `state state-${m.state}` }, `${STATE_SYMBOL[m.state] ?? '?'} ${word}`)
}

function renderMembers(idx) {
  const rows = state.members.map((m) => {
    const i = idx.get(m.id)
    const l = m.load
    const progress =
      m.partitions > 0
        ? h('progress', { max: m.partitions, value: m.readyPartitions, 'aria-hidden': 'true' })
        : null
    const restoring = m.partitions - m.readyPartitions
    const partText =
      m.partitions === 0
        ? 'none'
        : restoring > 0
          ? `${m.readyPartitions} of ${m.partitions} (${restoring} restoring)`
          : `${m.readyPartitions} of ${m.partitions}`
    return h(
      'tr',
      { 'data-member': m.id, 'data-state': m.state, class: isLive(m) ? '' : 'gone' },
      h('td', {}, h('span', { class: `swatch ${colourClass(i)}`, text: String(i) })),
      h('th', { scope: 'row', text: m.id }),
      stateCell(m),
      h('td', { title: m.httpAddress ? `HTTP ${m.httpAddress}` : '' }, m.dataAddress),
      h(
        'td',
        { class: 'num' },
        isLive(m) ? duration(m.heartbeatAgeMs) : `${duration(m.heartbeatAgeMs)} (silent)`,
      ),
      h('td', { class: 'num' }, isLive(m) && l ? num(l.eventsPerSec) : '–'),
      h('td', { class: 'num' }, isLive(m) && l ? num(l.queueDepth) : '–'),
      h('td', { class: 'num' }, isLive(m) && l ? num(l.inFlight) : '–'),
      h('td', { class: 'num' }, isLive(m) && l ? num(l.lag) : '–'),
      h('td', { class: 'num' }, isLive(m) && l ? bytes(l.rssBytes) : '–'),
      h('td', {}, progress, partText),
      h('td', { class: 'num' }, String(m.capacity)),
      h('td', {}, m.version),
      h('td', { title: m.joinedAt }, ago(m.joinedAt)),
    )
  })
  if (rows.length === 0) {
    rows.push(h('tr', {}, h('td', { colspan: 14, class: 'empty', text: 'No worker has joined yet.' })))
  }
  document.querySelector('#members tbody').replaceChildren(...rows)
}

// --- charts -------------------------------------------------------------------------------------

/** A round tick step so that four steps cover `max` (1, 2 or 5 times a power of ten; at least 1). */
function tickStep(max) {
  const raw = max / 4
  if (!(raw > 1)) return 1
  const p = 10 ** Math.floor(Math.log10(raw))
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p
  return 10 * p
}

/**
 * A line chart as SVG: series = [{ name, cls, values }], values aligned with `times` (null: no
 * data). Each series has its own dash pattern as well as its colour, and the legend gives the
 * latest value in words.
 */
function lineChart(figure, { title, series, times, format, empty }) {
  const W = 640
  const H = 180
  const L = 52
  const R = 10
  const T = 10
  const B = 22
  // The window grows with the history: from 1 minute up to all of it (10 minutes).
  const end = times.length ? times[times.length - 1] : state.now
  const full = state.historySamples * state.sampleIntervalMs
  const span = Math.min(full, Math.max(60_000, times.length ? end - times[0] : 0))
  const start = end - span
  const x = (t) => L + ((t - start) / span) * (W - L - R)
  let max = 0
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v
  const top = 4 * tickStep(max)
  const y = (v) => T + (1 - v / top) * (H - T - B)
  const latest = (s) => {
    for (let i = s.values.length - 1; i >= 0; i--) if (s.values[i] !== null) return s.values[i]
    return null
  }
  const label = `${title}. ${
    series.length === 0 ? empty : series.map((s) => `${s.name}: ${format(latest(s))}`).join('; ')
  }`
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label })
  for (let k = 0; k <= 4; k++) {
    const v = (top * k) / 4
    chart.append(svg('line', { class: 'gridline', x1: L, x2: W - R, y1: y(v), y2: y(v) }))
    chart.append(svg('text', { class: 'axis', x: L - 6, y: y(v) + 4, 'text-anchor': 'end', text: format(v) }))
  }
  const before = (ms) => (ms >= 60_000 ? `−${nf.format(ms / 60_000)} min` : `−${Math.round(ms / 1000)} s`)
  for (const [t, text, anchor] of [
    [start, before(span), 'start'],
    [start + span / 2, before(span / 2), 'middle'],
    [end, 'now', 'end'],
  ]) {
    chart.append(svg('text', { class: 'axis', x: x(t), y: H - 6, 'text-anchor': anchor, text }))
  }
  series.forEach((s, i) => {
    let d = ''
    let pen = false
    s.values.forEach((v, j) => {
      if (v === null) {
        pen = false
        return
      }
      d += `${pen ? 'L' : 'M'}${x(times[j]).toFixed(1)},${y(v).toFixed(1)}`
      pen = true
    })
    if (d) {
      chart.append(
        svg('path', {
          class: `series ${s.cls}`,
          d,
          'stroke-dasharray': DASHES[i % DASHES.length] || undefined,
        }),
      )
    }
  })
  const legend = h(
    'ul',
    { class: 'legend' },
    ...series.map((s, i) =>
      h(
        'li',
        {},
        (() => {
          const sw = svg('svg', { viewBox: '0 0 26 10', 'aria-hidden': 'true' })
          sw.append(
            svg('line', {
              class: `series ${s.cls}`,
              x1: 0,
              x2: 26,
              y1: 5,
              y2: 5,
              'stroke-dasharray': DASHES[i % DASHES.length] || undefined,
            }),
          )
          return sw
        })(),
        `${s.name} `,
        h('span', { class: 'value', text: format(latest(s)) }),
      ),
    ),
  )
  const content = [h('figcaption', { text: title }), chart]
  content.push(series.length === 0 ? h('p', { class: 'empty', text: empty }) : legend)
  figure.replaceChildren(...content)
}

function memberSeries(idx, pick) {
  const ids = state.members.filter((m) => history.some((s) => s.m[m.id] !== undefined)).map((m) => m.id)
  return ids.map((id) => ({
    name: `${idx.get(id)} ${id}`,
    cls: colourClass(idx.get(id)),
    values: history.map((s) => (s.m[id] === undefined ? null : pick(s.m[id]))),
  }))
}

function renderCharts(idx) {
  const times = history.map((s) => s.t)
  const eps = memberSeries(idx, (f) => f[0])
  if (eps.length > 1) {
    eps.push({
      name: 'total',
      cls: 'c0',
      values: history.map((s) => {
        const v = Object.values(s.m)
        return v.length ? v.reduce((n, f) => n + f[0], 0) : null
      }),
    })
  }
  lineChart($('chart-eps'), {
    title: 'Events per second',
    series: eps,
    times,
    format: num,
    empty: 'No heartbeat with a load yet.',
  })
  lineChart($('chart-lag'), {
    title: 'Lag: batches accepted, not yet applied',
    series: memberSeries(idx, (f) => f[1]),
    times,
    format: num,
    empty: 'No heartbeat with a load yet.',
  })
  lineChart($('chart-acks'), {
    title: 'Events acknowledged per second',
    series: memberSeries(idx, (f) => f[5] ?? null),
    times,
    format: num,
    empty: 'No heartbeat with acknowledgements yet.',
  })
  lineChart($('chart-backpressure'), {
    title: 'Backpressure: % of time reading paused',
    series: memberSeries(idx, (f) => (f[6] === null || f[6] === undefined ? null : Math.round(f[6] * 100))),
    times,
    format: (v) => `${num(v)}%`,
    empty: 'No heartbeat with backpressure figures yet.',
  })
  lineChart($('chart-queue'), {
    title: 'Processing queue depth (backpressure)',
    series: memberSeries(idx, (f) => f[2]),
    times,
    format: num,
    empty: 'No heartbeat with a load yet.',
  })
  const conn = []
  const pick = (name, cls, key) => {
    const values = history.map((s) => s[key])
    if (values.some((v) => v !== null)) conn.push({ name, cls, values })
  }
  pick('sinks lag (records)', 'c1', 'sinkLag')
  pick('sources backlog (entries)', 'c2', 'sourceBacklog')
  pick('dead letters (total)', 'c5', 'deadLetters')
  lineChart($('chart-connectors'), {
    title: 'Sources, sinks and dead letters',
    series: conn,
    times,
    format: num,
    empty: 'Nothing reported yet (read from the workers while this page is open).',
  })
}

// --- partition map ------------------------------------------------------------------------------

let cells = []

function renderPartitions(idx) {
  const p = state.partitions
  const movedAt = new Map()
  for (const m of p.moves) movedAt.set(m.partition, m)
  const map = $('partition-map')
  if (cells.length !== p.count) {
    cells = Array.from({ length: p.count }, () => h('li', { class: 'cell' }))
    map.replaceChildren(...cells)
  }
  const byMember = new Map()
  let restoring = 0
  let unowned = 0
  p.owners.forEach((o, i) => {
    const owner = o >= 0 ? p.ownerIds[o] : null
    const cell = cells[i]
    const move = movedAt.get(i)
    const n = owner === null ? 0 : (idx.get(owner) ?? 0)
    const ready = p.ready[i] === 1
    if (owner === null) unowned++
    else if (!ready) restoring++
    if (owner !== null) byMember.set(owner, (byMember.get(owner) ?? 0) + 1)
    const cls = ['cell', owner === null ? 'unowned' : colourClass(n)]
    if (owner !== null && !ready) cls.push('restoring')
    if (move) cls.push('moved')
    cell.className = cls.join(' ')
    cell.textContent = owner === null ? '–' : String(n)
    cell.dataset.owner = owner ?? ''
    cell.dataset.partition = String(i)
    const words = [
      `Partition ${i}`,
      owner === null ? 'no owner' : `owner ${owner}`,
      `epoch ${p.epochs[i]}`,
      owner === null ? '' : ready ? 'ready' : 'restoring',
      move ? `moved ${duration(state.now - move.at)} ago from ${move.from ?? 'no owner'}` : '',
    ].filter(Boolean)
    cell.title = words.join(', ')
  })
  const moved = p.moves.length
  $('partitions-summary').textContent =
    `${p.count} partitions (key groups), assignment epoch ${p.epoch}: ${p.count - restoring - unowned} ready, ` +
    `${restoring} restoring, ${unowned} without an owner; ${moved} moved in the last ${duration(state.moveHighlightMs)}. ` +
    `Each cell shows its owner's number.`
  const legendItems = state.members
    .filter((m) => byMember.has(m.id) || isLive(m))
    .map((m) =>
      h(
        'span',
        {},
        h('span', {
          class: `cell ${colourClass(idx.get(m.id))}`,
          'aria-hidden': 'true',
          text: String(idx.get(m.id)),
        }),
        `${m.id}: ${byMember.get(m.id) ?? 0} partitions`,
      ),
    )
  legendItems.push(
    h('span', {}, h('span', { class: 'cell c0 restoring', 'aria-hidden': 'true' }), 'hatched: restoring'),
    h(
      'span',
      {},
      h('span', { class: 'cell c0 moved', 'aria-hidden': 'true' }),
      'ringed, corner mark: moved recently',
    ),
  )
  $('map-legend').replaceChildren(...legendItems)
  renderMoves(p.moves)
  const details = document.querySelector('#partition-table')?.closest('details')
  if (details?.open) renderPartitionTable(movedAt)
}

function renderMoves(moves) {
  // Group the moves of one reassignment: same from, to and moment.
  const groups = []
  for (const m of moves) {
    const g = groups[groups.length - 1]
    if (g && g.from === m.from && g.to === m.to && Math.abs(g.at - m.at) < 200) g.partitions.push(m.partition)
    else groups.push({ from: m.from, to: m.to, at: m.at, epoch: m.epoch, partitions: [m.partition] })
  }
  const items = groups
    .reverse()
    .slice(0, 50)
    .map((g) => {
      const list =
        g.partitions.length > 12 ? `${g.partitions.slice(0, 12).join(', ')}, …` : g.partitions.join(', ')
      const what =
        g.partitions.length === 1 ? `partition ${list}` : `${g.partitions.length} partitions (${list})`
      const verb =
        g.from === null
          ? `assigned to ${g.to}`
          : g.to === null
            ? `released by ${g.from}`
            : `moved from ${g.from} to ${g.to}`
      return h(
        'li',
        {},
        h('time', { datetime: new Date(g.at).toISOString(), text: clock(g.at) }),
        ` ${what} ${verb}`,
      )
    })
  if (items.length === 0) {
    items.push(
      h('li', { class: 'empty', text: `No partition moved in the last ${duration(state.moveHighlightMs)}.` }),
    )
  }
  $('moves').replaceChildren(...items)
}

function renderPartitionTable(movedAt) {
  const p = state.partitions
  const rows = p.owners.map((o, i) => {
    const owner = o >= 0 ? p.ownerIds[o] : null
    const move = movedAt.get(i)
    return h(
      'tr',
      {},
      h('td', { class: 'num', text: String(i) }),
      h('td', { text: owner ?? 'none' }),
      h('td', { class: 'num', text: String(p.epochs[i]) }),
      h('td', { text: owner === null ? '–' : p.ready[i] === 1 ? 'ready' : 'restoring' }),
      h('td', { text: move ? `${duration(state.now - move.at)} ago, from ${move.from ?? 'no owner'}` : '' }),
    )
  })
  document.querySelector('#partition-table tbody').replaceChildren(...rows)
}

document
  .querySelector('#partition-table')
  ?.closest('details')
  ?.addEventListener('toggle', () => {
    if (state !== null) render()
  })

// --- checkpoints --------------------------------------------------------------------------------

function renderCheckpoints() {
  const cp = state.checkpoints
  $('checkpoints-summary').textContent =
    (cp.intervalMs > 0 ? `Every ${duration(cp.intervalMs)}` : 'Periodic checkpoints are off') +
    `; ${cp.completed} completed since this coordinator started` +
    (cp.inFlight ? '; one is running now.' : '.')
  const rows = [...cp.recent].reverse().map((c) => {
    const failed = c.failedMembers.length > 0
    return h(
      'tr',
      {},
      h('td', { class: 'num', text: String(c.id) }),
      h('td', {
        title: c.finishedAt,
        text: `${new Date(c.finishedAt).toLocaleTimeString()} (${ago(c.finishedAt)})`,
      }),
      h('td', { class: 'num', text: duration(c.durationMs) }),
      h('td', { class: 'num', text: `${c.partitions} of ${c.assigned}` }),
      h('td', { class: 'num', text: num(c.keys) }),
      h('td', { text: c.full ? 'savepoint (full)' : 'incremental' }),
      h(
        'td',
        { class: failed ? 'state state-dead' : 'state state-alive' },
        failed ? `✕ not acknowledged by ${c.failedMembers.join(', ')}` : '✓ complete',
      ),
    )
  })
  if (rows.length === 0)
    rows.push(h('tr', {}, h('td', { colspan: 7, class: 'empty', text: 'No checkpoint yet.' })))
  document.querySelector('#checkpoints tbody').replaceChildren(...rows)
}

// --- sources, sinks, dead letters ---------------------------------------------------------------

function renderConnectors() {
  const d = state.definition
  const polled = state.workers.some((w) => w.polledAt !== null)
  const failing = state.workers.filter((w) => w.error !== null)
  const parts = []
  if (d) {
    if (d.jobId) parts.push(`Job ${d.jobId}.`)
    parts.push(`Sources: ${d.sources?.length ? d.sources.join(', ') : 'none'}.`)
    parts.push(`Sinks: ${d.sinks?.length ? d.sinks.join(', ') : 'none'}.`)
  }
  parts.push(
    polled
      ? "Read from the workers' /status every 2 s while this page is open."
      : "Waiting for the workers' /status…",
  )
  if (failing.length)
    parts.push(`Could not read: ${failing.map((w) => `${w.member} (${w.error})`).join('; ')}.`)
  $('connectors-summary').textContent = parts.join(' ')

  const errorCell = (text) => h('td', { class: 'wrap', text: text ?? '' })
  const sources = state.sources.map((s) =>
    h(
      'tr',
      {},
      h('td', { text: s.member }),
      h('th', { scope: 'row', text: s.name }),
      h('td', { text: s.state }),
      h('td', { class: 'num', text: s.backlog === null ? 'unknown' : num(s.backlog) }),
      h('td', { class: 'num', text: num(s.inFlight) }),
      h('td', { class: 'num', text: num(s.read) }),
      h('td', { class: 'num', text: num(s.acked) }),
      h('td', { class: 'num', text: num(s.errors) }),
      h('td', { class: 'num', text: num(s.deadLettered) }),
      errorCell(s.lastError),
    ),
  )
  if (sources.length === 0) {
    sources.push(h('tr', {}, h('td', { colspan: 10, class: 'empty', text: polled ? 'No source.' : '…' })))
  }
  document.querySelector('#sources tbody').replaceChildren(...sources)
  const sinks = state.sinks.map((s) =>
    h(
      'tr',
      {},
      h('td', { text: s.member }),
      h('th', { scope: 'row', text: s.name }),
      h('td', { text: s.state }),
      h('td', { class: 'num', text: num(s.lag) }),
      h('td', { class: 'num', text: num(s.written) }),
      h('td', { class: 'num', text: num(s.errors) }),
      h('td', { class: 'num', text: num(s.deadLettered) }),
      errorCell(s.lastError ? `${s.lastError}${s.lastErrorAt ? ` (${clock(s.lastErrorAt)})` : ''}` : null),
    ),
  )
  if (sinks.length === 0) {
    sinks.push(h('tr', {}, h('td', { colspan: 8, class: 'empty', text: polled ? 'No sink.' : '…' })))
  }
  document.querySelector('#sinks tbody').replaceChildren(...sinks)

  const dl = state.deadLetters
  $('dead-letters-summary').textContent = polled
    ? `${num(dl.total)} in total on the live workers: ${num(dl.processing)} refused by the job, ${num(dl.sources)} from sources, ${num(dl.sinks)} from sinks.`
    : '–'
  const notes = [...dl.recent]
    .reverse()
    .map((n) =>
      h(
        'li',
        {},
        h('time', { datetime: new Date(n.at).toISOString(), text: clock(n.at) }),
        ` ${n.member}: ${num(n.count)} dead-lettered at ${n.where}${n.reason ? `: ${n.reason}` : ''}`,
      ),
    )
  if (notes.length === 0) notes.push(h('li', { class: 'empty', text: 'None while this page was open.' }))
  $('dead-letters').replaceChildren(...notes)
}

void connect()
