/**
 * k8s/ (kustomize), checked without a cluster.
 *
 * 1. Render: `kubectl kustomize` when kubectl is installed, and always the small renderer below,
 *    which implements exactly the kustomize features k8s/ uses (resources, namespace, labels,
 *    images, inline JSON6902 patches) and refuses any other field. Where kubectl exists the two
 *    renderings must be identical, so a machine without kubectl checks the same objects.
 * 2. Schema: kubernetes-models validate() (types, required fields, quantities, int-or-string),
 *    plus a TypeScript excess-property check against kubernetes-models' types (misspelled fields,
 *    which the OpenAPI schemas let through).
 * 3. Consistency: selectors vs pod labels, Service targetPorts, probes on the node's real ports and
 *    paths, env references (ConfigMap, Secret keys, downward API, $(VAR) order), SHOAL_* names,
 *    PDB/HPA targets, drain timeout vs terminationGracePeriodSeconds, resources, security context.
 *    Each rule is also shown to fire on a broken copy.
 * 4. Live: the coordinator pods (every StatefulSet replica) and a worker of each variant, started
 *    as real processes (`node --import tsx src/cli/main.ts`) with the environment Kubernetes would
 *    give them (each pod's ports remapped to free loopback ports, Service and pod names to
 *    127.0.0.1, a real redis-server), probed the way the kubelet does: httpGet 200-399 within
 *    timeoutSeconds, gRPC Health/Check == SERVING. Exactly one coordinator is ready (the leader);
 *    deleting it (SIGTERM) makes the standby ready, the worker follows, the recreated pod stands by.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { once } from 'node:events'
import { createServer, connect } from 'node:net'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'
import { parse, parseAllDocuments } from 'yaml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseSinkUrl, parseSourceUrl } from '../../src/connectors/url.ts'
import { SOURCE_WORKER_SEMI_SPACE_MB } from '../../src/cli/up.ts'
import { checkHealth } from '../../src/transport/grpc/health.ts'

/* eslint-disable @typescript-eslint/no-explicit-any, @typescript-eslint/no-unsafe-argument, @typescript-eslint/no-unsafe-call, @typescript-eslint/no-unsafe-return --
   rendered manifests are untyped YAML (Obj below); the schema and type checks in this file are what type them. */

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const K8S = join(ROOT, 'k8s')
const VARIANTS = {
  base: K8S,
  grpc: join(K8S, 'overlays/grpc'),
  pipeline: join(K8S, 'overlays/pipeline'),
} as const
const MAIN_TS = join(ROOT, 'src/cli/main.ts')
const NAMESPACE = 'shoal'

// ---- the contract (ARCHITECTURE.md "Command line" + the deployment conventions) -----------------

const KNOWN_SHOAL_ENV = new Set([
  'SHOAL_TRANSPORT',
  'SHOAL_LISTEN',
  'SHOAL_HTTP',
  'SHOAL_COORDINATOR',
  'SHOAL_STATE',
  'SHOAL_PARTITIONS',
  'SHOAL_THREADS',
  'SHOAL_JOB',
  'SHOAL_TOKEN',
  'SHOAL_ADVERTISE',
  'SHOAL_NODE_ID',
  'SHOAL_DRAIN_TIMEOUT_MS',
  'SHOAL_HEARTBEAT_INTERVAL_MS',
  'SHOAL_HEARTBEAT_MISSES',
  'SHOAL_LOG_LEVEL',
  'SHOAL_SOURCE',
  'SHOAL_SINK',
])
/** Non-SHOAL variables a Shoal container may carry: POD_NAME is honoured, POD_IP feeds $(POD_IP). */
const OTHER_ENV = new Set(['POD_NAME', 'POD_IP', 'POD_NAMESPACE', 'NODE_OPTIONS'])
const PORTS = {
  coordinator: { transport: 7400, http: 7401 },
  worker: { transport: 7410, http: 7411 },
} as const
const DEFAULT_DRAIN_TIMEOUT_MS = 20_000

// ---- objects ---------------------------------------------------------------------------------------

type Obj = Record<string, any>

interface EnvVar {
  name: string
  value?: string
  valueFrom?: {
    fieldRef?: { fieldPath: string }
    secretKeyRef?: { name: string; key: string; optional?: boolean }
    configMapKeyRef?: { name: string; key: string; optional?: boolean }
    resourceFieldRef?: { resource: string }
  }
}
interface Probe {
  httpGet?: { path?: string; port: number | string; scheme?: string }
  grpc?: { port: number | string; service?: string }
  tcpSocket?: { port: number | string }
  exec?: { command: string[] }
  timeoutSeconds?: number
  periodSeconds?: number
  failureThreshold?: number
}
interface Container {
  name: string
  image: string
  command?: string[]
  args?: string[]
  ports?: { name?: string; containerPort: number }[]
  env?: EnvVar[]
  envFrom?: {
    configMapRef?: { name: string; optional?: boolean }
    secretRef?: { name: string; optional?: boolean }
    prefix?: string
  }[]
  livenessProbe?: Probe
  readinessProbe?: Probe
  startupProbe?: Probe
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> }
  securityContext?: Obj
  volumeMounts?: { name: string; mountPath: string }[]
}

const WORKLOADS = new Set(['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job'])
const CLUSTER_SCOPED = new Set([
  'Namespace',
  'ClusterRole',
  'ClusterRoleBinding',
  'PersistentVolume',
  'StorageClass',
  'CustomResourceDefinition',
  'PriorityClass',
  'IngressClass',
  'RuntimeClass',
  'ValidatingWebhookConfiguration',
  'MutatingWebhookConfiguration',
  'APIService',
])
const id = (o: Obj): string => `${o.kind}/${o.metadata?.name}`
const clone = <T>(v: T): T => structuredClone(v)

function podTemplates(o: Obj): Obj[] {
  if (WORKLOADS.has(o.kind)) return o.spec?.template ? [o.spec.template] : []
  if (o.kind === 'CronJob')
    return o.spec?.jobTemplate?.spec?.template ? [o.spec.jobTemplate.spec.template] : []
  return []
}
function containersOf(o: Obj): Container[] {
  return podTemplates(o).flatMap(
    (t) => [...(t.spec?.initContainers ?? []), ...(t.spec?.containers ?? [])] as Container[],
  )
}

// ---- rendering ---------------------------------------------------------------------------------------

/** The subset of kustomize that k8s/ uses; anything else is refused so it cannot be silently ignored. */
function renderSubset(dir: string): Obj[] {
  const k = parse(readFileSync(join(dir, 'kustomization.yaml'), 'utf8'), { uniqueKeys: true }) as Obj
  const supported = new Set(['apiVersion', 'kind', 'resources', 'namespace', 'labels', 'images', 'patches'])
  for (const key of Object.keys(k)) {
    if (!supported.has(key))
      throw new Error(`renderSubset: unsupported kustomization field "${key}" in ${dir}`)
  }
  let objs: Obj[] = []
  for (const r of (k.resources ?? []) as string[]) {
    const p = resolve(dir, r)
    if (statSync(p).isDirectory()) objs.push(...renderSubset(p))
    else {
      for (const d of parseAllDocuments(readFileSync(p, 'utf8'), { uniqueKeys: true })) {
        if (d.errors.length > 0) throw new Error(`${p}: ${d.errors[0]!.message}`)
        const o = d.toJS() as Obj | null
        if (o) objs.push(o)
      }
    }
  }
  // kustomize's builtin order: patches, namespace, labels, images
  for (const p of (k.patches ?? []) as Obj[]) {
    if (typeof p.patch !== 'string' || p.path !== undefined || p.target?.labelSelector !== undefined) {
      throw new Error(
        `renderSubset: only inline JSON6902 patches with kind/name targets are supported (${dir})`,
      )
    }
    const ops = parse(p.patch) as unknown
    if (!Array.isArray(ops))
      throw new Error(`renderSubset: strategic-merge patches are not supported (${dir})`)
    const t = p.target as {
      group?: string
      version?: string
      kind?: string
      name?: string
      namespace?: string
    }
    const targets = objs.filter((o) => {
      const [g, v] = String(o.apiVersion).includes('/') ? String(o.apiVersion).split('/') : ['', o.apiVersion]
      return (
        (t.kind === undefined || t.kind === o.kind) &&
        (t.name === undefined || t.name === o.metadata?.name) &&
        (t.group === undefined || t.group === g) &&
        (t.version === undefined || t.version === v) &&
        (t.namespace === undefined || t.namespace === o.metadata?.namespace)
      )
    })
    if (targets.length === 0)
      throw new Error(`renderSubset: patch target ${JSON.stringify(t)} matches nothing`)
    objs = objs.map((o) => (targets.includes(o) ? applyJsonPatch(o, ops as Obj[]) : o))
  }
  if (typeof k.namespace === 'string') {
    for (const o of objs)
      if (!CLUSTER_SCOPED.has(o.kind)) o.metadata = { ...o.metadata, namespace: k.namespace }
  }
  for (const l of (k.labels ?? []) as Obj[]) {
    if (l.includeSelectors === true) throw new Error('renderSubset: labels.includeSelectors is not supported')
    const add = (m: Obj): void => {
      m.labels = { ...m.labels, ...(l.pairs as Record<string, string>) }
    }
    for (const o of objs) {
      add((o.metadata ??= {}))
      if (l.includeTemplates === true) {
        for (const t of podTemplates(o)) add((t.metadata ??= {}))
        if (o.kind === 'StatefulSet')
          for (const v of (o.spec?.volumeClaimTemplates ?? []) as Obj[]) add((v.metadata ??= {}))
      }
    }
  }
  for (const img of (k.images ?? []) as Obj[]) {
    for (const c of objs.flatMap(containersOf)) {
      const m = /^([^@]*?)(?::([^:/@]+))?(@.+)?$/.exec(c.image)!
      if (m[1] !== img.name) continue
      c.image = `${(img.newName as string | undefined) ?? m[1]}${img.digest ? `@${img.digest}` : img.newTag !== undefined ? `:${img.newTag}` : m[2] ? `:${m[2]}` : ''}`
    }
  }
  return objs
}

