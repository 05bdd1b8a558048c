import fs from 'node:fs'

/**
 * Thin promise wrappers over the callback fd API (cheaper than FileHandle on the hot path).
 * Every I/O of the store goes through `FsIo`, so a test can inject faults; the default is `nodeFsIo`.
 */
export interface FsIo {
  writev(fd: number, buffers: Buffer[], position: number): Promise<number>
  write(fd: number, buffer: Buffer, position: number): Promise<number>
  read(fd: number, buffer: Buffer, offset: number, length: number, position: number): Promise<number>
  fdatasync(fd: number): Promise<void>
  ftruncate(fd: number, length: number): Promise<void>
}

export const nodeFsIo: FsIo = {
  writev: (fd, buffers, position) =>
    new Promise((resolve, reject) => {
      fs.writev(fd, buffers, position, (err, n) => (err ? reject(err) : resolve(n)))
    }),
  write: (fd, buffer, position) =>
    new Promise((resolve, reject) => {
      fs.write(fd, buffer, 0, buffer.length, position, (err, n) => (err ? reject(err) : resolve(n)))
    }),
  read: (fd, buffer, offset, length, position) =>
    new Promise((resolve, reject) => {
      fs.read(fd, buffer, offset, length, position, (err, n) => (err ? reject(err) : resolve(n)))
    }),
  fdatasync: (fd) =>
    new Promise((resolve, reject) => {
      fs.fdatasync(fd, (err) => (err ? reject(err) : resolve()))
    }),
  ftruncate: (fd, length) =>
    new Promise((resolve, reject) => {
      fs.ftruncate(fd, length, (err) => (err ? reject(err) : resolve()))
    }),
}
