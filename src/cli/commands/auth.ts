import { writeFileSync } from 'node:fs'
import type { Grant } from '../../common/auth/grants'
import { QmqError } from '../../common/errors'
import { type FlagSpec, flagsHelp, listFlag, parseArgs, stringFlag } from '../args'
import { CLUSTER_FLAGS, withCluster } from '../cluster'
import { table, time } from '../table'
import type { Command } from './command'

/**
 * `qmq auth <create|rotate|grant|revoke|delete|list>`: applications, their tokens and permissions,
 * kept by the metaserver (docs/security.md). Writes need the metaserver's admin token (--token or
 * QMQ_ADMIN_TOKEN). A new token is shown once: on stdout, or written to --token-file (mode 0600)
 * instead; the metaserver keeps only its SHA-256.
 */
const USAGE = `qmq auth create APP [grants] [--token-file FILE]
       qmq auth rotate APP [--keep-previous] [--token-file FILE]
       qmq auth grant APP grants
       qmq auth revoke APP grants
       qmq auth delete APP
       qmq auth list [--json]

grants: --produce SUBJECT  --consume SUBJECT [--group GROUP]  --admin SUBJECT   (repeatable)
        SUBJECT and GROUP are names or prefix patterns ending in * ('orders.*', '*')`

const FLAGS: readonly FlagSpec[] = [
  { name: 'produce', value: 'SUBJECT', repeatable: true, doc: 'may send to SUBJECT (name or prefix*)' },
  {
    name: 'consume',
    value: 'SUBJECT',
    repeatable: true,
    doc: 'may consume SUBJECT (with the groups of --group; default any group)',
  },
  { name: 'group', value: 'GROUP', doc: 'consumer group (name or prefix*) of the --consume grants' },
  {
    name: 'admin',
    value: 'SUBJECT',
    repeatable: true,
    doc: "may use admin requests on SUBJECT ('*': every admin request)",
  },
  { name: 'token-file', value: 'FILE', doc: 'write the new token to FILE (mode 0600) instead of stdout' },
  { name: 'keep-previous', doc: 'rotate: the previous token stays valid until the next rotation' },
  ...CLUSTER_FLAGS,
]

function grantsOf(flags: ReturnType<typeof parseArgs>['flags']): Grant[] {
  const group = stringFlag(flags, 'group')
  const grants: Grant[] = [
    ...listFlag(flags, 'produce').map((subject): Grant => ({ action: 'produce', subject })),
    ...listFlag(flags, 'consume').map(
      (subject): Grant => ({ action: 'consume', subject, group: group ?? '*' }),
    ),
    ...listFlag(flags, 'admin').map((subject): Grant => ({ action: 'admin', subject })),
  ]
  if (group !== undefined && listFlag(flags, 'consume').length === 0)
    throw new QmqError('QMQ_ERR_USAGE', '--group goes with --consume')
  return grants
}

function showToken(flags: ReturnType<typeof parseArgs>['flags'], appCode: string, token: string): void {
  const file = stringFlag(flags, 'tokenFile')
  if (file === undefined) {
    process.stdout.write(`${token}\n`)
    process.stderr.write(
      `qmq auth: the token of ${appCode} is shown once; give it to the application as its token option (e.g. from a file or QMQ_APP_TOKEN)\n`,
    )
    return
  }
  writeFileSync(file, `${token}\n`, { mode: 0o600 })
  process.stderr.write(`qmq auth: the token of ${appCode} is in ${file}\n`)
}

export const authCommand: Command = {
  name: 'auth',
  summary: 'Manage applications: create, rotate tokens, grant, revoke, delete, list',
  help: () =>
    `Usage: ${USAGE}\n\nApplications authenticate to brokers and delay servers started with --auth.\n\nOptions:\n${flagsHelp(FLAGS)}`,
  run: async (argv) => {
    const args = parseArgs(argv, { flags: FLAGS })
    const [sub, app] = args.positionals
    const json = args.flags.json === true
    const needApp = (): string => {
      if (app === undefined) throw new QmqError('QMQ_ERR_USAGE', `qmq auth ${sub} needs an APP\n${USAGE}`)
      return app
    }
    return withCluster(args.flags, async (cluster) => {
      const meta = cluster.meta
      switch (sub) {
        case 'create': {
          const res = await meta.createApp(needApp(), grantsOf(args.flags))
          showToken(args.flags, res.appCode, res.token)
          return 0
        }
        case 'rotate': {
          const res = await meta.rotateApp(needApp(), args.flags.keepPrevious === true)
          showToken(args.flags, res.appCode, res.token)
          return 0
        }
        case 'grant':
        case 'revoke': {
          const appCode = needApp()
          const grants = grantsOf(args.flags)
          if (grants.length === 0)
            throw new QmqError('QMQ_ERR_USAGE', `qmq auth ${sub} needs --produce, --consume or --admin`)
          let info: unknown
          for (const g of grants)
            info = await (sub === 'grant' ? meta.grantApp(appCode, g) : meta.revokeApp(appCode, g))
          process.stdout.write(
            json
              ? `${JSON.stringify(info)}\n`
              : `${sub === 'grant' ? 'granted' : 'revoked'} ${grants.length}\n`,
          )
          return 0
        }
        case 'delete': {
          const res = await meta.deleteApp(needApp())
          process.stdout.write(json ? `${JSON.stringify(res)}\n` : 'deleted\n')
          return 0
        }
        case 'list': {
          const apps = await meta.listApps()
          process.stdout.write(
            json
              ? `${JSON.stringify(apps)}\n`
              : `${table(
                  ['APP', 'TOKENS', 'GRANTS', 'UPDATED'],
                  apps.map((a) => [
                    a.appCode,
                    a.tokens,
                    a.grants
                      .map(
                        (g) =>
                          `${g.action}:${g.subject}${g.action === 'consume' ? `@${g.group ?? '*'}` : ''}`,
                      )
                      .join(' ') || '-',
                    time(a.updatedAt),
                  ]),
                  '(no applications)',
                )}\n`,
          )
          return 0
        }
        default:
          throw new QmqError(
            'QMQ_ERR_USAGE',
            `qmq auth: unknown subcommand ${JSON.stringify(sub ?? '')}\n${USAGE}`,
          )
      }
    })
  },
}
