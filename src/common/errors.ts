import { codeForStatus, ERROR_CODES, type ErrorCode } from './error-codes'

export { ERROR_CODES, type ErrorCode, codeForStatus } from './error-codes'

export interface QmqErrorOptions {
  cause?: unknown
  /** Structured facts for logs and callers (offsets, limits, names). Never secrets. */
  details?: Record<string, unknown>
}

/**
 * The one error type of qmq. `code` is stable (`QMQ_ERR_*`), `status` is its wire number,
 * `retriable` says whether sending the same request again (later, or to another group) may succeed.
 */
export class QmqError extends Error {
  override readonly name: string = 'QmqError'
  readonly code: ErrorCode
  readonly status: number
  readonly retriable: boolean
  readonly details: Record<string, unknown> | undefined

  constructor(code: ErrorCode, message?: string, options: QmqErrorOptions = {}) {
    const spec = ERROR_CODES[code]
    super(message ?? spec.message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.status = spec.status
    this.retriable = spec.retriable
    this.details = options.details
  }

  /** Plain JSON for HTTP answers and logs: `{ code, status, message, retriable }`. */
  toJSON(): { code: ErrorCode; status: number; message: string; retriable: boolean } {
    return { code: this.code, status: this.status, message: this.message, retriable: this.retriable }
  }

  /**
   * Rebuilds an error from a wire status and message. An unknown status (a newer peer) becomes
   * QMQ_ERR_INTERNAL with the status kept in `details.status`.
   */
  static fromStatus(status: number, message?: string): QmqError {
    const code = codeForStatus(status)
    if (code === undefined) {
      return new QmqError('QMQ_ERR_INTERNAL', message ?? `unknown error status ${status}`, {
        details: { status },
      })
    }
    return new QmqError(code, message && message.length > 0 ? message : undefined)
  }
}

export function isQmqError(err: unknown, code?: ErrorCode): err is QmqError {
  return err instanceof QmqError && (code === undefined || err.code === code)
}

/** Wraps anything thrown into a QmqError, keeping QmqErrors as they are. */
export function toQmqError(err: unknown, fallback: ErrorCode = 'QMQ_ERR_INTERNAL'): QmqError {
  if (err instanceof QmqError) return err
  const message = err instanceof Error ? err.message : String(err)
  return new QmqError(fallback, message, { cause: err })
}

/**
 * Maps a Node.js filesystem error to a store error: ENOSPC/EDQUOT become QMQ_ERR_DISK_FULL,
 * anything else QMQ_ERR_STORE_IO. Both are retriable: nothing was acknowledged.
 */
export function fsError(err: unknown, what: string): QmqError {
  if (err instanceof QmqError) return err
  const errno = (err as NodeJS.ErrnoException | undefined)?.code
  const code: ErrorCode = errno === 'ENOSPC' || errno === 'EDQUOT' ? 'QMQ_ERR_DISK_FULL' : 'QMQ_ERR_STORE_IO'
  const message = err instanceof Error ? err.message : String(err)
  return new QmqError(code, `${what}: ${message}`, { cause: err, details: { errno } })
}
