import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { camelCase, kebabCase, parseArgs } from '../../src/cli/args'
import { FILE_FLAG_OPTIONS, resolveServiceOptions, SECRET_OPTIONS } from '../../src/cli/service-options'
import { envName, type OptionSpec } from '../../src/common/config'
import { brokerOptionsSchema } from '../../src/broker/broker'
import { delayOptionsSchema } from '../../src/delay/options'
import { metaserverOptionsSchema } from '../../src/metaserver/options'

/**
 * Consistency checks of deploy/ (Dockerfile, compose.yaml, k8s/) and docs/deploy.md against the CLI.
 * Every checker returns a list of problems (empty = consistent), so that tests can show that a bad
 * input is caught. A command line is checked by the CLI's own parser and option resolution.
 */
type AnySchema = Readonly<Record<string, OptionSpec<unknown>>>
export type ServiceName = 'metaserver' | 'broker' | 'delay'

export const SERVICES: Readonly<Record<ServiceName, { schema: AnySchema; envPrefix: string }>> = {
  metaserver: { schema: metaserverOptionsSchema as unknown as AnySchema, envPrefix: 'QMQ_METASERVER_' },
  broker: { schema: brokerOptionsSchema as unknown as AnySchema, envPrefix: 'QMQ_BROKER_' },
  delay: { schema: delayOptionsSchema as unknown as AnySchema, envPrefix: 'QMQ_DELAY_' },
}
/** QMQ_* variables read by every service outside its options schema (logger, CRC32C switch, secrets). */
const GENERAL_ENV = new Set([
  'QMQ_LOG_LEVEL',
  'QMQ_CRC32C',
  ...Object.values(SECRET_OPTIONS).map((s) => s.env),
])
/** Flags of every service outside its schema: the files secrets are read from. */
const SECRET_FILE_FLAGS = new Set([
  ...Object.values(SECRET_OPTIONS).map((s) => s.fileFlag),
  ...Object.values(FILE_FLAG_OPTIONS),
])
/** What the checker puts for a value it cannot know (from the shell, a Secret): a plausible secret. */
export const UNKNOWN_VALUE = 'value-known-at-deploy-time'
/** What a fieldRef status.podIP stands for in the checks. */
export const SAMPLE_POD_IP = '10.244.0.17'

function isServiceName(name: unknown): name is ServiceName {
  return typeof name === 'string' && Object.hasOwn(SERVICES, name)
}

// ---------------------------------------------------------------------------------------------
// One invocation: `qmq <service> [flags]` with an environment.

export interface Invocation {
  /** [service, ...flags]: what follows `node bin/qmq.js`. */
  argv: readonly string[]
  /** The environment the service sees, values expanded. */
  env: Readonly<Record<string, string>>
}

export interface CheckedInvocation {
  service: ServiceName | undefined
  /** Options resolved as the CLI would (flags > env > defaults); undefined when there are problems. */
  options: Readonly<Record<string, unknown>> | undefined
  problems: string[]
}

export function checkInvocation(inv: Invocation): CheckedInvocation {
  const [name, ...rest] = inv.argv
  if (!isServiceName(name)) {
    return {
      service: undefined,
      options: undefined,
      problems: [`unknown subcommand ${JSON.stringify(name)} (expected metaserver, broker or delay)`],
    }
  }
  const { schema, envPrefix } = SERVICES[name]
  const problems: string[] = []
  const seen = new Set<string>()
  for (const token of rest) {
    if (!token.startsWith('--')) continue
    const flag = token.slice(2).split('=')[0] as string
    const key = camelCase(flag)
    if (flag !== kebabCase(key)) problems.push(`--${flag}: flags are kebab-case (--${kebabCase(key)})`)
    if (seen.has(key)) problems.push(`--${flag} is given twice`)
    seen.add(key)
  }
  let flags: Record<string, string | boolean | string[]> = {}
  try {
    const parsed = parseArgs(rest)
    flags = parsed.flags
    if (parsed.positionals.length > 0) problems.push(`unexpected arguments: ${parsed.positionals.join(' ')}`)
  } catch (err) {
    problems.push(`qmq ${name}: ${(err as Error).message}`)
  }
  for (const key of Object.keys(flags)) {
    if (key !== 'config' && !SECRET_FILE_FLAGS.has(key) && !Object.hasOwn(schema, key))
      problems.push(`--${kebabCase(key)} is not an option of qmq ${name}`)
  }
  if (flags.config !== undefined) problems.push('--config: deploy files pass options as flags or env')
  for (const variable of Object.keys(inv.env)) {
    if (!variable.startsWith('QMQ_') || GENERAL_ENV.has(variable)) continue
    const owner = (Object.keys(SERVICES) as ServiceName[]).find((s) =>
      variable.startsWith(SERVICES[s].envPrefix),
    )
    if (owner === undefined) problems.push(`${variable} is read by no qmq service`)
    else if (owner !== name) problems.push(`${variable} is read by qmq ${owner}, not by qmq ${name}`)
    else if (!Object.keys(schema).some((k) => envName(envPrefix, k) === variable))
      problems.push(`${variable} is not an option of qmq ${name}`)
  }
  if (problems.length > 0) return { service: name, options: undefined, problems }
  try {
    const options = resolveServiceOptions(name, schema, flags, envPrefix, { ...inv.env })
    // Every service of a deployment has a metaserver (or is one): each needs the cluster secret.
    if (options.clusterSecret === undefined)
      return {
        service: name,
        options: undefined,
        problems: [
          'no cluster secret (QMQ_CLUSTER_SECRET or --cluster-secret-file): heartbeats would be refused',
        ],
      }
    return { service: name, options, problems }
  } catch (err) {
    return { service: name, options: undefined, problems: [(err as Error).message] }
  }
}