function applyJsonPatch(doc: Obj, ops: Obj[]): Obj {
  const out = clone(doc)
  for (const op of ops) {
    const path = String(op.path)
      .split('/')
      .slice(1)
      .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    const last = path.pop()!
    let parent: any = out
    for (const seg of path) {
      parent = parent?.[Array.isArray(parent) ? Number(seg) : seg]
      if (parent === undefined) throw new Error(`JSON patch: ${op.path} does not exist`)
    }
    const isArr = Array.isArray(parent)
    const key = isArr ? (last === '-' ? parent.length : Number(last)) : last
    switch (op.op) {
      case 'add':
        if (isArr) parent.splice(key, 0, clone(op.value))
        else parent[key] = clone(op.value)
        break
      case 'replace':
        if (!(key in parent)) throw new Error(`JSON patch: replace ${op.path}: no such member`)
        parent[key] = clone(op.value)
        break
      case 'remove':
        if (!(key in parent)) throw new Error(`JSON patch: remove ${op.path}: no such member`)
        if (isArr) parent.splice(key, 1)
        else delete parent[key]
        break
      default:
        throw new Error(`JSON patch: op ${op.op} is not supported`)
    }
  }
  return out
}

const HAVE_KUBECTL = spawnSync('sh', ['-c', 'command -v kubectl'], { encoding: 'utf8' }).status === 0

function renderKubectl(dir: string): Obj[] {
  // --kubeconfig /dev/null: never talk to a server (kustomize is offline anyway)
  const r = spawnSync('kubectl', ['kustomize', dir], {
    encoding: 'utf8',
    env: { ...process.env, KUBECONFIG: '/dev/null' },
    timeout: 30_000,
  })
  if (r.status !== 0) throw new Error(`kubectl kustomize ${dir} failed: ${r.stderr}`)
  return parseAllDocuments(r.stdout)
    .map((d) => d.toJS() as Obj | null)
    .filter((o): o is Obj => o !== null)
}

function render(dir: string): Obj[] {
  return HAVE_KUBECTL ? renderKubectl(dir) : renderSubset(dir)
}

const sortKey = (o: Obj): string => `${o.kind}/${o.metadata?.namespace ?? ''}/${o.metadata?.name}`
const sorted = (objs: Obj[]): Obj[] => [...objs].sort((a, b) => sortKey(a).localeCompare(sortKey(b)))

// ---- schema ----------------------------------------------------------------------------------------------

const requireCjs = createRequire(import.meta.url)
function modelPath(o: Obj): string {
  const [group, version] = String(o.apiVersion).includes('/')
    ? String(o.apiVersion).split('/')
    : ['', o.apiVersion]
  return `kubernetes-models/${group ? `${group}/` : ''}${version}/${o.kind}`
}

/** kubernetes-models validate(): types, required fields, formats (no unknown-field check). */
function modelErrors(o: Obj): string[] {
  let Model: new (data: unknown) => { validate(): void }
  try {
    const mod = requireCjs(modelPath(o)) as Record<string, new (data: unknown) => { validate(): void }>
    Model = mod[o.kind as string]!
  } catch {
    return [`${id(o)}: unknown apiVersion/kind ${o.apiVersion} ${o.kind}`]
  }
  try {
    new Model(o).validate()
    return []
  } catch (err) {
    const e = err as Error & { errors?: { instancePath: string; message?: string }[] }
    return (e.errors ?? [{ instancePath: '', message: e.message }]).map(
      (x) => `${id(o)}: ${x.instancePath || '/'} ${x.message ?? ''}`,
    )
  }
}

/**
 * Misspelled or misplaced fields: each object becomes a typed constant checked by the TypeScript
 * compiler against kubernetes-models' interfaces (object-literal excess-property checks).
 */
function typeErrors(objs: Obj[]): string[] {
  const file = join(ROOT, 'test/deploy/__k8s_typecheck__.ts')
  const lines: string[] = []
  const owner: string[] = []
  objs.forEach((o, i) => {
    const text = [
      `import type { I${o.kind} as T${i} } from '${modelPath(o)}'`,
      `export const o${i}: T${i} = ${JSON.stringify(o, null, 1)}`,
    ].join('\n')
    for (const _ of text.split('\n')) owner.push(id(o))
    lines.push(text)
  })
  const source = lines.join('\n')
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    types: [],
  }
  const host = ts.createCompilerHost(options)
  const getSourceFile = host.getSourceFile.bind(host)
  const fileExists = host.fileExists.bind(host)
  const readFile = host.readFile.bind(host)
  host.getSourceFile = (name, lang, ...rest) =>
    resolve(name) === file ? ts.createSourceFile(name, source, lang) : getSourceFile(name, lang, ...rest)
  host.fileExists = (name) => resolve(name) === file || fileExists(name)
  host.readFile = (name) => (resolve(name) === file ? source : readFile(name))
  const program = ts.createProgram([file], options, host)
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const msg = ts.flattenDiagnosticMessageText(d.messageText, ' ')
    if (d.file && d.start !== undefined && resolve(d.file.fileName) === file) {
      const line = d.file.getLineAndCharacterOfPosition(d.start).line
      return `${owner[line]}: ${msg}`
    }
    return msg
  })
}

// ---- environment as the kubelet builds it ------------------------------------------------------------------

interface ResolvedEnv {
  env: Record<string, string>
  errors: string[]
}

/** Downward API values a pod would see. */
type Fields = Record<string, string>
const fieldsFor = (podName: string, podIp: string): Fields => ({
  'metadata.name': podName,
  'metadata.namespace': NAMESPACE,
  'status.podIP': podIp,
  'spec.nodeName': 'node-1',
})

function findObj(objs: Obj[], kind: string, name: string): Obj | undefined {
  return objs.find((o) => o.kind === kind && o.metadata?.name === name)
}
function secretValue(s: Obj, key: string): string | undefined {
  if (s.stringData?.[key] !== undefined) return String(s.stringData[key])
  if (s.data?.[key] !== undefined) return Buffer.from(String(s.data[key]), 'base64').toString('utf8')
  return undefined
}

/** envFrom first, then env in order; $(VAR) expands only variables defined before it. */
function resolveEnv(c: Container, objs: Obj[], fields: Fields): ResolvedEnv {
  const env: Record<string, string> = {}
  const errors: string[] = []
  for (const ef of c.envFrom ?? []) {
    const ref = ef.configMapRef ?? ef.secretRef
    const kind = ef.configMapRef ? 'ConfigMap' : 'Secret'
    const o = ref && findObj(objs, kind, ref.name)
    if (!o) {
      if (!ref?.optional) errors.push(`${c.name}: envFrom ${kind} "${ref?.name}" is not in the bundle`)
      continue
    }
    const keys = Object.keys(kind === 'ConfigMap' ? (o.data ?? {}) : { ...o.data, ...o.stringData })
    for (const key of keys) {
      env[(ef.prefix ?? '') + key] = kind === 'ConfigMap' ? String(o.data[key]) : secretValue(o, key)!
    }
  }
  for (const e of c.env ?? []) {
    if (e.value !== undefined) {
      env[e.name] = e.value.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string | undefined) => {
        if (name === undefined) return '$'
        if (env[name] === undefined)
          errors.push(`${c.name}: ${e.name} refers to $(${name}), which is not defined before it`)
        return env[name] ?? m
      })
    } else if (e.valueFrom?.fieldRef) {
      const v = fields[e.valueFrom.fieldRef.fieldPath]
      if (v === undefined)
        errors.push(`${c.name}: ${e.name}: unexpected fieldRef ${e.valueFrom.fieldRef.fieldPath}`)
      else env[e.name] = v
    } else if (e.valueFrom?.secretKeyRef || e.valueFrom?.configMapKeyRef) {
      const ref = (e.valueFrom.secretKeyRef ?? e.valueFrom.configMapKeyRef)!
      const kind = e.valueFrom.secretKeyRef ? 'Secret' : 'ConfigMap'
      const o = findObj(objs, kind, ref.name)
      const v = o === undefined ? undefined : kind === 'Secret' ? secretValue(o, ref.key) : o.data?.[ref.key]
      if (v === undefined) {
        if (!ref.optional) errors.push(`${c.name}: ${e.name}: ${kind} ${ref.name} has no key ${ref.key}`)
      } else env[e.name] = String(v)
    } else errors.push(`${c.name}: ${e.name}: unsupported env source`)
  }
  return { env, errors }
}

// ---- consistency checks ------------------------------------------------------------------------------------

