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
 * 4. Live: the coordinator and worker containers of each variant, started as real processes
 *    (`node --import tsx src/cli/main.ts`) with the environment Kubernetes would give them (ports
 *    remapped to free loopback ports, Service names to 127.0.0.1, a real redis-server), probed the
 *    way the kubelet does: httpGet 200-399 within timeoutSeconds, gRPC Health/Check == SERVING.
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
    if (c.startupProbe) checks.push(['startupProbe', '/healthz', true])
    for (const [pk, path, grpc] of checks) {
      const m = probeOk(c[pk] as Probe | undefined, path, grpc)
      if (m) errs.push(`${where}: ${pk} ${m}`)
    }

    if (role === 'coordinator') {
      if (w.kind !== 'Deployment' || w.spec.replicas !== 1)
        errs.push(`${where}: run exactly 1 coordinator replica`)
      if (w.spec.strategy?.type !== 'Recreate') errs.push(`${where}: coordinator strategy must be Recreate`)
    } else {
      if (
        portOf(env.SHOAL_ADVERTISE) !== want.transport ||
        hostOf(env.SHOAL_ADVERTISE) !== pod['status.podIP']
      ) {
        errs.push(
          `${where}: SHOAL_ADVERTISE must be $(POD_IP):${want.transport} (got ${env.SHOAL_ADVERTISE})`,
        )
      }
      // SHOAL_COORDINATOR -> a Service selecting the coordinator, on a port that reaches its transport port
      const coord = byRole('coordinator')
      const svcName = hostOf(env.SHOAL_COORDINATOR).split('.')[0]!
      const svc = findObj(objs, 'Service', svcName)
      const sp = (svc?.spec?.ports as { port: number; targetPort?: number | string }[] | undefined)?.find(
        (p) => p.port === portOf(env.SHOAL_COORDINATOR),
      )
      if (!svc || !coord || !matches(svc.spec.selector, coord.w.spec.template.metadata.labels)) {
        errs.push(`${where}: SHOAL_COORDINATOR ${env.SHOAL_COORDINATOR} is not a Service of the coordinator`)
      } else if (!sp || resolvePort(coord.c, sp.targetPort ?? sp.port) !== PORTS.coordinator.transport) {
        errs.push(`${where}: SHOAL_COORDINATOR port does not reach the coordinator's transport port`)
      }
      const headless = objs.find(
        (o) =>
          o.kind === 'Service' &&
          o.spec?.clusterIP === 'None' &&
          matches(o.spec.selector, w.spec.template.metadata.labels),
      )
      if (!headless) errs.push(`${where}: no headless Service selects the workers`)
    }
  }

  // PDB and HPA: the worker Deployment, nothing else
  const worker = byRole('worker')?.w
  const pdbs = objs.filter((o) => o.kind === 'PodDisruptionBudget')
  const hpas = objs.filter((o) => o.kind === 'HorizontalPodAutoscaler')
  if (worker && !pdbs.some((p) => podsFor(p.spec?.selector?.matchLabels).includes(worker))) {
    errs.push('no PodDisruptionBudget covers the workers')
  }
  for (const o of pdbs) {
    if (o.apiVersion !== 'policy/v1') err(o, 'use policy/v1')
    if ((o.spec?.minAvailable === undefined) === (o.spec?.maxUnavailable === undefined)) {
      err(o, 'set exactly one of minAvailable and maxUnavailable')
    }
    const pods = podsFor(o.spec?.selector?.matchLabels)
    if (pods.length !== 1 || pods[0] !== worker)
      err(o, `must select the worker Deployment only (selects ${pods.map(id).join(', ') || 'nothing'})`)
    for (const w of pods) {
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
  exited: Promise<unknown>
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
  const p = { child, output: () => out, exited: once(child, 'exit') }
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

/** Container addresses -> loopback: HOST:PORT values, and the Redis URL. */
function remapEnv(env: Record<string, string>, ports: Map<number, number>, hosts: Record<string, string>) {
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(env)) {
    if (
      ['SHOAL_LISTEN', 'SHOAL_HTTP', 'SHOAL_COORDINATOR', 'SHOAL_ADVERTISE'].includes(k) &&
      v.includes(':')
    ) {
      const host = hostOf(v)
      out[k] = `${hosts[host] ?? host}:${ports.get(portOf(v)) ?? portOf(v)}`
    } else if (k === 'SHOAL_STATE' && /^rediss?:/.test(v)) {
      const u = new URL(v)
      u.hostname = hosts[u.hostname] ?? u.hostname
      u.port = String(ports.get(Number(u.port || 6379)) ?? u.port)
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
        'Deployment/shoal-coordinator',
        'Deployment/shoal-worker',
        'HorizontalPodAutoscaler/shoal-worker',
        'Namespace/shoal',
        'PodDisruptionBudget/shoal-worker',
        'Secret/shoal-secrets',
        'Service/shoal-coordinator',
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
    const coord = (objs: Obj[]): Container =>
      get(objs, 'Deployment', 'shoal-coordinator').spec.template.spec.containers[0]

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
      'Service/shoal-coordinator: targetPort metrics is not a container port of Deployment/shoal-coordinator',
    )
    expect(broken((o) => (worker(o).readinessProbe!.httpGet!.path = '/ready'))).toContain(
      'Deployment/shoal-worker worker: readinessProbe httpGet.path must be /readyz (got /ready)',
    )
    expect(broken((o) => (worker(o).livenessProbe!.httpGet!.port = 7410))).toContain(
      'Deployment/shoal-worker worker: livenessProbe httpGet.port must be the HTTP port 7411',
    )
    expect(broken((o) => (coord(o).readinessProbe = { grpc: { port: 'transport' } }), 'grpc')).toEqual(
      expect.arrayContaining([
        'Deployment/shoal-coordinator: coordinator.readinessProbe: grpc.port must be a number',
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
    expect(
      broken((o) => (get(o, 'Deployment', 'shoal-coordinator').spec.strategy = { type: 'RollingUpdate' })),
    ).toContain('Deployment/shoal-coordinator coordinator: coordinator strategy must be Recreate')
    expect(broken((o) => delete worker(o).resources!.limits)).toEqual(
      expect.arrayContaining(['Deployment/shoal-worker: worker: set resources.requests.cpu and limits.cpu']),
    )
    expect(
      broken(
        (o) => (get(o, 'Deployment', 'shoal-worker').spec.template.spec.securityContext.runAsNonRoot = false),
      ),
    ).toContain('Deployment/shoal-worker: pod securityContext.runAsNonRoot must be true')
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
    const ports = new Map<number, number>()
    const hosts: Record<string, string> = {
      '0.0.0.0': '127.0.0.1',
      'shoal-coordinator': '127.0.0.1',
      'shoal-redis': '127.0.0.1',
    }
    let dir = ''

    beforeAll(async () => {
      expect(existsSync(MAIN_TS), 'src/cli/main.ts does not exist yet').toBe(true)
      dir = mkdtempSync(join(tmpdir(), `shoal-k8s-${variant}-`))
      ports.set(6379, await startRedis(dir))
      for (const p of [7400, 7401, 7410, 7411]) ports.set(p, await freePort())
    }, 30_000)
    afterAll(async () => {
      await stopAll()
      if (dir) rmSync(dir, { recursive: true, force: true })
    })

    for (const role of ['coordinator', 'worker'] as const) {
      it(`${role}: startup, liveness and readiness probes succeed within their timeouts`, async () => {
        const { w, c } = shoalContainer(objs, role)
        const { env, errors } = resolveEnv(
          c,
          objs,
          fieldsFor(`${w.metadata.name}-5d8c7b9f4-x2x9z`, '127.0.0.1'),
        )
        expect(errors).toEqual([])
        const node = startProcess(process.execPath, devArgs(c), remapEnv(env, ports, hosts))
        const probes = (['startupProbe', 'livenessProbe', 'readinessProbe'] as const).filter(
          (k) => c[k] !== undefined,
        )
        expect(probes).toEqual(expect.arrayContaining(['livenessProbe', 'readinessProbe']))
        for (const k of probes) {
          // Readiness may drop briefly after it first passes: a worker that just joined is
          // ready with no partitions, then restores the ones it is assigned. Wait until it
          // has passed several times in a row.
          for (let streak = 0; streak < 5; streak++) {
            await waitForProbe(c, c[k]!, ports, node)
            if ((await runProbe(c, c[k]!, ports)) !== undefined) streak = -1
            await new Promise((r) => setTimeout(r, 100))
          }
          // once up, a single attempt succeeds within timeoutSeconds, as the kubelet requires
          expect(await runProbe(c, c[k]!, ports), `${role} ${k}`).toBeUndefined()
        }
      }, 60_000)
    }
  })
}
