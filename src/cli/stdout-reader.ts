import { spawn } from 'node:child_process'
import { fstatSync } from 'node:fs'

/**
 * Calls `onClosed` (once) as soon as nobody reads this process's stdout any more, when stdout is a
 * pipe or a socket (`qmq tail ... | head -1`). Returns a function that stops watching.
 *
 * Node notices a closed pipe only when it writes to it (EPIPE): it never polls an idle write end, so
 * no 'error' or 'close' comes while nothing is written, and a zero-byte write succeeds on a broken pipe
 * (Linux). GNU tail (coreutils >= 8.28) does poll its output: `tail -f --pid=<this pid> /dev/null`
 * sharing our stdout writes nothing, dies of SIGPIPE as soon as the pipe has no reader, and exits by
 * itself when this process ends (so it is never left behind). Where there is no such tail, or stdout is
 * no pipe, nothing is watched and a closed pipe is noticed at the next write, as before.
 */
export function watchStdoutReader(onClosed: () => void): () => void {
  let pipe = false
  try {
    const st = fstatSync(1)
    pipe = st.isFIFO() || st.isSocket() // a shell pipe; a socket pair (Node's spawn with 'pipe')
  } catch {
    pipe = false
  }
  if (!pipe) return () => {}
  let stopped = false
  const child = spawn('tail', ['-f', `--pid=${process.pid}`, '/dev/null'], {
    stdio: ['ignore', 'inherit', 'ignore'],
  })
  child.on('error', () => {}) // no tail here: the closed pipe is noticed at the next write
  child.once('exit', (_code, signal) => {
    // Only a SIGPIPE means "no reader": any other end (an old tail without --pid, ...) says nothing.
    if (!stopped && signal === 'SIGPIPE') {
      stopped = true
      onClosed()
    }
  })
  child.unref()
  return () => {
    if (stopped) return
    stopped = true
    child.kill()
  }
}