/** Ports a service listens on, from its resolved options. */
export function listeningPorts(service: ServiceName, o: Readonly<Record<string, unknown>>): number[] {
  const port = o.port as number
  const httpPort = o.httpPort as number | undefined
  return service === 'metaserver' || httpPort === undefined || httpPort < 0 ? [port] : [port, httpPort]
}

/** The port of GET /health, or undefined when the service has no HTTP server. */
export function healthPort(service: ServiceName, o: Readonly<Record<string, unknown>>): number | undefined {
  if (service === 'metaserver') return o.port as number
  const p = o.httpPort as number
  return p > 0 ? p : undefined
}

function bindProblems(service: ServiceName, o: Readonly<Record<string, unknown>>): string[] {
  const out: string[] = []
  if (o.host !== '0.0.0.0') out.push(`--host is ${JSON.stringify(o.host)}: a container must bind 0.0.0.0`)
  if (service === 'broker' && (o.httpPort as number) >= 0 && o.httpHost !== '0.0.0.0')
    out.push(`--http-host is ${JSON.stringify(o.httpHost)}: a container must bind 0.0.0.0`)
  if (healthPort(service, o) === undefined) out.push('no HTTP port: /health cannot be probed (--http-port)')
  return out
}

/** host:port addresses a service tells others to use (advertised), as [host, port, url path]. */
function advertised(service: ServiceName, o: Readonly<Record<string, unknown>>): [string, number][] | string {
  if (service === 'broker') {
    if (typeof o.advertisedHost !== 'string') return 'no --advertised-host: it would advertise 127.0.0.1'
    return [[o.advertisedHost, o.port as number]]
  }
  if (service === 'delay') {
    if (typeof o.advertisedAddress !== 'string') return 'no --advertised-address: it would advertise 0.0.0.0'
    const m = /^(.+):(\d+)$/.exec(o.advertisedAddress)
    if (m === null) return `--advertised-address ${o.advertisedAddress} is not host:port`
    return [[m[1] as string, Number(m[2])]]
  }
  const listed = o.advertisedAddresses as readonly string[]
  // On a shared store, each metaserver registers its --advertised-url and /meta/address lists them.
  const urls = listed.length > 0 ? listed : typeof o.advertisedUrl === 'string' ? [o.advertisedUrl] : []
  if (urls.length === 0)
    return 'no --advertised-addresses or --advertised-url: it would answer http://0.0.0.0:port'
  return urls.map((u) => {
    const url = new URL(u)
    return [url.hostname, Number(url.port || 80)]
  })
}

// ---------------------------------------------------------------------------------------------
// Small accessors for parsed YAML (unknown).

type Obj = Record<string, unknown>
export function obj(x: unknown): Obj {
  return x !== null && typeof x === 'object' && !Array.isArray(x) ? (x as Obj) : {}
}
export function arr(x: unknown): unknown[] {
  return Array.isArray(x) ? x : []
}
function str(x: unknown): string | undefined {
  return typeof x === 'string' ? x : typeof x === 'number' ? String(x) : undefined
}

