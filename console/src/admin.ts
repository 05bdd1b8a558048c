import { ApiError, getToken } from './api'
import { notice } from './dom'

/** Runs an admin write and shows its outcome in `out` (a refusal says why, e.g. no token). */
export async function adminAction(
  out: HTMLElement,
  what: string,
  fn: () => Promise<string>,
): Promise<boolean> {
  out.replaceChildren(notice('info', `${what}…`))
  try {
    const done = await fn()
    out.replaceChildren(notice('success', done, 'action-ok'))
    return true
  } catch (err) {
    const msg =
      err instanceof ApiError && err.code === 'QMQ_ERR_UNAUTHORIZED'
        ? `Refused: ${err.message}${getToken() === undefined ? ' (enter the admin token at the top right)' : ''}`
        : `Failed: ${err instanceof Error ? err.message : String(err)}`
    out.replaceChildren(notice('error', msg, 'action-error'))
    return false
  }
}
