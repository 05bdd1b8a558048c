/**
 * Waits for `p` until `deadline` (ms since the epoch) or until `signal` aborts, whichever is first:
 * 'done' when `p` settled first (its rejection is swallowed), else 'deadline' or 'aborted'. Leaves no
 * timer or listener behind.
 */
export async function untilDeadline(
  p: Promise<unknown>,
  deadline: number,
  signal?: AbortSignal,
): Promise<'done' | 'deadline' | 'aborted'> {
  if (signal?.aborted) return 'aborted'
  let timer: NodeJS.Timeout | undefined
  let onAbort: (() => void) | undefined
  try {
    return await Promise.race([
      p.then(
        () => 'done' as const,
        () => 'done' as const,
      ),
      new Promise<'deadline'>((resolve) => {
        timer = setTimeout(() => resolve('deadline'), Math.max(0, deadline - Date.now()))
      }),
      new Promise<'aborted'>((resolve) => {
        onAbort = () => resolve('aborted')
        signal?.addEventListener('abort', onAbort, { once: true })
      }),
    ])
  } finally {
    if (timer !== undefined) clearTimeout(timer)
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort)
  }
}