function portOf(addr: string | undefined): number {
  const m = /(?:^|:)(\d{1,5})$/.exec(addr ?? '')
  return m ? Number(m[1]) : NaN
}
function hostOf(addr: string | undefined): string {
  const a = addr ?? ''
  const i = a.lastIndexOf(':')
  return i < 0 ? a : a.slice(0, i)
}
/** Quantity -> number (cores or bytes). */
function quantity(q: string | number | undefined): number {
  if (q === undefined) return NaN
  const m = /^(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$/.exec(String(q))
  if (!m) return NaN
  const mult: Record<string, number> = {
    m: 1e-3,
    k: 1e3,
    M: 1e6,
    G: 1e9,
    T: 1e12,
    Ki: 1024,
    Mi: 1024 ** 2,
    Gi: 1024 ** 3,
    Ti: 1024 ** 4,
  }
  return Number(m[1]) * (m[2] ? mult[m[2]]! : 1)
}
const matches = (
  sel: Record<string, string> | undefined,
  labels: Record<string, string> | undefined,
): boolean =>
  sel !== undefined && Object.keys(sel).length > 0 && Object.entries(sel).every(([k, v]) => labels?.[k] === v)

/** Resolve a probe/Service port (number or container port name) to a number. */
function resolvePort(c: Container, port: number | string | undefined): number | undefined {
  if (typeof port === 'number') return port
  return c.ports?.find((p) => p.name === port)?.containerPort
}

function roleOf(c: Container): 'coordinator' | 'worker' | undefined {
  const argv = [...(c.command ?? []), ...(c.args ?? [])]
  const cmd = c.command === undefined ? argv[0] : argv.find((a) => a === 'coordinator' || a === 'worker')
  return cmd === 'coordinator' || cmd === 'worker' ? cmd : undefined
}

function checkK8s(objs: Obj[]): string[] {
  const errs: string[] = []
  const err = (o: Obj, m: string): void => {
    errs.push(`${id(o)}: ${m}`)
  }
  const removed: Record<string, string> = {
    'extensions/v1beta1': '1.22',
    'apps/v1beta1': '1.16',
    'apps/v1beta2': '1.16',
    'policy/v1beta1/PodDisruptionBudget': '1.25',
    'batch/v1beta1/CronJob': '1.25',
    'autoscaling/v2beta1/HorizontalPodAutoscaler': '1.25',
    'autoscaling/v2beta2/HorizontalPodAutoscaler': '1.26',
    'networking.k8s.io/v1beta1': '1.22',
  }
  const workloads = objs.filter((o) => WORKLOADS.has(o.kind))
  const podsFor = (sel: Record<string, string> | undefined): Obj[] =>
    workloads.filter((w) => matches(sel, w.spec?.template?.metadata?.labels))
  const shoal = workloads.flatMap((w) =>
    (w.spec?.template?.spec?.containers ?? [])
      .map((c: Container) => ({ w, c, role: roleOf(c) }))
      .filter((x: { role: string | undefined }) => x.role !== undefined),
  ) as { w: Obj; c: Container; role: 'coordinator' | 'worker' }[]
  const byRole = (r: string): { w: Obj; c: Container } | undefined => shoal.find((x) => x.role === r)

  if (!findObj(objs, 'Namespace', NAMESPACE)) errs.push(`Namespace ${NAMESPACE} is not in the bundle`)
  for (const r of ['coordinator', 'worker']) if (!byRole(r)) errs.push(`no ${r} container in the bundle`)

  for (const o of objs) {
    const key = Object.keys(removed).find((k) => `${o.apiVersion}/${o.kind}`.startsWith(k))
    if (key) err(o, `${o.apiVersion} ${o.kind} was removed in Kubernetes ${removed[key]}`)
    const name = String(o.metadata?.name ?? '')
    const re =
      o.kind === 'Service' ? /^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/ : /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/
    if (!re.test(name)) err(o, `metadata.name "${name}" is not a valid DNS-1123 name`)
    if (!CLUSTER_SCOPED.has(o.kind) && o.metadata?.namespace !== NAMESPACE) {
      err(o, `must be in namespace ${NAMESPACE} (got ${o.metadata?.namespace})`)
    }

    if (WORKLOADS.has(o.kind)) {
      const tpl = o.spec?.template ?? {}
      if (!matches(o.spec?.selector?.matchLabels, tpl.metadata?.labels)) {
        err(o, 'spec.selector.matchLabels does not match spec.template.metadata.labels')
      }
      const pod = tpl.spec ?? {}
      if (pod.securityContext?.runAsNonRoot !== true) err(o, 'pod securityContext.runAsNonRoot must be true')
      if (pod.securityContext?.runAsUser === 0) err(o, 'pod securityContext.runAsUser must not be 0')
      for (const c of (pod.containers ?? []) as Container[]) {
        if (c.securityContext?.allowPrivilegeEscalation !== false)
          err(o, `${c.name}: allowPrivilegeEscalation must be false`)
        for (const r of ['cpu', 'memory']) {
          const req = quantity(c.resources?.requests?.[r])
          const lim = quantity(c.resources?.limits?.[r])
          if (Number.isNaN(req) || Number.isNaN(lim))
            err(o, `${c.name}: set resources.requests.${r} and limits.${r}`)
          else if (req > lim) err(o, `${c.name}: resources.requests.${r} > limits.${r}`)
        }
        for (const pk of ['livenessProbe', 'readinessProbe', 'startupProbe'] as const) {
          const p = c[pk]
          if (!p) continue
          const handlers = (['exec', 'httpGet', 'tcpSocket', 'grpc'] as const).filter(
            (h) => p[h] !== undefined,
          )
          if (handlers.length !== 1)
            err(o, `${c.name}.${pk}: needs exactly one handler (has ${handlers.join(',') || 'none'})`)
          const port = (p.httpGet ?? p.tcpSocket ?? p.grpc)?.port
          if (port !== undefined && resolvePort(c, port) === undefined)
            err(o, `${c.name}.${pk}: port ${port} is not a container port`)
          if (p.grpc && typeof p.grpc.port !== 'number') err(o, `${c.name}.${pk}: grpc.port must be a number`)
        }
        if (c.livenessProbe && !c.readinessProbe)
          err(o, `${c.name}: has a livenessProbe but no readinessProbe`)
        const { errors } = resolveEnv(c, objs, fieldsFor('pod-0', '10.0.0.10'))
        for (const e of errors) err(o, e)
      }
    }

    if (o.kind === 'Service') {
      const pods = podsFor(o.spec?.selector)
      if (pods.length === 0) err(o, `selector ${JSON.stringify(o.spec?.selector)} matches no workload`)
      for (const sp of (o.spec?.ports ?? []) as { port: number; targetPort?: number | string }[]) {
        const tp = sp.targetPort ?? sp.port
        for (const w of pods) {
          const ok = (w.spec.template.spec.containers as Container[]).some((c) => {
            const n = resolvePort(c, tp)
            return n !== undefined && (c.ports ?? []).some((p) => p.containerPort === n)
          })
          if (!ok) err(o, `targetPort ${tp} is not a container port of ${id(w)}`)
        }
      }
    }
  }

  // Shoal containers: contract ports, env, probes, drain
  for (const { w, c, role } of shoal) {
    const want = PORTS[role]
    const where = `${id(w)} ${c.name}`
    const named = (n: string): number | undefined => c.ports?.find((p) => p.name === n)?.containerPort
    if (named('transport') !== want.transport)
      errs.push(`${where}: container port "transport" must be ${want.transport}`)
    if (named('http') !== want.http) errs.push(`${where}: container port "http" must be ${want.http}`)
    const pod = fieldsFor(`${w.metadata.name}-5d8c7b9f4-x2x9z`, '10.0.0.10')
    const { env } = resolveEnv(c, objs, pod)
    for (const k of Object.keys(env)) {
      if (k.startsWith('SHOAL_') ? !KNOWN_SHOAL_ENV.has(k) : !OTHER_ENV.has(k))
        errs.push(`${where}: unknown variable ${k}`)
    }
    if (portOf(env.SHOAL_LISTEN) !== want.transport || hostOf(env.SHOAL_LISTEN) !== '0.0.0.0') {
      errs.push(`${where}: SHOAL_LISTEN must be 0.0.0.0:${want.transport} (got ${env.SHOAL_LISTEN})`)
    }
    if (portOf(env.SHOAL_HTTP) !== want.http || hostOf(env.SHOAL_HTTP) !== '0.0.0.0') {
      errs.push(`${where}: SHOAL_HTTP must be 0.0.0.0:${want.http} (got ${env.SHOAL_HTTP})`)
    }
    const transport = env.SHOAL_TRANSPORT ?? 'tcp'
    if (!['tcp', 'grpc'].includes(transport))
      errs.push(`${where}: SHOAL_TRANSPORT must be tcp or grpc (got ${transport})`)
    if (!env.SHOAL_TOKEN) errs.push(`${where}: SHOAL_TOKEN is not set`)
    if (!env.SHOAL_STATE) errs.push(`${where}: SHOAL_STATE is not set`)
    else if (/^rediss?:/.test(env.SHOAL_STATE)) {
      const u = new URL(env.SHOAL_STATE)
      const svc = findObj(objs, 'Service', u.hostname.split('.')[0]!)
      if (!u.hostname.includes('.') && !svc)
        errs.push(`${where}: SHOAL_STATE host ${u.hostname} is not a Service`)
      if (svc && !(svc.spec.ports as { port: number }[]).some((p) => p.port === Number(u.port || 6379))) {
        errs.push(`${where}: SHOAL_STATE port ${u.port || 6379} is not a port of Service ${u.hostname}`)
      }
    }
    // --source / --sink: every URL parses; Redis and Postgres hosts are Services of the bundle
    // (unless fully qualified), on one of their ports; a URL with a password comes from a Secret.
    for (const [k, parse] of [
      ['SHOAL_SOURCE', parseSourceUrl],
      ['SHOAL_SINK', parseSinkUrl],
    ] as const) {
      for (const url of (env[k] ?? '').split(/\s+/).filter(Boolean)) {
        let spec: ReturnType<typeof parse>
        try {
          spec = parse(url, k)
        } catch (e) {
          errs.push(`${where}: ${(e as Error).message}`)
          continue
        }
        if (spec.kind === 'file') continue
        const u = new URL(spec.kind === 'postgres' ? spec.url : spec.redis)
        const port = Number(u.port || (spec.kind === 'postgres' ? 5432 : 6379))
        const svc = findObj(objs, 'Service', u.hostname.split('.')[0]!)
        if (!u.hostname.includes('.') && !svc) errs.push(`${where}: ${k} host ${u.hostname} is not a Service`)
        if (svc && !(svc.spec.ports as { port: number }[]).some((p) => p.port === port)) {
          errs.push(`${where}: ${k} port ${port} is not a port of Service ${u.hostname}`)
        }
        if (u.password !== '' && !c.env?.find((e) => e.name === k)?.valueFrom?.secretKeyRef) {
          errs.push(`${where}: ${k} holds a password: take it from a Secret (secretKeyRef)`)
        }
        // A bundled Postgres: the sink's credentials are the ones it is started with.
        const db =
          svc &&
          podsFor(svc.spec.selector)
            .flatMap(containersOf)
            .find((x) => /(^|\/)postgres(:|$)/.test(x.image))
        if (spec.kind === 'postgres' && db) {
          const dbEnv = resolveEnv(db, objs, fieldsFor('pg-0', '10.0.0.11')).env
          const user = dbEnv.POSTGRES_USER ?? 'postgres'
          if (
            decodeURIComponent(u.username) !== user ||
            decodeURIComponent(u.password) !== dbEnv.POSTGRES_PASSWORD
          ) {
            errs.push(
              `${where}: ${k} user or password differs from Service ${u.hostname}'s POSTGRES_USER/POSTGRES_PASSWORD`,
            )
          }
          if (u.pathname.slice(1) !== (dbEnv.POSTGRES_DB ?? user)) {
            errs.push(
              `${where}: ${k} database ${u.pathname.slice(1)} is not POSTGRES_DB of Service ${u.hostname}`,
            )
          }
        }
      }
    }
    if (env.POD_NAME !== pod['metadata.name'])
      errs.push(`${where}: POD_NAME must come from fieldRef metadata.name`)
    // The node id defaults to POD_NAME; a worker appends a per-process suffix, so restarts never
    // share an identity. An explicit SHOAL_NODE_ID is used as given, which would defeat that.
    if (role === 'worker' && env.SHOAL_NODE_ID !== undefined) {
      errs.push(`${where}: leave SHOAL_NODE_ID unset (the node id comes from POD_NAME)`)
    }
    if (env.SHOAL_NODE_ID !== undefined && env.SHOAL_NODE_ID !== pod['metadata.name']) {
      errs.push(`${where}: SHOAL_NODE_ID must be the pod name (got ${env.SHOAL_NODE_ID})`)
    }
    const drainMs = Number(env.SHOAL_DRAIN_TIMEOUT_MS ?? DEFAULT_DRAIN_TIMEOUT_MS)
    const grace = (w.spec.template.spec.terminationGracePeriodSeconds as number | undefined) ?? 30
    if (!(grace > drainMs / 1000)) {
      errs.push(
        `${where}: terminationGracePeriodSeconds ${grace} must exceed SHOAL_DRAIN_TIMEOUT_MS ${drainMs} / 1000`,
      )
    }

    // probes: liveness /healthz and readiness /readyz on the HTTP port, or native gRPC on the transport port
    const httpPort = portOf(env.SHOAL_HTTP)
    const transportPort = portOf(env.SHOAL_LISTEN)
    const probeOk = (p: Probe | undefined, path: string, allowGrpc: boolean): string | undefined => {
      if (!p) return 'missing'
      if (p.httpGet) {
        if (p.httpGet.path !== path) return `httpGet.path must be ${path} (got ${p.httpGet.path})`
        if (resolvePort(c, p.httpGet.port) !== httpPort)
          return `httpGet.port must be the HTTP port ${httpPort}`
        if ((p.httpGet.scheme ?? 'HTTP') !== 'HTTP') return 'the health port speaks plain HTTP'
        return undefined
      }
      if (p.grpc && allowGrpc) {
        if (p.grpc.port !== transportPort)
          return `grpc.port must be the transport port ${transportPort} (a number)`
        if ((p.grpc.service ?? '') !== '') return 'grpc.service must be "" (the server-wide status)'
        if (transport !== 'grpc')
          return 'a gRPC probe needs SHOAL_TRANSPORT=grpc (only the gRPC transport serves grpc.health.v1)'
        return undefined
      }
      return `must be httpGet ${path}${allowGrpc ? ' or grpc' : ''}`
    }
    const checks: [keyof Container, string, boolean][] = [
      ['livenessProbe', '/healthz', false],
      ['readinessProbe', '/readyz', true],
    ]
    // A standby coordinator does not listen on its transport port: a gRPC startup probe would
    // never pass there, and the kubelet would kill it.
    if (c.startupProbe) checks.push(['startupProbe', '/healthz', role !== 'coordinator'])
    for (const [pk, path, grpc] of checks) {
      const m = probeOk(c[pk] as Probe | undefined, path, grpc)
      if (m) errs.push(`${where}: ${pk} ${m}`)
    }

    if (role === 'coordinator') {
      // High availability: replicas with stable names, one leader (the only ready pod).
      const spec = w.spec ?? {}
      const labels = w.spec?.template?.metadata?.labels as Record<string, string> | undefined
      if (w.kind !== 'StatefulSet') {
        errs.push(`${where}: run the coordinator replicas as a StatefulSet (stable names for the workers)`)
      } else {
        if (!((spec.replicas ?? 1) >= 2))
          errs.push(`${where}: run at least 2 coordinator replicas (one leads, the others stand by)`)
        if (spec.podManagementPolicy !== 'Parallel') {
          errs.push(
            `${where}: podManagementPolicy must be Parallel (a standby is never ready: OrderedReady would not replace a replica behind one)`,
          )
        }
        if (spec.updateStrategy?.type !== 'OnDelete') {
          errs.push(
            `${where}: updateStrategy must be OnDelete (a RollingUpdate waits for an updated standby to become ready, forever)`,
          )
        }
        const gov = findObj(objs, 'Service', spec.serviceName)
        if (gov?.spec?.clusterIP === 'None') {
          if (!matches(gov.spec.selector, labels))
            errs.push(`${where}: Service ${spec.serviceName} does not select the coordinator pods`)
          if (gov.spec.publishNotReadyAddresses !== true) {
            errs.push(
              `${where}: Service ${spec.serviceName} must set publishNotReadyAddresses (a standby's name must resolve before it leads)`,
            )
          }
        }
      }
      const anti = w.spec?.template?.spec?.affinity?.podAntiAffinity ?? {}
      const terms = [
        ...((anti.requiredDuringSchedulingIgnoredDuringExecution ?? []) as Obj[]),
        ...((anti.preferredDuringSchedulingIgnoredDuringExecution ?? []) as Obj[]).map(
          (t) => t.podAffinityTerm as Obj,
        ),
      ]
      if (
        !terms.some(
          (t) => t.topologyKey === 'kubernetes.io/hostname' && matches(t.labelSelector?.matchLabels, labels),
        )
      ) {
        errs.push(`${where}: spread the replicas over nodes (podAntiAffinity on kubernetes.io/hostname)`)
      }
      // Clients: a ClusterIP Service, which routes to ready pods only, i.e. to the leader.
      const clientSvcs = objs.filter(
        (o) => o.kind === 'Service' && o.spec?.clusterIP !== 'None' && matches(o.spec?.selector, labels),
      )
      if (clientSvcs.length === 0)
        errs.push(`${where}: no Service for clients (not headless) routes to the coordinator leader`)
      for (const svc of clientSvcs) {
        if (svc.spec.publishNotReadyAddresses === true)
          err(svc, 'must route to ready pods only (the leader): remove publishNotReadyAddresses')
        const reaches = (svc.spec.ports as { port: number; targetPort?: number | string }[]).some(
          (p) => resolvePort(c, p.targetPort ?? p.port) === want.transport,
        )
        if (!reaches) err(svc, "no port reaches the coordinator's transport port")
      }
    } else {
      if (
        portOf(env.SHOAL_ADVERTISE) !== want.transport ||
        hostOf(env.SHOAL_ADVERTISE) !== pod['status.podIP']
      ) {
        errs.push(
          `${where}: SHOAL_ADVERTISE must be $(POD_IP):${want.transport} (got ${env.SHOAL_ADVERTISE})`,
        )
      }
      // SHOAL_COORDINATOR: every coordinator replica by its stable name, each once
      const coord = byRole('coordinator')
      if (coord) errs.push(...coordinatorListErrors(where, env.SHOAL_COORDINATOR, objs, coord))
      const headless = objs.find(
        (o) =>
          o.kind === 'Service' &&
          o.spec?.clusterIP === 'None' &&
          matches(o.spec.selector, w.spec.template.metadata.labels),
      )
      if (!headless) errs.push(`${where}: no headless Service selects the workers`)
    }
  }

  // PDBs: one for the worker Deployment, one for the coordinator StatefulSet; the HPA: workers
  const worker = byRole('worker')?.w
  const coordinator = byRole('coordinator')?.w
  const pdbs = objs.filter((o) => o.kind === 'PodDisruptionBudget')
  const hpas = objs.filter((o) => o.kind === 'HorizontalPodAutoscaler')
  if (worker && !pdbs.some((p) => podsFor(p.spec?.selector?.matchLabels).includes(worker))) {
    errs.push('no PodDisruptionBudget covers the workers')
  }
  if (coordinator && !pdbs.some((p) => podsFor(p.spec?.selector?.matchLabels).includes(coordinator))) {
    errs.push('no PodDisruptionBudget covers the coordinators')
  }
  for (const o of pdbs) {
    if (o.apiVersion !== 'policy/v1') err(o, 'use policy/v1')
    if ((o.spec?.minAvailable === undefined) === (o.spec?.maxUnavailable === undefined)) {
      err(o, 'set exactly one of minAvailable and maxUnavailable')
    }
    const pods = podsFor(o.spec?.selector?.matchLabels)
    if (pods.length !== 1 || (pods[0] !== worker && pods[0] !== coordinator)) {
      err(
        o,
        `must select the worker Deployment or the coordinator StatefulSet only (selects ${pods.map(id).join(', ') || 'nothing'})`,
      )
    }
    for (const w of pods) {
      if (w === coordinator) {
        // Disruption budgets count ready pods, and only the leader is ever ready: minAvailable 1
        // keeps a drain from taking the leader (a standby may go); more would block every eviction.
        if (o.spec.minAvailable !== 1)
          err(o, 'coordinators: minAvailable must be 1 (only the leader is ever ready)')
        continue
      }
      if (typeof o.spec.minAvailable === 'number' && o.spec.minAvailable >= (w.spec?.replicas ?? 1)) {
        err(o, `minAvailable ${o.spec.minAvailable} >= replicas: no node drain could proceed`)
      }
      if (o.spec.maxUnavailable === 0) err(o, 'maxUnavailable 0 blocks every node drain')
    }
  }
  if (worker && !hpas.some((h) => h.spec?.scaleTargetRef?.name === worker.metadata.name)) {
    errs.push('no HorizontalPodAutoscaler scales the workers')
  }
  for (const o of hpas) {
    if (o.apiVersion !== 'autoscaling/v2') err(o, 'use autoscaling/v2')
    const s = o.spec ?? {}
    const t = s.scaleTargetRef ? findObj(objs, s.scaleTargetRef.kind, s.scaleTargetRef.name) : undefined
    if (!t || t !== worker || s.scaleTargetRef.apiVersion !== t.apiVersion) {
      err(
        o,
        `scaleTargetRef ${s.scaleTargetRef?.kind}/${s.scaleTargetRef?.name} is not the worker Deployment`,
      )
    }
    if (!(s.minReplicas >= 1) || s.minReplicas > s.maxReplicas)
      err(o, `minReplicas ${s.minReplicas} / maxReplicas ${s.maxReplicas}`)
    for (const m of (s.metrics ?? []) as Obj[]) {
      if (t && m.resource?.target?.type === 'Utilization') {
        for (const c of containersOf(t)) {
          if (!c.resources?.requests?.[m.resource.name])
            err(o, `Utilization of ${m.resource.name} needs requests on ${c.name}`)
        }
      }
    }
  }

  // Redis: a StatefulSet with AOF on a claim, behind its headless governing Service
  for (const o of objs.filter((x) => x.kind === 'StatefulSet')) {
    const svc = findObj(objs, 'Service', o.spec?.serviceName)
    if (!svc || svc.spec.clusterIP !== 'None')
      err(o, `serviceName ${o.spec?.serviceName} must be a headless Service`)
    for (const c of containersOf(o).filter((x) => /(^|\/)redis(:|$)/.test(x.image))) {
      const argv = [...(c.command ?? []), ...(c.args ?? [])]
      const i = argv.indexOf('--appendonly')
      if (i < 0 || argv[i + 1] !== 'yes') err(o, `${c.name}: run redis-server with --appendonly yes`)
      const claims = ((o.spec.volumeClaimTemplates ?? []) as Obj[]).map((v) => v.metadata.name as string)
      if (!(c.volumeMounts ?? []).some((m) => m.mountPath === '/data' && claims.includes(m.name))) {
        err(o, `${c.name}: mount a volumeClaimTemplate at /data`)
      }
    }
    for (const c of containersOf(o).filter((x) => /(^|\/)postgres(:|$)/.test(x.image))) {
      if (c.readinessProbe?.exec?.command[0] !== 'pg_isready')
        err(o, `${c.name}: readinessProbe must exec pg_isready`)
      const claims = ((o.spec.volumeClaimTemplates ?? []) as Obj[]).map((v) => v.metadata.name as string)
      const { env } = resolveEnv(c, objs, fieldsFor('pg-0', '10.0.0.11'))
      const data = (c.volumeMounts ?? []).find((m) => claims.includes(m.name))
      if (!data) err(o, `${c.name}: mount a volumeClaimTemplate for the data`)
      else if (!(env.PGDATA ?? '/var/lib/postgresql/data').startsWith(`${data.mountPath}/`)) {
        err(o, `${c.name}: PGDATA must be a subdirectory of the claim mounted at ${data.mountPath}`)
      }
      if (!env.POSTGRES_PASSWORD) err(o, `${c.name}: POSTGRES_PASSWORD is not set`)
      else if (!c.env?.find((e) => e.name === 'POSTGRES_PASSWORD')?.valueFrom?.secretKeyRef)
        err(o, `${c.name}: POSTGRES_PASSWORD must come from a Secret`)
    }
  }
  return errs
}

/**
 * The coordinator replicas' stable transport addresses: `<statefulset>-<i>.<governing Service>`
 * (optionally followed by `.<namespace>[.svc[.cluster.local]]`) on a port of that Service that
 * reaches the transport port (checked by the caller). Undefined when the coordinator is not a
 * StatefulSet.
 */
function coordinatorReplicas(coord: {
  w: Obj
  c: Container
}): { names: string[]; parse(addr: string): { ordinal: number; port: number } | undefined } | undefined {
  if (coord.w.kind !== 'StatefulSet') return undefined
  const sts = String(coord.w.metadata.name)
  const gov = String(coord.w.spec?.serviceName)
  const n = (coord.w.spec?.replicas as number | undefined) ?? 1
  const esc = (x: string): string => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  const ns = esc(String(coord.w.metadata?.namespace ?? NAMESPACE))
  const re = new RegExp(`^${esc(sts)}-(\\d+)\\.${esc(gov)}(?:\\.${ns}(?:\\.svc(?:\\.cluster\\.local)?)?)?$`)
  return {
    names: Array.from({ length: n }, (_, i) => `${sts}-${i}.${gov}`),
    parse: (addr) => {
      const m = re.exec(hostOf(addr))
      return m ? { ordinal: Number(m[1]), port: portOf(addr) } : undefined
    },
  }
}

/** A worker's SHOAL_COORDINATOR: every coordinator replica once, by its stable name. */
function coordinatorListErrors(
  where: string,
  list: string | undefined,
  objs: Obj[],
  coord: { w: Obj; c: Container },
): string[] {
  const replicas = coordinatorReplicas(coord)
  if (replicas === undefined) return [] // reported on the coordinator itself
  const errs: string[] = []
  const gov = findObj(objs, 'Service', coord.w.spec.serviceName)
  const govPorts = (gov?.spec?.ports ?? []) as { port: number; targetPort?: number | string }[]
  const seen: number[] = []
  for (const entry of (list ?? '').split(',').map((x) => x.trim())) {
    const r = replicas.parse(entry)
    if (r === undefined || r.ordinal >= replicas.names.length) {
      errs.push(
        `${where}: SHOAL_COORDINATOR ${JSON.stringify(entry)} is not a coordinator replica (${replicas.names.join(', ')}); workers follow the leader through every replica's own name`,
      )
      continue
    }
    seen.push(r.ordinal)
    const sp = govPorts.find((p) => p.port === r.port)
    if (!sp || resolvePort(coord.c, sp.targetPort ?? sp.port) !== PORTS.coordinator.transport)
      errs.push(
        `${where}: SHOAL_COORDINATOR ${entry}: port ${r.port} does not reach the coordinator's transport port`,
      )
  }
  const want = replicas.names.map((_, i) => i)
  if (JSON.stringify([...seen].sort((a, b) => a - b)) !== JSON.stringify(want)) {
    errs.push(
      `${where}: SHOAL_COORDINATOR must name each of the ${want.length} coordinator replicas once: ${replicas.names.map((x) => `${x}:${PORTS.coordinator.transport}`).join(',')} (got ${list})`,
    )
  }
  return errs
}

// ---- live nodes -----------------------------------------------------------------------------------------

async function freePort(): Promise<number> {
  const srv = createServer()
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  const port = (srv.address() as { port: number }).port
  await new Promise<void>((r) => srv.close(() => r()))
  return port
}

interface Proc {
  child: ChildProcess
  output: () => string
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}
const procs: Proc[] = []
function startProcess(cmd: string, args: string[], env: Record<string, string>): Proc {
  const base = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('SHOAL_') && !k.startsWith('POD_')),
  )
  const child = spawn(cmd, args, { cwd: ROOT, env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  const keep = (d: Buffer): void => {
    out = (out + d.toString()).slice(-40_000)
  }
  child.stdout.on('data', keep)
  child.stderr.on('data', keep)
  const exited = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }))
  const p = { child, output: () => out, exited }
  procs.push(p)
  return p
}
async function stopAll(): Promise<void> {
  await Promise.all(
    procs.splice(0).map(async (p) => {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL')
      await p.exited
    }),
  )
}

