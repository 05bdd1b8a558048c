import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { parse, parseAllDocuments } from 'yaml'
import {
  checkCompose,
  checkDocs,
  checkDockerfile,
  checkInvocation,
  checkKubernetes,
  checkKustomization,
  readText,
} from './deploy-check'

const ROOT = join(__dirname, '..', '..')
const K8S = join(ROOT, 'deploy', 'k8s')

function yamlDoc(text: string): unknown {
  const doc = parse(text, { merge: true }) as unknown
  return doc
}

function yamlDocs(text: string): unknown[] {
  return parseAllDocuments(text, { merge: true }).map((d) => {
    if (d.errors.length > 0) throw d.errors[0]
    return d.toJS() as unknown
  })
}

const k8sFiles = () => readdirSync(K8S).filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml')
const k8sText = () => k8sFiles().map((f) => readText(K8S, f))

/** Replaces one occurrence that must exist, so that a mutation test cannot silently test nothing. */
function mutate(text: string, from: string, to: string): string {
  if (!text.includes(from)) throw new Error(`mutation target not found: ${from}`)
  return text.replace(from, to)
}

function problemsMatching(problems: readonly string[], re: RegExp): string[] {
  return problems.filter((p) => re.test(p))
}

t.test('deploy - the checker resolves a good command line as the CLI would', async (t) => {
  const r = checkInvocation({
    argv: ['broker', '--host', '0.0.0.0', '--http-port=20892', '--data-dir', '/data'],
    env: {
      QMQ_BROKER_GROUP: 'qmq-broker-0',
      QMQ_LOG_LEVEL: 'info',
      QMQ_CLUSTER_SECRET: 'deploy-test-secret-0123',
      HOME: '/home/node',
    },
  })
  t.same(r.problems, [])
  t.equal(r.service, 'broker')
  t.match(r.options, {
    host: '0.0.0.0',
    port: 20881,
    httpPort: 20892,
    dataDir: '/data',
    group: 'qmq-broker-0',
    clusterSecret: 'deploy-test-secret-0123',
  })
})

t.test('deploy - the checker rejects bad command lines and environments', async (t) => {
  const cases: [string, string[], Record<string, string>, RegExp][] = [
    ['misspelled flag', ['broker', '--data-dri', '/data'], {}, /--data-dri is not an option of qmq broker/],
    [
      'flag of another service',
      ['delay', '--http-host', '0.0.0.0'],
      {},
      /--http-host is not an option of qmq delay/,
    ],
    ['unknown subcommand', ['brokers', '--port', '1'], {}, /unknown subcommand "brokers"/],
    ['camelCase flag', ['metaserver', '--dataDir', '/data'], {}, /flags are kebab-case \(--data-dir\)/],
    ['flag given twice', ['metaserver', '--port', '1', '--port', '2'], {}, /--port is given twice/],
    ['flag without value', ['metaserver', '--port'], {}, /--port needs a value/],
    ['bad value', ['broker', '--port', 'http'], {}, /--port \(QMQ_BROKER_PORT\): must be an integer/],
    ['stray argument', ['delay', 'now'], {}, /unexpected arguments: now/],
    ['misspelled env', ['broker'], { QMQ_BROKER_DATADIR: '/data' }, /QMQ_BROKER_DATADIR is not an option/],
    ['env of another service', ['broker'], { QMQ_DELAY_GROUP: 'd' }, /read by qmq delay, not by qmq broker/],
    ['env of no service', ['broker'], { QMQ_BROKR_GROUP: 'b' }, /QMQ_BROKR_GROUP is read by no qmq service/],
    [
      'bad env value',
      ['delay'],
      { QMQ_DELAY_FSYNC: 'maybe' },
      /--fsync \(QMQ_DELAY_FSYNC\): must be true or false/,
    ],
    [
      'no cluster secret',
      ['metaserver'],
      {},
      /no cluster secret \(QMQ_CLUSTER_SECRET or --cluster-secret-file\)/,
    ],
    [
      'secret on the command line',
      ['broker', '--cluster-secret', 'deploy-test-secret-0123'],
      {},
      /--cluster-secret is not accepted/,
    ],
    [
      'secret in a service variable',
      ['delay'],
      { QMQ_DELAY_CLUSTER_SECRET: 'deploy-test-secret-0123' },
      /no cluster secret/,
    ],
  ]
  for (const [name, argv, env, re] of cases) {
    const r = checkInvocation({ argv, env })
    t.equal(r.options, undefined, `${name}: not resolved`)
    t.equal(problemsMatching(r.problems, re).length, 1, `${name}: ${r.problems.join('; ')}`)
  }
})