function healthUrl(text: string): URL | undefined {
  const m = /https?:\/\/[^\s'"`)]+/.exec(text)
  return m === null ? undefined : new URL(m[0])
}

// ---------------------------------------------------------------------------------------------
// compose.yaml

export interface Placed {
  where: string
  service: ServiceName
  options: Readonly<Record<string, unknown>>
}

/** A compose value made of `${VAR...}` interpolations only is known when compose runs. */
function fromShell(value: string): string {
  return /^(\$\{[^}]*\})+$/.test(value) ? UNKNOWN_VALUE : value
}

export function checkCompose(doc: unknown): { problems: string[]; placed: Placed[] } {
  const problems: string[] = []
  const services = obj(obj(doc).services)
  const declaredVolumes = new Set(Object.keys(obj(obj(doc).volumes)))
  const placed = new Map<string, Placed>()
  const hostPorts = new Map<string, string>()
  const usedVolumes = new Map<string, string>()
  for (const [name, raw] of Object.entries(services)) {
    const s = obj(raw)
    const say = (p: string) => problems.push(`compose ${name}: ${p}`)
    // Other images (a PostgreSQL for the metaservers' store) are not qmq services.
    if (s.image !== undefined && !String(s.image).startsWith('qmq')) continue
    const command = typeof s.command === 'string' ? s.command.split(/\s+/) : arr(s.command).map(String)
    const env: Record<string, string> = {}
    if (Array.isArray(s.environment)) {
      for (const item of s.environment.map(String)) {
        const eq = item.indexOf('=')
        // `NAME` alone passes the variable through from the shell when set: check its name.
        env[eq < 0 ? item : item.slice(0, eq)] = eq < 0 ? UNKNOWN_VALUE : fromShell(item.slice(eq + 1))
      }
    } else {
      for (const [k, v] of Object.entries(obj(s.environment))) {
        const value = str(v)
        env[k] = value === undefined ? UNKNOWN_VALUE : fromShell(value)
      }
    }
    const checked = checkInvocation({ argv: command, env })
    for (const p of checked.problems) say(p)
    if (checked.service === undefined || checked.options === undefined) continue
    const { service, options: o } = checked
    placed.set(name, { where: `compose ${name}`, service, options: o })
    for (const p of bindProblems(service, o)) say(p)

    const published = new Set<number>()
    for (const entry of arr(s.ports)) {
      const parts = String(entry)
        .replace(/\/tcp$/, '')
        .split(':')
      const container = Number(parts.at(-1))
      published.add(container)
      const host = parts.length > 1 ? parts.slice(0, -1).join(':') : String(container)
      const other = hostPorts.get(host)
      if (other !== undefined) say(`host port ${host} is also published by ${other}`)
      hostPorts.set(host, name)
    }
    const listening = listeningPorts(service, o)
    for (const p of published)
      if (!listening.includes(p)) say(`publishes container port ${p}, which it does not listen on`)
    for (const p of listening) if (!published.has(p)) say(`listens on ${p} but does not publish it`)

    const hc = obj(s.healthcheck)
    const test = Array.isArray(hc.test) ? hc.test.map(String).join(' ') : (str(hc.test) ?? '')
    const url = healthUrl(test)
    if (url === undefined) say('no healthcheck fetching an http:// URL')
    else {
      if (url.pathname !== '/health') say(`healthcheck fetches ${url.pathname}, not /health`)
      if (Number(url.port) !== healthPort(service, o))
        say(`healthcheck fetches port ${url.port}; the HTTP port is ${healthPort(service, o)}`)
      if (!['127.0.0.1', 'localhost'].includes(url.hostname))
        say(`healthcheck fetches ${url.hostname}, not the container itself`)
    }

    const dataDir = o.dataDir as string
    let dataVolume: string | undefined
    // A metaserver on a shared store (PostgreSQL) keeps nothing in its data dir.
    const needsVolume = !(service === 'metaserver' && o.store !== undefined)
    for (const v of arr(s.volumes)) {
      const [source, target] = typeof v === 'string' ? v.split(':') : [str(obj(v).source), str(obj(v).target)]
      if (target === undefined || source === undefined) continue
      if (dataDir === target || dataDir.startsWith(`${target}/`)) dataVolume = source
    }
    if (dataVolume === undefined) {
      if (needsVolume) say(`no volume mounted at its data dir ${dataDir}`)
    } else if (!declaredVolumes.has(dataVolume)) say(`volume ${dataVolume} is not a declared named volume`)
    else {
      const other = usedVolumes.get(dataVolume)
      if (other !== undefined) say(`shares volume ${dataVolume} with ${other}`)
      usedVolumes.set(dataVolume, name)
    }

    for (const [dep, cond] of Object.entries(obj(s.depends_on))) {
      if (!Object.hasOwn(services, dep)) say(`depends on unknown service ${dep}`)
      else if (obj(cond).condition === 'service_healthy' && obj(services[dep]).healthcheck === undefined)
        say(`waits for ${dep} to be healthy, but ${dep} has no healthcheck`)
    }
  }

  const groups = new Map<string, string>()
  for (const [name, p] of placed) {
    const say = (m: string) => problems.push(`compose ${name}: ${m}`)
    if (p.service !== 'metaserver') {
      // A group is one master and its slaves (docs/replication.md): two of one role is a mistake.
      const key = `${p.service} ${String(p.options.group)} ${String(p.options.role ?? 'master')}`
      if (groups.has(key)) say(`${key} is also the group and role of ${groups.get(key)}`)
      groups.set(key, name)
      const meta = p.options.metaserver
      if (typeof meta !== 'string') say('no --metaserver: it would run standalone')
      else {
        // Several comma-separated URLs: each must be a metaserver of this file; the service waits
        // for the first one to be healthy (any one is enough to start).
        for (const [i, one] of meta.split(',').entries()) {
          const url = new URL(one.trim())
          const target = placed.get(url.hostname)
          if (target?.service !== 'metaserver') say(`--metaserver ${one} is not a metaserver of this file`)
          else if (Number(url.port || 80) !== target.options.port)
            say(`--metaserver ${one}: the metaserver listens on ${String(target.options.port)}`)
          if (
            i === 0 &&
            obj(obj(obj(services[name]).depends_on)[url.hostname]).condition !== 'service_healthy'
          )
            say(`does not wait for ${url.hostname} to be healthy`)
        }
      }
    }
    const adv = advertised(p.service, p.options)
    if (typeof adv === 'string') say(adv)
    else
      for (const [host, port] of adv) {
        if (host !== name) say(`advertises ${host}, not its service name ${name}`)
        if (port !== p.options.port) say(`advertises port ${port}, but listens on ${String(p.options.port)}`)
      }
  }
  return { problems, placed: [...placed.values()] }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests

const SAMPLE_NAMESPACE = 'default'

interface Workload {
  kind: string
  name: string
  doc: Obj
  pod: string
}

function labelsMatch(selector: Obj, labels: Obj): boolean {
  const entries = Object.entries(selector)
  return entries.length > 0 && entries.every(([k, v]) => labels[k] === v)
}

export function checkKubernetes(docs: readonly unknown[]): { problems: string[]; placed: Placed[] } {
  const problems: string[] = []
  const all = docs.map(obj)
  const named = (kind: string) => all.filter((d) => d.kind === kind)
  const byName = (kind: string, name: unknown) => named(kind).find((d) => obj(d.metadata).name === name)
  const workloads: Workload[] = [...named('Deployment'), ...named('StatefulSet')].map((doc) => {
    const name = String(obj(doc.metadata).name)
    return {
      kind: String(doc.kind),
      name,
      doc,
      pod: doc.kind === 'StatefulSet' ? `${name}-0` : `${name}-5d9f8`,
    }
  })
  const podLabels = (w: Workload) => obj(obj(obj(obj(w.doc.spec).template).metadata).labels)
  const containersOf = (w: Workload) => arr(obj(obj(obj(w.doc.spec).template).spec).containers).map(obj)
  const containerPort = (c: Obj, ref: unknown): number | undefined => {
    if (typeof ref === 'number')
      return arr(c.ports).some((p) => obj(p).containerPort === ref) ? ref : undefined
    const p = arr(c.ports)
      .map(obj)
      .find((p) => p.name === ref)
    return typeof p?.containerPort === 'number' ? p.containerPort : undefined
  }
  const placed: (Placed & { workload: Workload; container: Obj })[] = []

  for (const w of workloads) {
    const where = `${w.kind} ${w.name}`
    const say = (p: string) => problems.push(`${where}: ${p}`)
    const spec = obj(w.doc.spec)
    if (!labelsMatch(obj(obj(spec.selector).matchLabels), podLabels(w)))
      say("selector.matchLabels do not match the pod template's labels")
    const podSpec = obj(obj(spec.template).spec)
    for (const c of containersOf(w)) {
      if (c.command !== undefined) say('sets command: the image ENTRYPOINT (node bin/qmq.js) must run')
      const env: Record<string, string> = {}
      const expand = (v: string, what: string) =>
        v.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, ref: string) => {
          if (env[ref] === undefined) say(`${what} refers to $(${ref}), not defined before it`)
          return env[ref] ?? m
        })
      for (const e of arr(c.env).map(obj)) {
        const name = String(e.name)
        const from = obj(e.valueFrom)
        if (e.value !== undefined) env[name] = expand(String(e.value), name)
        else if (from.fieldRef !== undefined) {
          const path = obj(from.fieldRef).fieldPath
          if (path === 'metadata.name') env[name] = w.pod
          else if (path === POD_INDEX_FIELD) env[name] = '0'
          else if (path === 'metadata.namespace') env[name] = SAMPLE_NAMESPACE
          else if (path === 'status.podIP') env[name] = SAMPLE_POD_IP
          else say(`${name}: unexpected fieldRef ${String(path)}`)
        } else if (from.configMapKeyRef !== undefined) {
          const ref = obj(from.configMapKeyRef)
          const value = str(obj(byName('ConfigMap', ref.name)?.data)[String(ref.key)])
          if (value === undefined) say(`${name}: ConfigMap ${String(ref.name)} has no key ${String(ref.key)}`)
          else env[name] = value
        } else if (from.secretKeyRef !== undefined) env[name] = UNKNOWN_VALUE
        else say(`${name}: no value`)
      }
      const argv = arr(c.args).map((a) => expand(String(a), 'args'))
      const checked = checkInvocation({ argv, env })
      for (const p of checked.problems) say(p)
      if (checked.service === undefined || checked.options === undefined) continue
      const { service, options: o } = checked
      placed.push({ where, service, options: o, workload: w, container: c })
      for (const p of bindProblems(service, o)) say(p)

      const declared = arr(c.ports).map((p) => obj(p).containerPort)
      const listening = listeningPorts(service, o)
      for (const p of declared)
        if (!listening.includes(p as number)) say(`declares containerPort ${String(p)}, not listened on`)
      for (const p of listening)
        if (!declared.includes(p)) say(`listens on ${p} but declares no containerPort`)

      for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
        if (c[probe] === undefined) {
          if (probe !== 'startupProbe') say(`no ${probe}`)
          continue
        }
        const get = obj(obj(c[probe]).httpGet)
        if (get.path !== '/health') say(`${probe} gets ${String(get.path)}, not /health`)
        const port = containerPort(c, get.port)
        if (port !== healthPort(service, o))
          say(`${probe} port ${String(get.port)} is not the HTTP port ${healthPort(service, o)}`)
      }
      const requests = obj(obj(c.resources).requests)
      if (requests.cpu === undefined || requests.memory === undefined) say('no cpu and memory requests')

      const dataDir = o.dataDir as string
      const mount = arr(c.volumeMounts)
        .map(obj)
        .find((m) => m.mountPath === dataDir || dataDir.startsWith(`${String(m.mountPath)}/`))
      if (service === 'metaserver' && o.store !== undefined) {
        // A shared store (PostgreSQL): no volume, several replicas, rolling updates.
        if (mount !== undefined) say('a metaserver on a shared store keeps nothing on a volume')
        if (typeof spec.replicas !== 'number' || spec.replicas < 2)
          say('a metaserver on a shared store runs 2 or more replicas')
        if (obj(spec.strategy).type === 'Recreate') say('a metaserver on a shared store rolls, not Recreate')
        if (o.advertisedUrl === undefined && arr(o.advertisedAddresses).length === 0)
          say('each replica must register a URL others reach (advertisedUrl from the pod IP)')
      } else if (mount === undefined) say(`nothing is mounted at its data dir ${dataDir}`)
      else if (w.kind === 'StatefulSet') {
        const templates = arr(spec.volumeClaimTemplates).map((t) => obj(obj(t).metadata).name)
        if (!templates.includes(mount.name)) say(`${dataDir} is not a volumeClaimTemplate's volume`)
      } else {
        const volume = arr(podSpec.volumes)
          .map(obj)
          .find((v) => v.name === mount.name)
        const claim = obj(volume?.persistentVolumeClaim).claimName
        if (byName('PersistentVolumeClaim', claim) === undefined)
          say(`${dataDir} is not on a PersistentVolumeClaim of these manifests`)
        if (spec.replicas !== 1 || obj(spec.strategy).type !== 'Recreate')
          say('one volume, one pod: replicas 1 with strategy Recreate')
      }
      if (service !== 'metaserver') {
        if (w.kind !== 'StatefulSet') say(`a ${service} group must be a StatefulSet`)
        const groupVar = envName(SERVICES[service].envPrefix, 'group')
        const ref = arr(c.env)
          .map(obj)
          .find((e) => e.name === groupVar)
        // One group per pod ordinal: the pod name, or a fixed prefix and the pod-index label (the pod
        // N of a master StatefulSet and of its slave StatefulSet are one group).
        const indexVars = arr(c.env)
          .map(obj)
          .filter((e) => obj(obj(e.valueFrom).fieldRef).fieldPath === POD_INDEX_FIELD)
          .map((e) => String(e.name))
        const byIndex = indexVars.some((v) =>
          new RegExp(`^[a-z0-9-]+\\$\\(${v}\\)$`).test(String(ref?.value)),
        )
        if (obj(obj(ref?.valueFrom).fieldRef).fieldPath !== 'metadata.name' && !byIndex)
          say(
            `${groupVar} must come from the pod name (fieldRef metadata.name) or be <prefix>$(VAR) of the pod-index label`,
          )
      }
    }
  }

  // Resolves a DNS name of these manifests (service, or pod of a headless service) and a port to
  // the workload and container port it reaches.
  const reach = (host: string, port: number): { w: Workload; port: number } | undefined => {
    const parts = host.split('.')
    const suffixOk = (rest: string[]) =>
      [[], [SAMPLE_NAMESPACE], [SAMPLE_NAMESPACE, 'svc'], [SAMPLE_NAMESPACE, 'svc', 'cluster', 'local']].some(
        (s) => s.join('.') === rest.join('.'),
      )
    for (const svc of named('Service')) {
      const name = obj(svc.metadata).name
      const sspec = obj(svc.spec)
      let target: Workload[]
      if (parts[0] === name && suffixOk(parts.slice(1)))
        target = workloads.filter((w) => labelsMatch(obj(sspec.selector), podLabels(w)))
      else if (parts[1] === name && suffixOk(parts.slice(2)) && sspec.clusterIP === 'None')
        target = workloads.filter((w) => w.pod === parts[0] && obj(w.doc.spec).serviceName === name)
      else continue
      const sp = arr(sspec.ports)
        .map(obj)
        .find((p) => p.port === port)
      const w = target[0]
      if (sp === undefined || w === undefined) return undefined
      const c = containersOf(w)[0] ?? {}
      const cp = containerPort(c, sp.targetPort ?? sp.port)
      return cp === undefined ? undefined : { w, port: cp }
    }
    return undefined
  }

  for (const p of placed) {
    const say = (m: string) => problems.push(`${p.where}: ${m}`)
    const adv = advertised(p.service, p.options)
    if (typeof adv === 'string') say(adv)
    else
      for (const [host, port] of adv) {
        if (host === SAMPLE_POD_IP) {
          // The pod's own address (fieldRef status.podIP) reaches it: only the port can be wrong.
          if (port !== p.options.port)
            say(`advertises its pod IP with port ${port}, not its port ${String(p.options.port)}`)
          continue
        }
        const r = reach(host, port)
        if (r?.w !== p.workload || r.port !== p.options.port)
          say(`advertises ${host}:${port}, which does not reach its port ${String(p.options.port)}`)
        if (p.workload.kind === 'StatefulSet' && !host.startsWith(`${p.workload.pod}.`))
          say(`advertises ${host}, not its own pod's stable name`)
      }
    if (p.service !== 'metaserver') {
      const meta = p.options.metaserver
      if (typeof meta !== 'string') say('no metaserver URL: it would run standalone')
      else {
        // Several comma-separated URLs: each must reach a metaserver.
        for (const one of meta.split(',').map((u) => u.trim())) {
          const url = new URL(one)
          const r = reach(url.hostname, Number(url.port || 80))
          const target = placed.find((q) => q.workload === r?.w)
          if (target?.service !== 'metaserver' || r?.port !== target.options.port)
            say(`metaserver URL ${one} does not reach a metaserver`)
        }
      }
    }
  }
  for (const svc of named('Service')) {
    const name = String(obj(svc.metadata).name)
    const selected = workloads.filter((w) => labelsMatch(obj(obj(svc.spec).selector), podLabels(w)))
    if (selected.length === 0) problems.push(`Service ${name}: selects no workload`)
    for (const sp of arr(obj(svc.spec).ports).map(obj))
      for (const w of selected)
        if (containerPort(containersOf(w)[0] ?? {}, sp.targetPort ?? sp.port) === undefined)
          problems.push(`Service ${name}: port ${String(sp.port)} targets no container port of ${w.name}`)
  }
  problems.push(...checkPairs(placed, podLabels))
  for (const w of workloads.filter((w) => w.kind === 'StatefulSet')) {
    const svc = byName('Service', obj(w.doc.spec).serviceName)
    if (obj(svc?.spec).clusterIP !== 'None')
      problems.push(`StatefulSet ${w.name}: serviceName must be a headless Service of these manifests`)
  }
  return { problems, placed }
}

