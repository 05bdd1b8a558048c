import fs from 'node:fs'
import path from 'node:path'
import { writeFileAtomicSync } from '../../common/durable-file'
import { QmqError } from '../../common/errors'

/**
 * `meta.json` of a delay data dir: its format version and the bucket size it was written with.
 *
 *   version 1  {"version":1,"bucketMinutes":60}
 *              written by every version before refusal markers; still written for a new data dir.
 *   version 2  {"version":2,"minutes":60,"bucketMinutes":"<text>"}
 *              the message log may hold refusal markers (message-log.ts, `encodeRefusals`). Written
 *              (once, synced) before the first marker is appended, when a replay meets one, and by a
 *              slave (whose copied log may receive markers at any time: follower writes are not
 *              inspected). The bucket size moves to `minutes`; `bucketMinutes` becomes a text on
 *              purpose: versions before markers compare it with their bucketMinutes, find it
 *              different and refuse to open the data dir with QMQ_ERR_CONFIG_INVALID, quoting this
 *              text, instead of delivering the markers as messages.
 *
 * A version above 2 (a newer qmq's) is refused. A data dir that never refused a record after its
 * write (nor was a slave's) stays version 1, openable by older versions.
 */
export const META_FILE = 'meta.json'
export const META_VERSION_MARKERS = 2

const OLD_VERSION_TEXT =
  'data dir format 2: its message log holds delay refusal markers, which qmq versions before them would deliver as messages; open it with the qmq version that wrote it or a newer one'

interface Meta {
  version: number
  bucketMinutes: number
}

function read(file: string): Meta | undefined {
  if (!fs.existsSync(file)) return undefined
  const raw = JSON.parse(fs.readFileSync(file, 'utf8')) as {
    version?: unknown
    bucketMinutes?: unknown
    minutes?: unknown
  }
  const version = typeof raw.version === 'number' ? raw.version : 1
  if (version > META_VERSION_MARKERS)
    throw new QmqError(
      'QMQ_ERR_CONFIG_INVALID',
      `the delay data dir ${path.dirname(file)} has format ${version}, written by a newer qmq (this one reads up to ${META_VERSION_MARKERS})`,
    )
  const minutes = version >= META_VERSION_MARKERS ? raw.minutes : raw.bucketMinutes
  return { version, bucketMinutes: typeof minutes === 'number' ? minutes : Number.NaN }
}

function write(file: string, version: number, bucketMinutes: number): void {
  writeFileAtomicSync(
    file,
    JSON.stringify(
      version >= META_VERSION_MARKERS
        ? { version, minutes: bucketMinutes, bucketMinutes: OLD_VERSION_TEXT }
        : { version: 1, bucketMinutes },
    ),
  )
}

/**
 * Checks (or creates, as version 1) `meta.json` in `dataDir`: a different bucketMinutes is refused.
 * With `atLeast`, upgrades it to that version. Returns the version it has now.
 */
export function checkDataMeta(dataDir: string, bucketMinutes: number, atLeast = 1): number {
  const file = path.join(dataDir, META_FILE)
  const meta = read(file)
  if (meta === undefined) {
    write(file, atLeast, bucketMinutes)
    return atLeast
  }
  if (meta.bucketMinutes !== bucketMinutes)
    throw new QmqError(
      'QMQ_ERR_CONFIG_INVALID',
      `bucketMinutes is ${bucketMinutes} but the data dir ${dataDir} was written with ${meta.bucketMinutes}; it cannot change once used`,
    )
  if (meta.version < atLeast) {
    write(file, atLeast, bucketMinutes)
    return atLeast
  }
  return meta.version
}
