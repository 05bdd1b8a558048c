import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { fsyncDir, fsyncDirAsync, writeFileAtomic, writeFileAtomicSync } from '../../common/durable-file'
import { fsError, QmqError } from '../../common/errors'
import type { Logger } from '../../common/logger'

/**
 * Where each subject's consume log lives: `consumelog/<subject dir>/`, with a `SUBJECT` file holding
 * the subject's name, and `consumelog/LAYOUT` saying which naming scheme the directory names follow.
 *
 * Subject dir names (layout 2), one name per subject and one subject per name:
 * - `encodeURIComponent(subject)`, a leading '.' written `%2E`, when that is at most 180 characters.
 *   These names only ever hold the characters A-Z a-z 0-9 - _ . ! ~ * ' ( ) and `%XX` escapes;
 * - otherwise `+h-<sha256 hex of the subject>`. '+' is always escaped by encodeURIComponent, so no
 *   name of the first kind starts with it.
 * Layout 1 (no LAYOUT file) wrote long subjects as `h-<sha256 hex>`, which is also the first kind's
 * name of the literal subject `h-<that hex>`: two subjects could share one consume log.
 */
export const SUBJECT_DIR_LAYOUT = 2
const MAX_PLAIN_NAME = 180
const HASHED_PREFIX = '+h-'
const LAYOUT_FILE = 'LAYOUT'
const MARKER_FILE = 'SUBJECT'
/** Layout 1's name of a long subject (and of the literal subject `h-<hex>`): ambiguous. */
const LEGACY_HASHED = /^h-[0-9a-f]{64}$/

export function subjectDirName(subject: string): string {
  const enc = encodeURIComponent(subject).replace(/^\./, '%2E')
  if (enc.length <= MAX_PLAIN_NAME) return enc
  return `${HASHED_PREFIX}${createHash('sha256').update(subject).digest('hex')}`
}

export interface SubjectDir {
  dir: string
  /**
   * Set when the directory has no SUBJECT marker yet: writes it (temp file, fdatasync, rename, fsync
   * of the subject's directory, then of `root` for the directory's own name), off the event loop.
   * Until it has resolved, nothing of the subject may be acknowledged (the store awaits it before a
   * new subject's first append joins a batch): a crash must not leave acknowledged records of a
   * subject whose consume-log directory names no subject.
   */
  writeMarker: (() => Promise<void>) | undefined
}

/**
 * The directory of `subject`'s consume log, created if missing (the marker is written by the
 * returned `writeMarker`). A directory whose marker names another subject is refused
 * (QMQ_ERR_STORE_CORRUPT) rather than shared.
 */
export function claimSubjectDir(root: string, subject: string): SubjectDir {
  const dir = path.join(root, subjectDirName(subject))
  fs.mkdirSync(dir, { recursive: true })
  const marker = path.join(dir, MARKER_FILE)
  let found = ''
  try {
    found = fs.readFileSync(marker, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  // Empty: a marker torn by a crash while it was written (before layout 2 it was not atomic).
  if (found === '') {
    const writeMarker = async (): Promise<void> => {
      try {
        await writeFileAtomic(marker, subject)
      } catch (err) {
        throw fsError(err, `writing ${marker}`)
      }
      await fsyncDirAsync(root)
    }
    return { dir, writeMarker }
  }
  if (found !== subject) {
    throw new QmqError(
      'QMQ_ERR_STORE_CORRUPT',
      `consume-log directory ${dir} belongs to subject ${JSON.stringify(found)}, not ${JSON.stringify(subject)}`,
    )
  }
  return { dir, writeMarker: undefined }
}

/**
 * Brings `consumelog/` to layout 2 before anything opens a consume log. Every layout-1 directory
 * named `h-<hex>` is deleted: its contents may mix two subjects' entries, and consume logs are
 * derived data, so recovery rebuilds the subjects concerned from the message log (the checkpoint
 * expects entries their new directories lack). Crash-safe: the deletions are made durable before
 * LAYOUT is written, and until LAYOUT exists a new open does the same again.
 */
export function migrateSubjectDirs(root: string, log: Logger): void {
  fs.mkdirSync(root, { recursive: true })
  const layoutFile = path.join(root, LAYOUT_FILE)
  let layout = 1
  if (fs.existsSync(layoutFile)) {
    layout = Number(fs.readFileSync(layoutFile, 'utf8').trim())
    if (layout === SUBJECT_DIR_LAYOUT) return
    if (!Number.isInteger(layout) || layout > SUBJECT_DIR_LAYOUT) {
      throw new QmqError(
        'QMQ_ERR_STORE_CORRUPT',
        `${layoutFile} says layout ${JSON.stringify(layout)}; this broker knows layouts 1 and ${SUBJECT_DIR_LAYOUT}`,
      )
    }
  }
  let removed = 0
  for (const name of fs.readdirSync(root)) {
    if (!LEGACY_HASHED.test(name)) continue
    const dir = path.join(root, name)
    let subject: string | undefined
    try {
      subject = fs.readFileSync(path.join(dir, MARKER_FILE), 'utf8')
    } catch {
      // no marker: nothing to name in the log line
    }
    log.warn(
      { dir: name, subject },
      'consume log of a hashed subject name from layout 1 removed; it is rebuilt from the message log',
    )
    fs.rmSync(dir, { recursive: true, force: true })
    removed++
  }
  if (removed > 0) fsyncDir(root)
  writeFileAtomicSync(layoutFile, `${SUBJECT_DIR_LAYOUT}\n`)
}