t.test(
  'deploy - compose.yaml passes real flags and publishes, probes and persists what it sets',
  async (t) => {
    const { problems, placed } = checkCompose(yamlDoc(readText(ROOT, 'deploy', 'compose.yaml')))
    t.same(problems, [])
    t.same(
      placed.map((p) => `${p.service} ${String(p.options.group ?? '')}`),
      [
        'metaserver ',
        'broker broker-1',
        'broker broker-1',
        'broker broker-2',
        'delay delay-1',
        'delay delay-1',
      ],
    )
  },
)

t.test('deploy - compose.postgres.yaml: two metaservers on one PostgreSQL, groups find both', async (t) => {
  const { problems, placed } = checkCompose(yamlDoc(readText(ROOT, 'deploy', 'compose.postgres.yaml')))
  t.same(problems, [])
  t.same(
    placed.map((p) => `${p.service} ${String(p.options.group ?? '')}`),
    ['metaserver ', 'metaserver ', 'broker broker-1', 'broker broker-1', 'broker broker-2', 'delay delay-1'],
  )
  for (const p of placed.filter((x) => x.service === 'metaserver'))
    t.match(p.options.store, /^value-known-at-deploy-time$|^postgresql:/, `${p.where} on the shared store`)
})

t.test('deploy - the compose checker catches a broken compose file', async (t) => {
  const text = readText(ROOT, 'deploy', 'compose.yaml')
  const cases: [string, string, string, RegExp][] = [
    [
      'misspelled flag',
      '      - --advertised-host\n',
      '      - --advertized-host\n',
      /--advertized-host is not an option/,
    ],
    [
      'probe path',
      "20882/health'",
      "20882/healthz'",
      /broker-1: healthcheck fetches \/healthz, not \/health/,
    ],
    [
      'probe port',
      "20892/health'",
      "20882/health'",
      /broker-2: healthcheck fetches port 20882; the HTTP port is 20892/,
    ],
    ['published port', '"20891:20891"', '"20891:20881"', /broker-2: publishes container port 20881/],
    [
      'data volume',
      '- broker-1-data:/data',
      '- broker-1-data:/var/data',
      /broker-1: no volume mounted at its data dir \/data/,
    ],
    [
      'metaserver port',
      '- https://metaserver:8080\n      - --tls-cert-file\n      - /certs/tls.crt\n      - --tls-key-file\n      - /certs/tls.key\n      - --tls-ca-file\n      - /certs/ca.crt\n      - --auth\n      - "true"\n    environment:\n      - QMQ_LOG_LEVEL=info\n      # The health checks below (node fetch) trust the cluster\'s CA.\n      - NODE_EXTRA_CA_CERTS=/certs/ca.crt\n      - "QMQ_CLUSTER_SECRET',
      '- https://metaserver:8081\n      - --tls-cert-file\n      - /certs/tls.crt\n      - --tls-key-file\n      - /certs/tls.key\n      - --tls-ca-file\n      - /certs/ca.crt\n      - --auth\n      - "true"\n    environment:\n      - QMQ_LOG_LEVEL=info\n      # The health checks below (node fetch) trust the cluster\'s CA.\n      - NODE_EXTRA_CA_CERTS=/certs/ca.crt\n      - "QMQ_CLUSTER_SECRET',
      /delay-1: --metaserver https:\/\/metaserver:8081: the metaserver listens on 8080/,
    ],
    [
      'bind address',
      '- broker\n      - --group\n      - broker-1\n      - --host\n      - 0.0.0.0',
      '- broker\n      - --group\n      - broker-1\n      - --host\n      - 127.0.0.1',
      /broker-1: --host is "127.0.0.1"/,
    ],
    [
      'no cluster secret',
      `      - "QMQ_CLUSTER_SECRET=\${QMQ_CLUSTER_SECRET:?set QMQ_CLUSTER_SECRET to the cluster secret, see docs/deploy.md}"\n    ports:\n      - "20801`,
      '    ports:\n      - "20801',
      /compose delay-1: no cluster secret/,
    ],
  ]
  for (const [name, from, to, re] of cases) {
    const { problems } = checkCompose(yamlDoc(mutate(text, from, to)))
    t.ok(problemsMatching(problems, re).length > 0, `${name}: ${problems.join('; ')}`)
  }
})

