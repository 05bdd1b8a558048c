import { QmqError } from '../../common/errors'
import { StartPosition, type StartPositionValue } from '../../common/protocol/commands'

/**
 * Where a consumer group starts, or where a cursor reset moves it: `'latest'` (only messages stored
 * from now on; QMQ's default), `'earliest'` (everything the broker still keeps), or a time (a `Date` or
 * ms since the epoch): the first message the broker stored at or after it (its stored time, the broker's
 * clock), or the end of the log if none is that recent.
 */
export type StartFrom = 'latest' | 'earliest' | Date | number

/** The wire form of a StartFrom (PULL's start/startTime, ADMIN_RESET_CURSOR's position/timeMs). */
export function startPosition(
  from: StartFrom | undefined,
  what = 'startFrom',
): { start: StartPositionValue; startTime: number } {
  if (from === undefined || from === 'latest') return { start: StartPosition.LATEST, startTime: 0 }
  if (from === 'earliest') return { start: StartPosition.EARLIEST, startTime: 0 }
  const ms = from instanceof Date ? from.getTime() : from
  if (typeof ms !== 'number' || !Number.isSafeInteger(ms) || ms < 0) {
    throw new QmqError(
      'QMQ_ERR_INVALID_ARGUMENT',
      `${what} must be 'latest', 'earliest', a valid Date or ms since the epoch >= 0 (got ${String(from)})`,
    )
  }
  return { start: StartPosition.TIMESTAMP, startTime: ms }
}
