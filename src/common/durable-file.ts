import fs from 'node:fs'
import path from 'node:path'

/** fsyncs a directory so that created, renamed and deleted entries in it are durable. */
export function fsyncDir(dir: string): void {
  let fd: number | undefined
  try {
    fd = fs.openSync(dir, 'r')
    fs.fsyncSync(fd)
  } catch {
    // Some filesystems refuse fsync on directories; the rename is still atomic.
  } finally {
    if (fd !== undefined) fs.closeSync(fd)
  }
}

/** fsyncDir off the event loop (for paths where a synchronous fsync would stall other work). */
export async function fsyncDirAsync(dir: string): Promise<void> {
  let fh: fs.promises.FileHandle | undefined
  try {
    fh = await fs.promises.open(dir, 'r')
    await fh.sync()
  } catch {
    // Some filesystems refuse fsync on directories; the rename is still atomic.
  } finally {
    await fh?.close().catch(() => undefined)
  }
}

/**
 * Replaces `file` with `data`, atomically and durably, off the event loop: temp file, fdatasync,
 * rename, fsync of the directory. Callers serialize writes of one file, or give each write its own
 * temp name (`tmp`).
 */
export async function writeFileAtomic(
  file: string,
  data: string | Buffer,
  tmp = `${file}.tmp`,
): Promise<void> {
  const fh = await fs.promises.open(tmp, 'w')
  try {
    await fh.writeFile(data)
    await fh.datasync()
  } finally {
    await fh.close()
  }
  await fs.promises.rename(tmp, file)
  await fsyncDirAsync(path.dirname(file))
}

/**
 * Opens `file` for reading and writing, creating it if missing; a new file's directory entry is made
 * durable at once (fsyncDir), so data later fdatasynced into it cannot vanish with its name.
 */
export function openOrCreateSync(file: string): number {
  if (fs.existsSync(file)) return fs.openSync(file, 'r+')
  const fd = fs.openSync(file, 'w+')
  fsyncDir(path.dirname(file))
  return fd
}

/** Replaces `file` with `data`, atomically and durably: temp file, fsync, rename, fsync of the directory. */
export function writeFileAtomicSync(file: string, data: string | Buffer): void {
  const tmp = `${file}.tmp`
  const fd = fs.openSync(tmp, 'w')
  try {
    fs.writeFileSync(fd, data)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, file)
  fsyncDir(path.dirname(file))
}
