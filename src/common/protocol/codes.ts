/**
 * Request codes (frame header `code`). Append-only: a code is never reused for another request.
 * 1-19: data path (broker and delay server), 20-49: admin, 50-99: replication.
 */
export const RequestCode = {
  /** Append records. Broker: real-time (and due) messages; delay server: delayed messages. */
  SEND: 1,
  /** Take the next messages of a subject for a consumer of a group (long poll). */
  PULL: 2,
  /** Acknowledge messages by sequence, in any order. */
  ACK: 3,
  /** Give messages back for redelivery after a backoff, or dead-letter them now. */
  NACK: 4,
  /** Keep a consumer's leases alive without pulling. */
  HEARTBEAT: 5,
  /** Delay server: cancel pending delayed messages by id. */
  CANCEL: 6,
  /** Round trip with an empty body; answers at once (liveness probes, latency checks). */
  PING: 7,
  /** The connection's credential (appCode + token); first frame when the server requires auth. */
  AUTH: 8,

  ADMIN_BACKLOG: 20,
  ADMIN_RESET_CURSOR: 21,
  ADMIN_DLQ_LIST: 22,
  ADMIN_DLQ_REDRIVE: 23,
  ADMIN_SUBJECTS: 24,
  ADMIN_FORGET_GROUP: 25,
  /** Delay server: list its dead letters (due messages a broker refused for good). */
  ADMIN_DELAY_DLQ_LIST: 26,
  /** Delay server: schedule dead letters again. */
  ADMIN_DELAY_DLQ_REDRIVE: 27,
  /** Broker and delay server: message query, lifecycle trace, per-minute counts (JSON; query.ts). */
  ADMIN_QUERY: 28,
  /** Delay server: messages stored and not yet delivered, per schedule bucket (the web console). */
  ADMIN_DELAY_PENDING: 29,

  /** Slave -> master: the next bytes of one of the master's logs (replication.ts). */
  REPL_FETCH: 50,
  /** Slave -> master: the master's latest store checkpoint (replication.ts). */
  REPL_CHECKPOINT: 51,
  /** Delay slave -> master: the derived files of its last checkpoint (src/delay/replication/wire.ts). */
  DELAY_REPL_MANIFEST: 52,
  /** Delay slave -> master: bytes of one derived file (schedule, dispatch, dead-letter log). */
  DELAY_REPL_FILE: 53,
  /** Delay slave -> master: cancels after a sequence (acknowledges those before it). */
  DELAY_REPL_CANCELS: 54,
} as const

export type RequestCodeName = keyof typeof RequestCode
export type RequestCodeValue = (typeof RequestCode)[RequestCodeName]

const NAMES = new Map<number, RequestCodeName>(
  (Object.entries(RequestCode) as [RequestCodeName, number][]).map(([k, v]) => [v, k]),
)

export function requestCodeName(code: number): RequestCodeName | undefined {
  return NAMES.get(code)
}