t.test('deploy - k8s manifests pass real flags and env, probe /health, keep data on volumes', async (t) => {
  const docs = k8sText().flatMap(yamlDocs)
  const { problems, placed } = checkKubernetes(docs)
  t.same(problems, [])
  t.same(placed.map((p) => `${p.where} ${p.service}`).sort(), [
    'Deployment qmq-metaserver metaserver',
    'StatefulSet qmq-broker broker',
    'StatefulSet qmq-broker-slave broker',
    'StatefulSet qmq-delay delay',
    'StatefulSet qmq-delay-slave delay',
  ])
  // Every broker group and every delay group is a master and a slave, as the real CLI parses them.
  const brokers = placed.filter((p) => p.service === 'broker')
  t.same(
    brokers.map((p) => [p.where, p.options.group, p.options.role ?? 'master', p.options.advertisedHost]),
    [
      ['StatefulSet qmq-broker', 'qmq-broker-0', 'master', 'qmq-broker-0.qmq-broker.default.svc'],
      ['StatefulSet qmq-broker-slave', 'qmq-broker-0', 'slave', 'qmq-broker-slave-0.qmq-broker.default.svc'],
    ],
  )
  const delays = placed.filter((p) => p.service === 'delay')
  t.same(
    delays.map((p) => [p.where, p.options.group, p.options.role ?? 'master', p.options.advertisedAddress]),
    [
      ['StatefulSet qmq-delay', 'qmq-delay-0', 'master', 'qmq-delay-0.qmq-delay.default.svc:20801'],
      [
        'StatefulSet qmq-delay-slave',
        'qmq-delay-0',
        'slave',
        'qmq-delay-slave-0.qmq-delay.default.svc:20801',
      ],
    ],
  )
  // The pair is configured alike: TLS, authentication and the cluster secret on both copies.
  for (const p of [...brokers, ...delays])
    t.match(p.options, { auth: true, tlsCertFile: '/certs/tls.crt', tlsCaFile: '/certs/ca.crt' }, p.where)
  t.same(checkKustomization(yamlDoc(readText(K8S, 'kustomization.yaml')), readdirSync(K8S)), [])
})

type Json = unknown
/** Applies one RFC 6902 operation (replace, add with '-' append, remove) to `doc`, in place. */
function jsonPatch(doc: Json, op: { op: string; path: string; value?: Json }): void {
  const keys = op.path.split('/').slice(1)
  const last = keys.pop() as string
  let at = doc as Record<string, Json>
  for (const k of keys) {
    const next = at[k]
    if (next === undefined || next === null || typeof next !== 'object') throw new Error(`no ${op.path}`)
    at = next as Record<string, Json>
  }
  if (op.op === 'remove') {
    if (!(last in at)) throw new Error(`remove: no ${op.path}`)
    delete at[last]
  } else if (op.op === 'add' && last === '-') (at as unknown as Json[]).push(op.value)
  else if (op.op === 'replace' || op.op === 'add') {
    if (op.op === 'replace' && !(last in at)) throw new Error(`replace: no ${op.path}`)
    at[last] = op.value
  } else throw new Error(`unsupported op ${op.op}`)
}

/**
 * The documents `kubectl apply -k <overlay>` would apply, for overlays made of `resources: [..]` and
 * patches that are either RFC 6902 lists (with a target) or `$patch: delete` of a whole document.
 */
function buildOverlay(dir: string): unknown[] {
  const k = yamlDoc(readText(dir, 'kustomization.yaml')) as {
    resources: string[]
    patches: { path: string; target?: { kind: string; name: string } }[]
  }
  t.same(k.resources, ['..'], 'the overlay is the base plus patches')
  let docs = k8sText().flatMap(yamlDocs) as { kind: string; metadata: { name: string } }[]
  for (const p of k.patches) {
    const patch = yamlDoc(readText(dir, p.path))
    if (Array.isArray(patch)) {
      const target = docs.find((d) => d.kind === p.target?.kind && d.metadata.name === p.target?.name)
      if (target === undefined) throw new Error(`${p.path}: target not in the base`)
      for (const op of patch) jsonPatch(target, op as { op: string; path: string; value?: Json })
    } else {
      const del = patch as { $patch?: string; kind: string; metadata: { name: string } }
      if (del.$patch !== 'delete') throw new Error(`${p.path}: only $patch: delete is supported here`)
      const before = docs.length
      docs = docs.filter((d) => !(d.kind === del.kind && d.metadata.name === del.metadata.name))
      if (docs.length !== before - 1) throw new Error(`${p.path}: deletes nothing`)
    }
  }
  return docs
}