async function startRedis(dir: string): Promise<number> {
  const port = await freePort()
  const redis = startProcess(
    'redis-server',
    ['--bind', '127.0.0.1', '--port', String(port), '--appendonly', 'yes', '--save', '', '--dir', dir],
    {},
  )
  const deadline = Date.now() + 10_000
  while (!redis.output().includes('Ready to accept connections')) {
    if (redis.child.exitCode !== null || Date.now() > deadline) {
      throw new Error(`redis-server did not start (is it installed?)\n${redis.output()}`)
    }
    await new Promise((r) => setTimeout(r, 20))
  }
  return port
}

/** One probe, the way the kubelet runs it. Resolves to undefined on success, else the reason. */
async function runProbe(c: Container, p: Probe, portMap: Map<number, number>): Promise<string | undefined> {
  const timeoutMs = (p.timeoutSeconds ?? 1) * 1000
  const port = portMap.get(resolvePort(c, (p.httpGet ?? p.grpc ?? p.tcpSocket)!.port)!)
  try {
    if (p.httpGet) {
      const res = await fetch(`http://127.0.0.1:${port}${p.httpGet.path ?? '/'}`, {
        signal: AbortSignal.timeout(timeoutMs),
        redirect: 'manual',
      })
      await res.arrayBuffer()
      return res.status >= 200 && res.status < 400 ? undefined : `HTTP ${res.status}`
    }
    if (p.grpc) {
      const status = await checkHealth(`127.0.0.1:${port}`, p.grpc.service ?? '', timeoutMs)
      return status === 'SERVING' ? undefined : status
    }
    if (p.tcpSocket) {
      await new Promise<void>((res, rej) => {
        const s = connect(port!, '127.0.0.1', () => {
          s.destroy()
          res()
        })
        s.setTimeout(timeoutMs, () => s.destroy(new Error('timeout')))
        s.on('error', rej)
      })
      return undefined
    }
  } catch (err) {
    return (err as Error).message
  }
  return 'unsupported probe'
}

