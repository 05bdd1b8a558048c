/**
 * `p`'s value, or `late` when it has not settled within `ms`. The timer is cleared as soon as the race
 * is decided: a timer left pending keeps the test file's process alive until it fires, and tap waits
 * for that process to exit.
 */
export async function settleWithin<T, L>(p: Promise<T>, ms: number, late: L): Promise<T | L> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<L>((resolve) => {
    timer = setTimeout(() => resolve(late), ms)
  })
  try {
    return await Promise.race([p, expired])
  } finally {
    clearTimeout(timer)
  }
}