t.test(
  'deploy - k8s/postgres overlay: metaserver Deployment of 2 replicas on the PostgreSQL Secret',
  async (t) => {
    const docs = buildOverlay(join(K8S, 'postgres'))
    const { problems, placed } = checkKubernetes(docs)
    t.same(problems, [])
    const meta = placed.find((p) => p.service === 'metaserver')
    t.equal(meta?.options.store, 'value-known-at-deploy-time', 'store URL from the Secret')
    t.equal(meta?.options.advertisedUrl, 'http://10.244.0.17:8080', 'each replica registers its pod IP')
    t.notOk(
      docs.some(
        (d) =>
          (d as { kind: string }).kind === 'PersistentVolumeClaim' &&
          JSON.stringify(d).includes('metaserver'),
      ),
      'no metaserver volume',
    )
    // the checker refuses a shared-store metaserver left at one replica
    const one = structuredClone(docs) as {
      kind: string
      metadata: { name: string }
      spec: { replicas: number }
    }[]
    const d = one.find((x) => x.kind === 'Deployment' && x.metadata.name === 'qmq-metaserver')
    if (d !== undefined) d.spec.replicas = 1
    t.match(checkKubernetes(one).problems.join('; '), /runs 2 or more replicas/)
  },
)

t.test('deploy - the k8s checker catches broken manifests', async (t) => {
  const file = (name: string) => readText(K8S, name)
  const others = (name: string) =>
    k8sFiles()
      .filter((f) => f !== name)
      .map((f) => readText(K8S, f))
  const cases: [string, string, string, string, RegExp][] = [
    [
      'misspelled flag',
      'broker.yaml',
      '- --http-host',
      '- --http-hots',
      /--http-hots is not an option of qmq broker/,
    ],
    [
      'misspelled env',
      'delay.yaml',
      'name: QMQ_DELAY_ADVERTISED_ADDRESS',
      'name: QMQ_DELAY_ADVERTISE_ADDRESS',
      /QMQ_DELAY_ADVERTISE_ADDRESS is not an option/,
    ],
    [
      'probe path',
      'broker.yaml',
      'path: /health',
      'path: /ready',
      /StatefulSet qmq-broker: startupProbe gets \/ready/,
    ],
    [
      'probe port',
      'delay.yaml',
      'port: http\n            periodSeconds: 10',
      'port: tcp\n            periodSeconds: 10',
      /livenessProbe port tcp is not the HTTP port 20802/,
    ],
    [
      'no claim templates',
      'broker.yaml',
      '  volumeClaimTemplates:\n    - metadata:\n        name: data',
      '  volumeClaimTemplates:\n    - metadata:\n        name: scratch',
      /qmq-broker: \/data is not a volumeClaimTemplate's volume/,
    ],
    [
      'data dir',
      'delay.yaml',
      '- --data-dir\n            - /data',
      '- --data-dir\n            - /var/lib/qmq',
      /nothing is mounted at its data dir \/var\/lib\/qmq/,
    ],
    [
      'group name',
      'broker.yaml',
      'name: QMQ_BROKER_GROUP\n              value: qmq-broker-$(POD_INDEX)',
      'name: QMQ_BROKER_GROUP\n              value: broker-1',
      /QMQ_BROKER_GROUP must come from the pod name/,
    ],
    [
      'advertised host',
      'broker.yaml',
      'value: $(POD_NAME).qmq-broker.',
      'value: $(POD_NAME).qmq-delay.',
      /advertises qmq-broker-0.qmq-delay.default.svc:20881, which does not reach/,
    ],
    [
      'slave started as master',
      'broker.yaml',
      '            - --role\n            - slave\n',
      '',
      /broker group qmq-broker-0 has no slave/,
    ],
    [
      'delay slave started as master',
      'delay.yaml',
      '            - --role\n            - slave\n',
      '',
      /delay group qmq-delay-0 has no slave/,
    ],
    [
      'env order',
      'delay.yaml',
      '$(POD_NAME).qmq-delay',
      '$(QMQ_DELAY_METASERVER).qmq-delay',
      /refers to \$\(QMQ_DELAY_METASERVER\), not defined before it/,
    ],
    [
      'metaserver url',
      'configmap.yaml',
      'https://qmq-metaserver:8080',
      'https://qmq-metaserver:80',
      /metaserver URL https:\/\/qmq-metaserver:80 does not reach a metaserver/,
    ],
    [
      'no cluster secret',
      'delay.yaml',
      '            - name: QMQ_CLUSTER_SECRET\n              valueFrom:\n                secretKeyRef:\n                  name: qmq-cluster\n                  key: secret\n',
      '',
      /StatefulSet qmq-delay: no cluster secret/,
    ],
    [
      'container port',
      'metaserver.yaml',
      'containerPort: 8080',
      'containerPort: 8081',
      /declares containerPort 8081, not listened on/,
    ],
  ]
  for (const [name, target, from, to, re] of cases) {
    const docs = [mutate(file(target), from, to), ...others(target)].flatMap(yamlDocs)
    const { problems } = checkKubernetes(docs)
    t.ok(problemsMatching(problems, re).length > 0, `${name}: ${problems.join('; ')}`)
  }
  // Both copies' anti-affinity on zones only: master and slave of a group may share a node.
  for (const [target, group] of [
    ['broker.yaml', 'broker group qmq-broker-0'],
    ['delay.yaml', 'delay group qmq-delay-0'],
  ] as const) {
    const together = file(target).replaceAll(
      'requiredDuringSchedulingIgnoredDuringExecution:\n            - topologyKey: kubernetes.io/hostname',
      'requiredDuringSchedulingIgnoredDuringExecution:\n            - topologyKey: topology.kubernetes.io/zone',
    )
    t.not(together, file(target))
    t.match(
      checkKubernetes([together, ...others(target)].flatMap(yamlDocs)).problems.join('; '),
      new RegExp(`the master and slave of ${group} may share a node`),
    )
  }
  t.same(checkKustomization({ resources: ['broker.yaml', 'gone.yaml'] }, ['broker.yaml', 'delay.yaml']), [
    'kustomization: delay.yaml is not listed',
    'kustomization: gone.yaml does not exist',
  ])
})