/** The label a StatefulSet puts on each pod: its ordinal (Kubernetes >= 1.28). */
const POD_INDEX_FIELD = "metadata.labels['apps.kubernetes.io/pod-index']"

/** True when pods of `a` may never run on a node with pods of `b` (required anti-affinity, either side). */
function keptApart(a: Workload, b: Workload, podLabels: (w: Workload) => Obj): boolean {
  const repels = (x: Workload, y: Workload) =>
    arr(
      obj(obj(obj(obj(obj(x.doc.spec).template).spec).affinity).podAntiAffinity)
        .requiredDuringSchedulingIgnoredDuringExecution,
    )
      .map(obj)
      .some(
        (term) =>
          term.topologyKey === 'kubernetes.io/hostname' &&
          labelsMatch(obj(obj(term.labelSelector).matchLabels), podLabels(y)),
      )
  return repels(a, b) || repels(b, a)
}

/**
 * Every broker group and every delay group is a master and a slave (issue 14) whose pods never share
 * a node: the slave in another workload started with --role slave under the same group name (of the
 * same kind), kept apart by anti-affinity.
 */
function checkPairs(
  placed: readonly (Placed & { workload: Workload })[],
  podLabels: (w: Workload) => Obj,
): string[] {
  const problems: string[] = []
  for (const kind of ['broker', 'delay'] as const) {
    const servers = placed.filter((p) => p.service === kind)
    for (const m of servers.filter((p) => (p.options.role ?? 'master') === 'master')) {
      const slaves = servers.filter((p) => p.options.role === 'slave' && p.options.group === m.options.group)
      const group = String(m.options.group)
      if (slaves.length === 0) problems.push(`${m.where}: ${kind} group ${group} has no slave (--role slave)`)
      for (const sl of slaves) {
        if (sl.workload === m.workload)
          problems.push(`${m.where}: the slave of ${kind} group ${group} is in the master's workload`)
        else if (!keptApart(m.workload, sl.workload, podLabels))
          problems.push(
            `${m.where}: the master and slave of ${kind} group ${group} may share a node (no required podAntiAffinity on kubernetes.io/hostname)`,
          )
      }
    }
  }
  return problems
}