async function waitForProbe(c: Container, p: Probe, portMap: Map<number, number>, proc: Proc, ms = 20_000) {
  const deadline = Date.now() + ms
  for (;;) {
    if (proc.child.exitCode !== null)
      throw new Error(`node exited (${proc.child.exitCode})\n${proc.output()}`)
    const why = await runProbe(c, p, portMap)
    if (why === undefined) return
    if (Date.now() > deadline)
      throw new Error(`probe ${JSON.stringify(p)} still failing: ${why}\n${proc.output()}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** Where each DNS name's ports are on loopback: name -> container port -> port. */
type Endpoints = Map<string, Map<number, number>>

/**
 * Container addresses -> loopback: the pod's own listen addresses (0.0.0.0:PORT, ports `self`),
 * other pods and Services by DNS name (HOST:PORT, comma lists for SHOAL_COORDINATOR), and the
 * Redis URL. A name or port nothing serves is an error: cluster DNS would not resolve it either.
 */
function remapEnv(env: Record<string, string>, self: Map<number, number>, endpoints: Endpoints) {
  const out: Record<string, string> = {}
  const port = (ports: Map<number, number> | undefined, p: number, what: string): number => {
    const mapped = ports?.get(p)
    if (mapped === undefined) throw new Error(`${what}: nothing serves port ${p} there`)
    return mapped
  }
  const addr = (v: string): string => {
    const host = hostOf(v)
    const ports = ['0.0.0.0', '[::]', ''].includes(host) ? self : endpoints.get(host)
    return `127.0.0.1:${port(ports, portOf(v), v)}`
  }
  for (const [k, v] of Object.entries(env)) {
    if (['SHOAL_LISTEN', 'SHOAL_HTTP'].includes(k) && v.includes(':')) {
      out[k] = addr(v)
    } else if (k === 'SHOAL_ADVERTISE') {
      out[k] = `127.0.0.1:${port(self, portOf(v), v)}` // $(POD_IP):PORT, this pod
    } else if (k === 'SHOAL_COORDINATOR') {
      out[k] = v
        .split(',')
        .map((x) => addr(x.trim()))
        .join(',')
    } else if (k === 'SHOAL_STATE' && /^rediss?:/.test(v)) {
      const u = new URL(v)
      u.port = String(port(endpoints.get(u.hostname), Number(u.port || 6379), v))
      u.hostname = '127.0.0.1'
      out[k] = u.href.replace(/\/$/, '')
    } else out[k] = v
  }
  return out
}

/** The container's argv (image ENTRYPOINT unless command is set), run from the source tree. */
function devArgs(c: Container): string[] {
  if (c.command !== undefined)
    throw new Error(`${c.name}: command overrides the image entrypoint; update this test`)
  return ['--import', 'tsx', MAIN_TS, ...(c.args ?? [])]
}

function shoalContainer(objs: Obj[], role: 'coordinator' | 'worker'): { w: Obj; c: Container } {
  for (const w of objs.filter((o) => WORKLOADS.has(o.kind))) {
    for (const c of (w.spec.template.spec.containers ?? []) as Container[])
      if (roleOf(c) === role) return { w, c }
  }
  throw new Error(`no ${role} container`)
}

function sourceFiles(dir: string): string[] {
  if (!existsSync(dir)) return []
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f)
    return statSync(p).isDirectory() ? sourceFiles(p) : /\.(ts|mts|js|mjs)$/.test(f) ? [p] : []
  })
}

// ---- tests --------------------------------------------------------------------------------------------------

const rendered = {
  base: render(VARIANTS.base),
  grpc: render(VARIANTS.grpc),
  pipeline: render(VARIANTS.pipeline),
}

describe('k8s/ (static)', () => {
  it.each(Object.keys(VARIANTS) as (keyof typeof VARIANTS)[])(
    '%s: the subset renderer matches kubectl kustomize (when kubectl exists)',
    (variant) => {
      const subset = renderSubset(VARIANTS[variant])
      expect(subset.length).toBeGreaterThan(0)
      if (HAVE_KUBECTL) expect(sorted(subset)).toEqual(sorted(rendered[variant]))
    },
  )

  it('renders the expected objects', () => {
    expect(rendered.base.map(id).sort()).toEqual(
      [
        'ConfigMap/shoal-config',
        'StatefulSet/shoal-coordinator',
        'Deployment/shoal-worker',
        'HorizontalPodAutoscaler/shoal-worker',
        'Namespace/shoal',
        'PodDisruptionBudget/shoal-coordinator',
        'PodDisruptionBudget/shoal-worker',
        'Secret/shoal-secrets',
        'Service/shoal-coordinator',
        'Service/shoal-coordinator-headless',
        'Service/shoal-redis',
        'Service/shoal-worker',
        'StatefulSet/shoal-redis',
      ].sort(),
    )
    expect(rendered.grpc.map(id).sort()).toEqual(rendered.base.map(id).sort())
    expect(rendered.pipeline.map(id).sort()).toEqual(
      [
        ...rendered.base.map(id),
        'Secret/shoal-pipeline',
        'Service/shoal-postgres',
        'StatefulSet/shoal-postgres',
      ].sort(),
    )
  })

  it('the pipeline overlay gives the workers (only) a Redis Stream source and a Postgres sink from the Secret', () => {
    const { w, c } = shoalContainer(rendered.pipeline, 'worker')
    const { env } = resolveEnv(c, rendered.pipeline, fieldsFor(w.metadata.name, '10.0.0.10'))
    expect(parseSourceUrl(env.SHOAL_SOURCE!)).toMatchObject({
      redis: 'redis://shoal-redis:6379',
      stream: 'events',
      group: 'shoal',
    })
    expect(parseSinkUrl(env.SHOAL_SINK!)).toMatchObject({
      kind: 'postgres',
      table: 'shoal_state',
      mode: 'state',
    })
    // The semi-spaces `shoal up` gives a worker that reads a source.
    expect(env.NODE_OPTIONS).toBe(`--max-semi-space-size=${SOURCE_WORKER_SEMI_SPACE_MB}`)
    expect(c.env!.find((e) => e.name === 'SHOAL_SINK')!.valueFrom?.secretKeyRef).toEqual({
      name: 'shoal-pipeline',
      key: 'SHOAL_SINK',
    })
    const coord = shoalContainer(rendered.pipeline, 'coordinator')
    const coordEnv = resolveEnv(coord.c, rendered.pipeline, fieldsFor('c', '10.0.0.1')).env
    expect([coordEnv.SHOAL_SOURCE, coordEnv.SHOAL_SINK]).toEqual([undefined, undefined])
  })

  it.each(Object.keys(VARIANTS) as (keyof typeof VARIANTS)[])(
    '%s: every object passes kubernetes-models validate()',
    (v) => {
      expect(rendered[v].flatMap(modelErrors)).toEqual([])
    },
  )

  it('every object type-checks against kubernetes-models (no unknown fields)', () => {
    const all = [...rendered.base, ...rendered.grpc, ...rendered.pipeline]
    expect(typeErrors(all)).toEqual([])
  }, 60_000)

  it.each(Object.keys(VARIANTS) as (keyof typeof VARIANTS)[])(
    '%s: cross-object and contract checks pass',
    (v) => {
      expect(checkK8s(rendered[v])).toEqual([])
    },
  )

  it.each(Object.keys(VARIANTS) as (keyof typeof VARIANTS)[])(
    '%s: 2 coordinator replicas (StatefulSet), only the leader ready, workers dial both, a PDB',
    (v) => {
      const objs = rendered[v]
      const { w, c } = shoalContainer(objs, 'coordinator')
      expect(w.kind).toBe('StatefulSet')
      expect(w.spec).toMatchObject({
        replicas: 2,
        serviceName: 'shoal-coordinator-headless',
        podManagementPolicy: 'Parallel',
        updateStrategy: { type: 'OnDelete' },
      })
      const labels = w.spec.template.metadata.labels as Record<string, string>
      // alive: /healthz (leader or standby); ready: the leader only
      expect(c.livenessProbe?.httpGet).toEqual({ path: '/healthz', port: 'http' })
      expect(c.startupProbe?.httpGet).toEqual({ path: '/healthz', port: 'http' })
      if (v === 'grpc') expect(c.readinessProbe?.grpc).toEqual({ port: 7400, service: '' })
      else expect(c.readinessProbe?.httpGet).toEqual({ path: '/readyz', port: 'http' })
      // the headless Service names every replica, ready or not; the client Service only the ready one
      const headless = findObj(objs, 'Service', 'shoal-coordinator-headless')!
      expect(headless.spec).toMatchObject({ clusterIP: 'None', publishNotReadyAddresses: true })
      expect(matches(headless.spec.selector, labels)).toBe(true)
      const client = findObj(objs, 'Service', 'shoal-coordinator')!
      expect(client.spec.clusterIP).toBeUndefined()
      expect(client.spec.publishNotReadyAddresses).toBeUndefined()
      expect(matches(client.spec.selector, labels)).toBe(true)
      // workers: every replica's stable name, from the ConfigMap
      const wk = shoalContainer(objs, 'worker')
      const { env } = resolveEnv(wk.c, objs, fieldsFor('shoal-worker-x', '10.0.0.10'))
      expect(env.SHOAL_COORDINATOR).toBe(
        'shoal-coordinator-0.shoal-coordinator-headless:7400,shoal-coordinator-1.shoal-coordinator-headless:7400',
      )
      expect(wk.c.env?.some((e) => e.name === 'SHOAL_COORDINATOR')).toBe(false)
      // one PDB for the coordinators, minAvailable 1
      const pdb = findObj(objs, 'PodDisruptionBudget', 'shoal-coordinator')!
      expect(pdb.spec.minAvailable).toBe(1)
      expect(pdb.spec.maxUnavailable).toBeUndefined()
      expect(matches(pdb.spec.selector.matchLabels, labels)).toBe(true)
      // every replica its own node id: the pod name
      const ids = [0, 1].map(
        (i) => resolveEnv(c, objs, fieldsFor(`shoal-coordinator-${i}`, `10.0.0.${i + 1}`)).env,
      )
      expect(ids.map((e) => [e.POD_NAME, e.SHOAL_NODE_ID])).toEqual([
        ['shoal-coordinator-0', undefined],
        ['shoal-coordinator-1', undefined],
      ])
    },
  )

  it('the gRPC overlay switches the transport and probes the coordinator with native gRPC', () => {
    const { w, c } = shoalContainer(rendered.grpc, 'coordinator')
    expect(c.readinessProbe?.grpc).toEqual({ port: PORTS.coordinator.transport, service: '' })
    expect(resolveEnv(c, rendered.grpc, fieldsFor('p', '10.0.0.1')).env.SHOAL_TRANSPORT).toBe('grpc')
    expect(w.spec.template.spec.terminationGracePeriodSeconds).toBe(30)
    const base = shoalContainer(rendered.base, 'coordinator').c
    expect(base.readinessProbe?.httpGet).toEqual({ path: '/readyz', port: 'http' })
  })

  it('the checks catch broken manifests', () => {
    const broken = (f: (objs: Obj[]) => void, variant: keyof typeof rendered = 'base'): string[] => {
      const objs = clone(rendered[variant])
      f(objs)
      return checkK8s(objs)
    }
    const get = (objs: Obj[], kind: string, name: string): Obj => findObj(objs, kind, name)!
    const worker = (objs: Obj[]): Container =>
      get(objs, 'Deployment', 'shoal-worker').spec.template.spec.containers[0]
    const coordSts = (objs: Obj[]): Obj => get(objs, 'StatefulSet', 'shoal-coordinator')
    const coord = (objs: Obj[]): Container => coordSts(objs).spec.template.spec.containers[0]

    expect(
      broken(
        (o) =>
          (get(o, 'Deployment', 'shoal-worker').spec.template.metadata.labels['app.kubernetes.io/component'] =
            'w'),
      ),
    ).toEqual(
      expect.arrayContaining([
        'Deployment/shoal-worker: spec.selector.matchLabels does not match spec.template.metadata.labels',
      ]),
    )
    expect(
      broken((o) => (get(o, 'Service', 'shoal-coordinator').spec.ports[1].targetPort = 'metrics')),
    ).toContain(
      'Service/shoal-coordinator: targetPort metrics is not a container port of StatefulSet/shoal-coordinator',
    )
    expect(broken((o) => (worker(o).readinessProbe!.httpGet!.path = '/ready'))).toContain(
      'Deployment/shoal-worker worker: readinessProbe httpGet.path must be /readyz (got /ready)',
    )
    expect(broken((o) => (worker(o).livenessProbe!.httpGet!.port = 7410))).toContain(
      'Deployment/shoal-worker worker: livenessProbe httpGet.port must be the HTTP port 7411',
    )
    expect(broken((o) => (coord(o).readinessProbe = { grpc: { port: 'transport' } }), 'grpc')).toEqual(
      expect.arrayContaining([
        'StatefulSet/shoal-coordinator: coordinator.readinessProbe: grpc.port must be a number',
      ]),
    )
    expect(broken((o) => (coord(o).readinessProbe = { grpc: { port: 7400 } }), 'base')).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/readinessProbe a gRPC probe needs SHOAL_TRANSPORT=grpc/),
      ]),
    )
    expect(
      broken(
        (o) => (get(o, 'Deployment', 'shoal-worker').spec.template.spec.terminationGracePeriodSeconds = 20),
      ),
    ).toContain(
      'Deployment/shoal-worker worker: terminationGracePeriodSeconds 20 must exceed SHOAL_DRAIN_TIMEOUT_MS 20000 / 1000',
    )
    expect(
      broken((o) => (get(o, 'HorizontalPodAutoscaler', 'shoal-worker').spec.scaleTargetRef.name = 'worker')),
    ).toEqual(expect.arrayContaining(['no HorizontalPodAutoscaler scales the workers']))
    expect(
      broken(
        (o) =>
          (get(o, 'PodDisruptionBudget', 'shoal-worker').spec.selector.matchLabels[
            'app.kubernetes.io/component'
          ] = 'coordinator'),
      ),
    ).toEqual(expect.arrayContaining(['no PodDisruptionBudget covers the workers']))
    expect(broken((o) => (get(o, 'ConfigMap', 'shoal-config').data.SHOAL_WORKERS = '3'))).toEqual(
      expect.arrayContaining(['Deployment/shoal-worker worker: unknown variable SHOAL_WORKERS']),
    )
    expect(broken((o) => delete get(o, 'Secret', 'shoal-secrets').stringData.SHOAL_TOKEN)).toEqual(
      expect.arrayContaining([
        'Deployment/shoal-worker: worker: SHOAL_TOKEN: Secret shoal-secrets has no key SHOAL_TOKEN',
      ]),
    )
    expect(
      broken((o) => {
        const env = worker(o).env!
        env.push(
          env.splice(
            env.findIndex((e) => e.name === 'POD_IP'),
            1,
          )[0]!,
        )
      }),
    ).toEqual(expect.arrayContaining([expect.stringMatching(/SHOAL_ADVERTISE refers to \$\(POD_IP\)/)]))
    expect(broken((o) => delete worker(o).resources!.limits)).toEqual(
      expect.arrayContaining(['Deployment/shoal-worker: worker: set resources.requests.cpu and limits.cpu']),
    )
    expect(
      broken(
        (o) => (get(o, 'Deployment', 'shoal-worker').spec.template.spec.securityContext.runAsNonRoot = false),
      ),
    ).toContain('Deployment/shoal-worker: pod securityContext.runAsNonRoot must be true')
    // coordinator high availability
    const cw = 'StatefulSet/shoal-coordinator coordinator'
    const cfg = (o: Obj[]): Record<string, string> => get(o, 'ConfigMap', 'shoal-config').data
    expect(broken((o) => (coordSts(o).spec.replicas = 1))).toEqual([
      expect.stringMatching(
        /^Deployment\/shoal-worker worker: SHOAL_COORDINATOR "shoal-coordinator-1\.shoal-coordinator-headless:7400" is not a coordinator replica \(shoal-coordinator-0\.shoal-coordinator-headless\)/,
      ),
      `${cw}: run at least 2 coordinator replicas (one leads, the others stand by)`,
    ])
    expect(broken((o) => (coordSts(o).spec.replicas = 3))).toEqual([
      `Deployment/shoal-worker worker: SHOAL_COORDINATOR must name each of the 3 coordinator replicas once: shoal-coordinator-0.shoal-coordinator-headless:7400,shoal-coordinator-1.shoal-coordinator-headless:7400,shoal-coordinator-2.shoal-coordinator-headless:7400 (got ${cfg(rendered.base).SHOAL_COORDINATOR})`,
    ])
    expect(broken((o) => delete coordSts(o).spec.podManagementPolicy)).toEqual([
      `${cw}: podManagementPolicy must be Parallel (a standby is never ready: OrderedReady would not replace a replica behind one)`,
    ])
    expect(broken((o) => (coordSts(o).spec.updateStrategy = { type: 'RollingUpdate' }))).toEqual([
      `${cw}: updateStrategy must be OnDelete (a RollingUpdate waits for an updated standby to become ready, forever)`,
    ])
    expect(
      broken((o) => delete get(o, 'Service', 'shoal-coordinator-headless').spec.publishNotReadyAddresses),
    ).toEqual([
      `${cw}: Service shoal-coordinator-headless must set publishNotReadyAddresses (a standby's name must resolve before it leads)`,
    ])
    expect(broken((o) => delete coordSts(o).spec.template.spec.affinity)).toEqual([
      `${cw}: spread the replicas over nodes (podAntiAffinity on kubernetes.io/hostname)`,
    ])
    // a Deployment cannot give the workers stable replica names
    expect(
      broken((o) => {
        const d = coordSts(o)
        d.kind = 'Deployment'
        delete d.spec.serviceName
        delete d.spec.podManagementPolicy
        delete d.spec.updateStrategy
      }),
    ).toContain(
      `Deployment/shoal-coordinator coordinator: run the coordinator replicas as a StatefulSet (stable names for the workers)`,
    )
    // readiness is leadership: a /healthz readiness probe would route clients to a standby
    expect(broken((o) => (coord(o).readinessProbe!.httpGet!.path = '/healthz'))).toEqual([
      `${cw}: readinessProbe httpGet.path must be /readyz (got /healthz)`,
    ])
    // a standby does not listen on its transport port: gRPC liveness or startup would kill it
    expect(broken((o) => (coord(o).startupProbe = { grpc: { port: 7400 } }), 'grpc')).toEqual([
      `${cw}: startupProbe must be httpGet /healthz`,
    ])
    expect(broken((o) => (coord(o).livenessProbe = { grpc: { port: 7400 } }), 'grpc')).toEqual([
      `${cw}: livenessProbe must be httpGet /healthz`,
    ])
    // workers: the client Service is not the replicas; every replica once; a port that reaches them
    expect(broken((o) => (cfg(o).SHOAL_COORDINATOR = 'shoal-coordinator:7400'))).toEqual([
      expect.stringMatching(
        /^Deployment\/shoal-worker worker: SHOAL_COORDINATOR "shoal-coordinator:7400" is not a coordinator replica/,
      ),
      expect.stringMatching(
        /^Deployment\/shoal-worker worker: SHOAL_COORDINATOR must name each of the 2 coordinator replicas once/,
      ),
    ])
    expect(
      broken((o) => (cfg(o).SHOAL_COORDINATOR = 'shoal-coordinator-0.shoal-coordinator-headless:7400')),
    ).toEqual([
      expect.stringMatching(
        /^Deployment\/shoal-worker worker: SHOAL_COORDINATOR must name each of the 2 coordinator replicas once/,
      ),
    ])
    expect(
      broken(
        (o) =>
          (cfg(o).SHOAL_COORDINATOR =
            'shoal-coordinator-0.shoal-coordinator-headless:7400,shoal-coordinator-0.shoal-coordinator-headless.shoal.svc.cluster.local:7400'),
      ),
    ).toEqual([
      expect.stringMatching(
        /^Deployment\/shoal-worker worker: SHOAL_COORDINATOR must name each of the 2 coordinator replicas once/,
      ),
    ])
    expect(
      broken(
        (o) =>
          (cfg(o).SHOAL_COORDINATOR =
            'shoal-coordinator-0.shoal-coordinator-headless.shoal.svc.cluster.local:7400,shoal-coordinator-1.shoal-coordinator-headless.shoal:7401'),
      ),
    ).toEqual([
      "Deployment/shoal-worker worker: SHOAL_COORDINATOR shoal-coordinator-1.shoal-coordinator-headless.shoal:7401: port 7401 does not reach the coordinator's transport port",
    ])
    // clients: the Service must route to the ready pod (the leader) only
    expect(
      broken((o) => (get(o, 'Service', 'shoal-coordinator').spec.publishNotReadyAddresses = true)),
    ).toEqual([
      'Service/shoal-coordinator: must route to ready pods only (the leader): remove publishNotReadyAddresses',
    ])
    expect(
      broken((o) => {
        const i = o.findIndex((x) => x.kind === 'Service' && x.metadata.name === 'shoal-coordinator')
        o.splice(i, 1)
      }),
    ).toEqual([`${cw}: no Service for clients (not headless) routes to the coordinator leader`])
    // the coordinators' PDB
    expect(
      broken((o) => {
        const i = o.findIndex(
          (x) => x.kind === 'PodDisruptionBudget' && x.metadata.name === 'shoal-coordinator',
        )
        o.splice(i, 1)
      }),
    ).toEqual(['no PodDisruptionBudget covers the coordinators'])
    expect(broken((o) => (get(o, 'PodDisruptionBudget', 'shoal-coordinator').spec.minAvailable = 2))).toEqual(
      [
        'PodDisruptionBudget/shoal-coordinator: coordinators: minAvailable must be 1 (only the leader is ever ready)',
      ],
    )
    expect(
      broken((o) => {
        const spec = get(o, 'PodDisruptionBudget', 'shoal-coordinator').spec
        delete spec.minAvailable
        spec.maxUnavailable = 1
      }),
    ).toEqual([
      'PodDisruptionBudget/shoal-coordinator: coordinators: minAvailable must be 1 (only the leader is ever ready)',
    ])
    // the pipeline's source, sink and Postgres
    const sinkEnv = (o: Obj[]): Container['env'] => worker(o).env!
    expect(
      broken(
        (o) =>
          (get(o, 'Secret', 'shoal-pipeline').stringData.SHOAL_SINK = get(
            o,
            'Secret',
            'shoal-pipeline',
          ).stringData.SHOAL_SINK.replace('mode=state', 'mode=rows')),
        'pipeline',
      ),
    ).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/SHOAL_SINK .*mode must be one of state, events, got "rows"/),
      ]),
    )
    expect(
      broken(
        (o) =>
          (get(o, 'Secret', 'shoal-pipeline').stringData.SHOAL_SINK =
            'postgres://shoal:other@shoal-postgres:5432/shoal?table=t'),
        'pipeline',
      ),
    ).toEqual([
      "Deployment/shoal-worker worker: SHOAL_SINK user or password differs from Service shoal-postgres's POSTGRES_USER/POSTGRES_PASSWORD",
    ])
    expect(
      broken((o) => {
        const e = sinkEnv(o)!.find((x) => x.name === 'SHOAL_SOURCE')!
        e.value = 'redis://redis:6379?stream=events&group=shoal'
      }, 'pipeline'),
    ).toEqual(['Deployment/shoal-worker worker: SHOAL_SOURCE host redis is not a Service'])
    expect(
      broken((o) => {
        const e = sinkEnv(o)!.find((x) => x.name === 'SHOAL_SINK')!
        delete e.valueFrom
        e.value = get(o, 'Secret', 'shoal-pipeline').stringData.SHOAL_SINK
      }, 'pipeline'),
    ).toEqual([
      'Deployment/shoal-worker worker: SHOAL_SINK holds a password: take it from a Secret (secretKeyRef)',
    ])
    expect(
      broken(
        (o) =>
          (get(o, 'StatefulSet', 'shoal-postgres').spec.template.spec.containers[0].readinessProbe = {
            tcpSocket: { port: 'postgres' },
          }),
        'pipeline',
      ),
    ).toEqual(['StatefulSet/shoal-postgres: postgres: readinessProbe must exec pg_isready'])
    // schema and unknown fields
    const bad = clone(get(rendered.base, 'Deployment', 'shoal-worker'))
    bad.spec.replicas = '3'
    expect(modelErrors(bad)).toEqual(
      expect.arrayContaining([expect.stringMatching(/\/spec\/replicas must be integer/)]),
    )
    const typo = clone(get(rendered.base, 'Deployment', 'shoal-worker'))
    typo.spec.template.spec.containers[0].readinessprobe =
      typo.spec.template.spec.containers[0].readinessProbe
    expect(modelErrors(typo)).toEqual([]) // the OpenAPI schema lets unknown fields through ...
    expect(typeErrors([typo])).toEqual([expect.stringMatching(/^Deployment\/shoal-worker: .*readinessprobe/)]) // ... the types do not
    // the renderer refuses what it does not implement
    const tmp = mkdtempSync(join(tmpdir(), 'shoal-kustomize-'))
    try {
      writeFileSync(
        join(tmp, 'kustomization.yaml'),
        'configMapGenerator:\n  - name: x\n    literals: [A=1]\n',
      )
      expect(() => renderSubset(tmp)).toThrow(/unsupported kustomization field "configMapGenerator"/)
    } finally {
      rmSync(tmp, { recursive: true, force: true })
    }
  }, 60_000)
})