t.test(
  'deploy - the Dockerfile builds in a build stage and runs bin/qmq.js as non-root on node:20-slim',
  async (t) => {
    const text = readText(ROOT, 'deploy', 'Dockerfile')
    const dockerignore = readText(ROOT, '.dockerignore')
    // Every port the manifests declare is documented by EXPOSE.
    const ports = [
      ...new Set(
        checkKubernetes(k8sText().flatMap(yamlDocs)).placed.flatMap((p) =>
          [p.options.port, p.options.httpPort].filter((x): x is number => typeof x === 'number' && x > 0),
        ),
      ),
    ]
    t.same(
      ports.sort((a, b) => a - b),
      [8080, 20801, 20802, 20881, 20882],
    )
    const opts = { root: ROOT, dockerignore, ports }
    t.same(checkDockerfile(text, opts), [])

    const bad: [string, string, string, RegExp][] = [
      [
        'entrypoint',
        'ENTRYPOINT ["node", "bin/qmq.js"]',
        'ENTRYPOINT ["node", "dist/cli/main.js"]',
        /ENTRYPOINT is/,
      ],
      ['user', 'USER node', 'USER root', /runs as root/],
      ['prune', 'npm prune --omit=dev', 'true', /does not run\/install npm prune --omit=dev/],
      ['copy', 'COPY --from=build /app/dist ./dist', '', /does not copy \/app\/dist/],
      ['missing source', 'COPY src ./src', 'COPY source ./src', /COPY source: no such file/],
      ['volume', 'VOLUME ["/data"]', 'VOLUME ["/var/lib/qmq"]', /\/data is not a VOLUME/],
      ['expose', 'EXPOSE 8080 20881', 'EXPOSE 8080 20891', /port 20881 is not EXPOSEd/],
    ]
    for (const [name, from, to, re] of bad) {
      const problems = checkDockerfile(mutate(text, from, to), opts)
      t.ok(problemsMatching(problems, re).length > 0, `${name}: ${problems.join('; ')}`)
    }
    t.ok(
      problemsMatching(
        checkDockerfile(text, { ...opts, dockerignore: '.git\ndist\n' }),
        /node_modules is not/,
      ).length,
    )
  },
)

t.test('deploy - docs/deploy.md names only real flags and environment variables', async (t) => {
  t.same(checkDocs(readText(ROOT, 'docs', 'deploy.md')), [])
  t.same(checkDocs('Set `--http-prot 1` or QMQ_BROKER_HTTP_PROT.\n```sh\ndocker run --rm qmq\n```\n'), [
    'docs: --http-prot is not an option of any service',
    'docs: QMQ_BROKER_HTTP_PROT is not an option of qmq broker',
  ])
})