/** kustomization.yaml must list exactly the other YAML files of its directory. */
export function checkKustomization(doc: unknown, files: readonly string[]): string[] {
  const listed = arr(obj(doc).resources).map(String)
  const expected = files.filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml')
  return [
    ...expected.filter((f) => !listed.includes(f)).map((f) => `kustomization: ${f} is not listed`),
    ...listed.filter((f) => !expected.includes(f)).map((f) => `kustomization: ${f} does not exist`),
  ]
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

interface Instruction {
  op: string
  args: string
}

export function parseDockerfile(text: string): Instruction[][] {
  const stages: Instruction[][] = []
  const lines = text.replace(/\\\r?\n/g, ' ').split(/\r?\n/)
  for (const line of lines) {
    const trimmed = line.trim()
    if (trimmed === '' || trimmed.startsWith('#')) continue
    const m = /^(\S+)\s*(.*)$/.exec(trimmed) as RegExpExecArray
    const ins = { op: (m[1] as string).toUpperCase(), args: (m[2] as string).replace(/\s+/g, ' ') }
    if (ins.op === 'FROM') stages.push([])
    stages.at(-1)?.push(ins)
  }
  return stages
}

function words(args: string): string[] {
  return args.startsWith('[') ? (JSON.parse(args) as string[]) : args.split(' ')
}

export function checkDockerfile(
  text: string,
  opts: { root: string; dockerignore: string; ports: readonly number[] },
): string[] {
  const problems: string[] = []
  const stages = parseDockerfile(text)
  const build = stages[0] ?? []
  const runtime = stages.at(-1) ?? []
  if (stages.length < 2) problems.push('Dockerfile: not multi-stage')
  const image = (s: Instruction[]) => s[0]?.args.split(' ')[0]
  if (image(runtime) !== 'node:20-slim') problems.push(`Dockerfile: runtime stage is ${image(runtime)}`)
  if (image(build) !== image(runtime))
    problems.push('Dockerfile: build and runtime stages differ in base: native modules may not load')
  const runs = build
    .filter((i) => i.op === 'RUN')
    .map((i) => i.args)
    .join(' && ')
  for (const needed of ['python3', 'make', 'g++', 'npm ci', 'npm run build', 'npm prune --omit=dev'])
    if (!runs.includes(needed)) problems.push(`Dockerfile: build stage does not run/install ${needed}`)
  const ignored = new Set(
    opts.dockerignore
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#')),
  )
  for (const needed of ['.git', 'node_modules', 'dist', 'data'])
    if (!ignored.has(needed)) problems.push(`.dockerignore: ${needed} is not excluded`)
  for (const copy of build.filter((i) => i.op === 'COPY' && !i.args.startsWith('--from'))) {
    for (const src of words(copy.args).slice(0, -1)) {
      if (!existsSync(join(opts.root, src))) problems.push(`Dockerfile: COPY ${src}: no such file`)
      if (ignored.has(src)) problems.push(`Dockerfile: COPY ${src}: excluded by .dockerignore`)
    }
  }
  const copied = runtime
    .filter((i) => i.op === 'COPY' && i.args.startsWith('--from=build'))
    .map((i) => words(i.args.replace(/^--from=build /, '').replace(/^--chown=\S+ /, ''))[0])
  for (const needed of ['/app/dist', '/app/bin', '/app/node_modules', '/app/package.json'])
    if (!copied.includes(needed)) problems.push(`Dockerfile: runtime stage does not copy ${needed}`)
  const last = (op: string) => runtime.filter((i) => i.op === op).at(-1)?.args
  if (last('WORKDIR') !== '/app')
    problems.push('Dockerfile: runtime WORKDIR is not /app (bin/qmq.js is there)')
  const entry = last('ENTRYPOINT')
  if (entry === undefined || JSON.stringify(words(entry)) !== JSON.stringify(['node', 'bin/qmq.js']))
    problems.push(`Dockerfile: ENTRYPOINT is ${entry}, not ["node", "bin/qmq.js"]`)
  const user = last('USER')
  if (user === undefined || user === 'root' || user === '0') problems.push('Dockerfile: runs as root')
  if (!runtime.some((i) => i.op === 'VOLUME' && words(i.args).includes('/data')))
    problems.push('Dockerfile: /data is not a VOLUME')
  const exposed = runtime.filter((i) => i.op === 'EXPOSE').flatMap((i) => i.args.split(' ').map(Number))
  for (const p of opts.ports) if (!exposed.includes(p)) problems.push(`Dockerfile: port ${p} is not EXPOSEd`)
  return problems
}

// ---------------------------------------------------------------------------------------------
// docs/deploy.md

/** Every QMQ_<SERVICE>_* name and every inline `--flag ...` of the page must exist. */
export function checkDocs(text: string): string[] {
  const problems: string[] = []
  const prose = text.replace(/^```[\s\S]*?^```/gm, '')
  const known = new Set(['config', 'help', ...SECRET_FILE_FLAGS])
  for (const s of Object.values(SERVICES)) for (const k of Object.keys(s.schema)) known.add(k)
  for (const m of prose.matchAll(/`--([a-z][a-z0-9-]*)/g)) {
    if (!known.has(camelCase(m[1] as string)))
      problems.push(`docs: --${m[1]} is not an option of any service`)
  }
  for (const m of text.matchAll(/QMQ_(METASERVER|BROKER|DELAY)_[A-Z0-9_]+/g)) {
    const service = (m[1] as string).toLowerCase() as ServiceName
    const { schema, envPrefix } = SERVICES[service]
    if (!Object.keys(schema).some((k) => envName(envPrefix, k) === m[0]))
      problems.push(`docs: ${m[0]} is not an option of qmq ${service}`)
  }
  return problems
}

export function readText(...path: string[]): string {
  return readFileSync(join(...path), 'utf8')
}