describe("the CLI knows the manifests' variables", () => {
  it('every SHOAL_* variable (and POD_NAME) the containers get is read by src/cli or src/config', () => {
    expect(existsSync(MAIN_TS), 'src/cli/main.ts does not exist yet').toBe(true)
    const source = ['src/cli', 'src/config']
      .flatMap((d) => sourceFiles(join(ROOT, d)))
      .map((f) => readFileSync(f, 'utf8'))
      .join('\n')
    const used = new Set<string>()
    for (const objs of Object.values(rendered)) {
      for (const role of ['coordinator', 'worker'] as const) {
        const { w, c } = shoalContainer(objs, role)
        for (const k of Object.keys(resolveEnv(c, objs, fieldsFor(w.metadata.name, '10.0.0.10')).env))
          used.add(k)
      }
    }
    const missing = [...used].filter(
      (v) => (v.startsWith('SHOAL_') || v === 'POD_NAME') && !source.includes(`'${v}'`),
    )
    expect(missing, 'variables no file in src/cli or src/config mentions').toEqual([])
  })
})

// The pipeline variant's workers need Postgres and a Redis Stream: its connectors have their own
// suites (test/conformance, test/integration); its nodes start the same way as the base's.
for (const variant of ['base', 'grpc'] as const) {
  describe(`k8s ${variant}: containers as real nodes, probed like the kubelet`, () => {
    const objs = rendered[variant]
    const coord = shoalContainer(objs, 'coordinator')
    const wk = shoalContainer(objs, 'worker')
    const replicas = coordinatorReplicas(coord)!
    /** StatefulSet pods: <name>-0, <name>-1, ... */
    const pods = replicas.names.map((_, i) => `${coord.w.metadata.name}-${i}`)
    const workerPod = `${wk.w.metadata.name}-5d8c7b9f4-x2x9z`
    const endpoints: Endpoints = new Map()
    const portsOf = (pod: string): Map<number, number> => endpoints.get(pod)!
    const nodes = new Map<string, Proc>()
    let workerNode: Proc | undefined
    let leader = ''
    let dir = ''

    const envOf = (c: Container, pod: string): Record<string, string> => {
      const { env, errors } = resolveEnv(c, objs, fieldsFor(pod, '127.0.0.1'))
      expect(errors).toEqual([])
      return env
    }
    const startPod = (c: Container, pod: string): Proc =>
      startProcess(process.execPath, devArgs(c), remapEnv(envOf(c, pod), portsOf(pod), endpoints))
    /** A probe passes several times in a row, then once more within timeoutSeconds. */
    async function probePasses(c: Container, pod: string, k: keyof Container & `${string}Probe`) {
      const p = c[k] as Probe
      for (let streak = 0; streak < 5; streak++) {
        await waitForProbe(c, p, portsOf(pod), (pod === workerPod ? workerNode : nodes.get(pod))!)
        if ((await runProbe(c, p, portsOf(pod))) !== undefined) streak = -1
        await new Promise((r) => setTimeout(r, 100))
      }
      expect(await runProbe(c, p, portsOf(pod)), `${pod} ${k}`).toBeUndefined()
    }
    /** Poll every coordinator pod's readiness probe until exactly one passes: the leader. */
    async function waitForLeader(among: string[], timeoutMs = 20_000): Promise<string> {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const why = await Promise.all(
          among.map((pod) => runProbe(coord.c, coord.c.readinessProbe!, portsOf(pod))),
        )
        const ready = among.filter((_, i) => why[i] === undefined)
        if (ready.length === 1) return ready[0]!
        if (Date.now() > deadline)
          throw new Error(
            `no single ready coordinator after ${timeoutMs} ms: ${among.map((p, i) => `${p}: ${why[i] ?? 'ready'}`).join(', ')}\n` +
              among.map((p) => nodes.get(p)?.output().slice(-4000) ?? '').join('\n'),
          )
        await new Promise((r) => setTimeout(r, 100))
      }
    }
    /** The leader's /status (with the token) once the worker is its only member and serves everything. */
    async function waitWorkerServed(leaderPod: string, timeoutMs = 30_000): Promise<void> {
      const token = envOf(coord.c, leaderPod).SHOAL_TOKEN!
      const deadline = Date.now() + timeoutMs
      let last = ''
      for (;;) {
        try {
          const res = await fetch(
            `http://127.0.0.1:${portsOf(leaderPod).get(PORTS.coordinator.http)}/status`,
            {
              headers: { authorization: `Bearer ${token}` },
              signal: AbortSignal.timeout(1000),
            },
          )
          const st = (await res.json()) as {
            coordinator: { partitions: number }
            members: { id: string; state: string; readyPartitions: number }[]
            assignment: { owners: (string | null)[] }
          }
          const alive = st.members.filter((m) => m.state === 'alive')
          if (
            alive.length === 1 &&
            st.assignment.owners.every((o) => o === alive[0]!.id) &&
            alive[0]!.readyPartitions === st.coordinator.partitions
          )
            return
          last = JSON.stringify(st.members.map((m) => [m.id, m.state, m.readyPartitions]))
        } catch (err) {
          last = (err as Error).message
        }
        if (Date.now() > deadline)
          throw new Error(
            `${leaderPod} does not serve the worker after ${timeoutMs} ms: ${last}\n${workerNode?.output().slice(-6000)}`,
          )
        await new Promise((r) => setTimeout(r, 100))
      }
    }
    /** A standby: started and alive, never ready, its transport port closed. */
    async function expectStandby(pod: string): Promise<void> {
      for (const k of ['startupProbe', 'livenessProbe'] as const) await probePasses(coord.c, pod, k)
      expect(await runProbe(coord.c, coord.c.readinessProbe!, portsOf(pod)), `${pod} readiness`).toBeDefined()
      const res = await fetch(`http://127.0.0.1:${portsOf(pod).get(PORTS.coordinator.http)}/readyz`)
      expect(res.status).toBe(503)
      expect(await res.json()).toMatchObject({ role: 'standby', leader: { id: leader } })
      const open = await new Promise<boolean>((resolve) => {
        const sock = connect(portsOf(pod).get(PORTS.coordinator.transport)!, '127.0.0.1', () => {
          sock.destroy()
          resolve(true)
        })
        sock.on('error', () => resolve(false))
      })
      expect(open, `${pod}: a standby's transport port is closed`).toBe(false)
    }

    beforeAll(async () => {
      expect(existsSync(MAIN_TS), 'src/cli/main.ts does not exist yet').toBe(true)
      dir = mkdtempSync(join(tmpdir(), `shoal-k8s-${variant}-`))
      endpoints.set('shoal-redis', new Map([[6379, await startRedis(dir)]]))
      // every coordinator pod under its stable name (the headless Service's per-pod records)
      for (const [i, pod] of pods.entries()) {
        const ports = new Map([
          [PORTS.coordinator.transport, await freePort()],
          [PORTS.coordinator.http, await freePort()],
        ])
        endpoints.set(pod, ports)
        endpoints.set(replicas.names[i]!, ports)
      }
      endpoints.set(
        workerPod,
        new Map([
          [PORTS.worker.transport, await freePort()],
          [PORTS.worker.http, await freePort()],
        ]),
      )
      // podManagementPolicy: Parallel: every replica at once
      for (const pod of pods) nodes.set(pod, startPod(coord.c, pod))
    }, 30_000)
    afterAll(async () => {
      await stopAll()
      if (dir) rmSync(dir, { recursive: true, force: true })
    })

    it('coordinator replicas: startup and liveness pass on each; readiness on exactly one, the leader', async () => {
      expect(pods.length).toBe(2)
      for (const pod of pods)
        for (const k of ['startupProbe', 'livenessProbe'] as const) await probePasses(coord.c, pod, k)
      leader = await waitForLeader(pods)
      // stays that way; once up, a single readiness attempt succeeds within timeoutSeconds
      for (let i = 0; i < 10; i++) {
        expect(await waitForLeader(pods, 1000)).toBe(leader)
        await new Promise((r) => setTimeout(r, 100))
      }
      await probePasses(coord.c, leader, 'readinessProbe')
      for (const pod of pods.filter((p) => p !== leader)) await expectStandby(pod)
    }, 60_000)

    it('worker: joins through SHOAL_COORDINATOR (every replica); startup, liveness and readiness pass', async () => {
      expect(envOf(wk.c, workerPod).SHOAL_COORDINATOR!.split(',')).toHaveLength(pods.length)
      workerNode = startPod(wk.c, workerPod)
      const probes = (['startupProbe', 'livenessProbe', 'readinessProbe'] as const).filter(
        (k) => wk.c[k] !== undefined,
      )
      expect(probes).toEqual(expect.arrayContaining(['livenessProbe', 'readinessProbe']))
      // Readiness may drop briefly after it first passes: a worker that just joined is ready
      // with no partitions, then restores the ones it is assigned (probePasses waits for a streak).
      for (const k of probes) await probePasses(wk.c, workerPod, k)
      await waitWorkerServed(leader)
    }, 60_000)

    it('deleting the leader pod: it exits 0 in its grace period, a standby turns ready, the worker follows, the new pod stands by', async () => {
      const old = nodes.get(leader)!
      const grace =
        ((coord.w.spec.template.spec.terminationGracePeriodSeconds as number | undefined) ?? 30) * 1000
      old.child.kill('SIGTERM')
      const exit = await Promise.race([
        old.exited,
        new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), grace).unref()),
      ])
      expect(exit, old.output()).toEqual({ code: 0, signal: null })
      const previous = leader
      leader = await waitForLeader(pods.filter((p) => p !== previous))
      await probePasses(coord.c, leader, 'readinessProbe')
      await waitWorkerServed(leader)
      await probePasses(wk.c, workerPod, 'readinessProbe')
      // the StatefulSet recreates the pod under the same name: it stands by
      nodes.set(previous, startPod(coord.c, previous))
      await expectStandby(previous)
      expect(await waitForLeader(pods, 1000)).toBe(leader)
    }, 90_000)
  })
}
