/**
 * The one table of qmq error codes, shared by every server and the SDK.
 *
 * Rules (see docs/errors.md):
 * - `status` is the numeric code carried on the wire (frame header `status`, HTTP JSON `status`).
 * - Codes are append-only: a code is never renumbered, renamed or reused, even once retired.
 *   A retired code stays here with `retired: true`.
 * - Ranges by area, so parts can grow without colliding:
 *     1-99 common / protocol, 100-149 broker store, 150-199 broker server,
 *     200-249 metaserver, 250-299 client SDK, 300-349 delay server, 350-399 CLI.
 * - `retriable` means the same request may succeed if sent again later or to another group.
 * - `httpStatus` is what the metaserver (and any HTTP surface) answers with.
 */
export interface ErrorCodeSpec {
  readonly status: number
  readonly retriable: boolean
  readonly httpStatus: number
  readonly message: string
  readonly retired?: boolean
}

export const ERROR_CODES = {
  // ---- 1-99: common and protocol ----
  QMQ_ERR_INTERNAL: { status: 1, retriable: false, httpStatus: 500, message: 'Internal error' },
  QMQ_ERR_UNKNOWN_REQUEST: { status: 2, retriable: false, httpStatus: 400, message: 'Unknown request code' },
  QMQ_ERR_BAD_MAGIC: {
    status: 3,
    retriable: false,
    httpStatus: 400,
    message: 'Frame does not start with the qmq magic number',
  },
  QMQ_ERR_UNSUPPORTED_VERSION: {
    status: 4,
    retriable: false,
    httpStatus: 400,
    message: 'Unsupported protocol version',
  },
  QMQ_ERR_FRAME_TOO_LARGE: {
    status: 5,
    retriable: false,
    httpStatus: 413,
    message: 'Frame is larger than the allowed maximum',
  },
  QMQ_ERR_FRAME_MALFORMED: { status: 6, retriable: false, httpStatus: 400, message: 'Frame is malformed' },
  QMQ_ERR_PAYLOAD_MALFORMED: {
    status: 7,
    retriable: false,
    httpStatus: 400,
    message: 'Request or response payload is malformed',
  },
  QMQ_ERR_RECORD_TRUNCATED: {
    status: 8,
    retriable: false,
    httpStatus: 400,
    message: 'Message record is truncated',
  },
  QMQ_ERR_RECORD_MALFORMED: {
    status: 9,
    retriable: false,
    httpStatus: 400,
    message: 'Message record is malformed',
  },
  QMQ_ERR_CRC_MISMATCH: { status: 10, retriable: false, httpStatus: 400, message: 'CRC32C check failed' },
  QMQ_ERR_UNSUPPORTED_RECORD_VERSION: {
    status: 11,
    retriable: false,
    httpStatus: 400,
    message: 'Unsupported message record version',
  },
  QMQ_ERR_MESSAGE_TOO_LARGE: {
    status: 12,
    retriable: false,
    httpStatus: 413,
    message: 'Message is larger than the allowed maximum',
  },
  QMQ_ERR_SUBJECT_INVALID: {
    status: 13,
    retriable: false,
    httpStatus: 400,
    message: 'Subject is empty, too long or has forbidden characters',
  },
  QMQ_ERR_MESSAGE_ID_INVALID: {
    status: 14,
    retriable: false,
    httpStatus: 400,
    message: 'Message id is empty or too long',
  },
  QMQ_ERR_TOO_MANY_TAGS: { status: 15, retriable: false, httpStatus: 400, message: 'Too many tags' },
  QMQ_ERR_TAG_INVALID: { status: 16, retriable: false, httpStatus: 400, message: 'Tag is empty or too long' },
  QMQ_ERR_TOO_MANY_PROPERTIES: {
    status: 17,
    retriable: false,
    httpStatus: 400,
    message: 'Too many properties',
  },
  QMQ_ERR_PROPERTY_INVALID: {
    status: 18,
    retriable: false,
    httpStatus: 400,
    message: 'Property key is empty or too long',
  },
  QMQ_ERR_INVALID_ARGUMENT: { status: 19, retriable: false, httpStatus: 400, message: 'Invalid argument' },
  QMQ_ERR_CONFIG_INVALID: { status: 20, retriable: false, httpStatus: 400, message: 'Invalid configuration' },
  QMQ_ERR_TIMEOUT: { status: 21, retriable: true, httpStatus: 504, message: 'Request timed out' },
  QMQ_ERR_CONNECTION: { status: 22, retriable: true, httpStatus: 502, message: 'Could not connect' },
  QMQ_ERR_CONNECTION_CLOSED: { status: 23, retriable: true, httpStatus: 502, message: 'Connection closed' },
  QMQ_ERR_BUSY: { status: 24, retriable: true, httpStatus: 503, message: 'Server is busy; try again later' },
  QMQ_ERR_SHUTTING_DOWN: { status: 25, retriable: true, httpStatus: 503, message: 'Server is shutting down' },
  QMQ_ERR_UNAUTHORIZED: { status: 26, retriable: false, httpStatus: 401, message: 'Missing or wrong token' },
  QMQ_ERR_NOT_FOUND: { status: 27, retriable: false, httpStatus: 404, message: 'Not found' },
  QMQ_ERR_GROUP_INVALID: {
    status: 28,
    retriable: false,
    httpStatus: 400,
    message: 'Consumer group or broker group name is invalid',
  },
  QMQ_ERR_CONSUMER_ID_INVALID: {
    status: 29,
    retriable: false,
    httpStatus: 400,
    message: 'Consumer id is empty or too long',
  },
  QMQ_ERR_SCHEDULE_INVALID: {
    status: 30,
    retriable: false,
    httpStatus: 400,
    message: 'Schedule time is invalid',
  },
  QMQ_ERR_DELAY_TOO_FAR: {
    status: 31,
    retriable: false,
    httpStatus: 400,
    message: 'Schedule time is beyond the delay horizon',
  },
  QMQ_ERR_TOO_MANY_IN_FLIGHT: {
    status: 32,
    retriable: true,
    httpStatus: 429,
    message: 'Too many requests in flight',
  },
  QMQ_ERR_FRAME_TIMEOUT: {
    status: 45,
    retriable: true,
    httpStatus: 408,
    message: 'Frame did not complete within the frame deadline',
  },
  QMQ_ERR_FRAME_BUDGET: {
    status: 46,
    retriable: true,
    httpStatus: 503,
    message: 'Server-wide budget for partial frames exhausted',
  },
  QMQ_ERR_FORBIDDEN: {
    status: 60,
    retriable: false,
    httpStatus: 403,
    message: 'The application is not allowed to do this',
  },

  // ---- 100-149: broker store ----
  QMQ_ERR_STORE_IO: { status: 100, retriable: true, httpStatus: 503, message: 'Storage write failed' },
  QMQ_ERR_DISK_FULL: {
    status: 101,
    retriable: true,
    httpStatus: 507,
    message: 'No space left on the storage device',
  },
  QMQ_ERR_STORE_CORRUPT: {
    status: 102,
    retriable: false,
    httpStatus: 500,
    message: 'Stored data is corrupt',
  },
  QMQ_ERR_STORE_CLOSED: { status: 103, retriable: true, httpStatus: 503, message: 'Store is closed' },
  QMQ_ERR_GROUP_ACTIVE: {
    status: 104,
    retriable: true,
    httpStatus: 409,
    message: 'Consumer group has active consumers',
  },
  QMQ_ERR_INDEX_BUILDING: {
    status: 105,
    retriable: true,
    httpStatus: 503,
    message: 'The message index is being built (after a promotion or a lost index); retry the query',
  },
  QMQ_ERR_STORE_FAILED: {
    status: 120,
    retriable: true,
    httpStatus: 503,
    message: 'Store refuses writes after a write it could not undo; reopen it',
  },

  // ---- 150-199: broker server ----
  QMQ_ERR_READ_ONLY: {
    status: 150,
    retriable: true,
    httpStatus: 503,
    message: 'Broker group is read-only for producers',
  },
  QMQ_ERR_UNKNOWN_MESSAGE: {
    status: 151,
    retriable: false,
    httpStatus: 404,
    message: 'Message is not held by this consumer',
  },

  // ---- 200-249: metaserver ----
  QMQ_ERR_NO_ROUTE: {
    status: 200,
    retriable: true,
    httpStatus: 503,
    message: 'No available group serves this subject',
  },
  QMQ_ERR_METASERVER_UNAVAILABLE: {
    status: 201,
    retriable: true,
    httpStatus: 503,
    message: 'Metaserver is unavailable',
  },
  QMQ_ERR_JSON_INVALID: {
    status: 202,
    retriable: false,
    httpStatus: 400,
    message: 'Request body is not valid JSON',
  },
  QMQ_ERR_BODY_TOO_LARGE: {
    status: 203,
    retriable: false,
    httpStatus: 413,
    message: 'Request body is too large',
  },
  QMQ_ERR_GROUP_CONFLICT: {
    status: 204,
    retriable: false,
    httpStatus: 409,
    message: 'Group name is already used by a group of another kind',
  },
  QMQ_ERR_METHOD_NOT_ALLOWED: {
    status: 205,
    retriable: false,
    httpStatus: 405,
    message: 'HTTP method not allowed on this path',
  },
  QMQ_ERR_METASERVER_STORE: {
    status: 206,
    retriable: true,
    httpStatus: 503,
    message: 'Metaserver store failed',
  },
  QMQ_ERR_UNSUPPORTED_MEDIA_TYPE: {
    status: 207,
    retriable: false,
    httpStatus: 415,
    message: 'Request body must be application/json',
  },
  QMQ_ERR_STALE_REPORT: {
    status: 208,
    retriable: false,
    httpStatus: 409,
    message: 'Heartbeat report is older than the one the metaserver holds',
  },

  // ---- 250-299: client SDK ----
  QMQ_ERR_SEND_QUEUE_FULL: { status: 250, retriable: true, httpStatus: 503, message: 'Send queue is full' },
  QMQ_ERR_CLIENT_CLOSED: { status: 251, retriable: false, httpStatus: 503, message: 'Client is closed' },
  QMQ_ERR_CIRCUIT_OPEN: {
    status: 252,
    retriable: true,
    httpStatus: 503,
    message: 'Circuit breaker is open for this group',
  },
  QMQ_ERR_NON_RETRIABLE: {
    status: 253,
    retriable: false,
    httpStatus: 400,
    message: 'Handler failed with a non-retriable error',
  },
  QMQ_ERR_NOT_INITIALIZED: {
    status: 254,
    retriable: false,
    httpStatus: 500,
    message: 'Client is not initialized; call init() first',
  },
  // 270-289: transactional messages and idempotent consumers (src/client/tx)
  QMQ_ERR_TX_UNKNOWN: {
    status: 270,
    retriable: false,
    httpStatus: 400,
    message: 'Transaction was not started or attached through this transaction provider',
  },
  QMQ_ERR_TX_STATE: {
    status: 271,
    retriable: false,
    httpStatus: 409,
    message: 'Transaction is not open (already committed or rolled back)',
  },
  QMQ_ERR_OUTBOX_WRITE: {
    status: 272,
    retriable: true,
    httpStatus: 503,
    message: 'Writing the message to the outbox table failed',
  },
  QMQ_ERR_ABORTED: {
    status: 290,
    retriable: false,
    httpStatus: 499,
    message: 'Operation aborted by its AbortSignal',
  },

  // ---- 300-349: delay server ----
  QMQ_ERR_NOT_DELAYED: {
    status: 300,
    retriable: false,
    httpStatus: 400,
    message: 'Message sent to a delay server has no schedule time',
  },

  // ---- 350-399: CLI ----
  // 400-449: replication (src/broker/replication)
  QMQ_ERR_NOT_MASTER: {
    status: 400,
    retriable: true,
    httpStatus: 503,
    message: 'This server is a slave of its group: it serves no producer or consumer',
  },
  QMQ_ERR_NO_IN_SYNC_SLAVE: {
    status: 401,
    retriable: true,
    httpStatus: 503,
    message: 'No slave of the group is in sync: writes are refused under sync replication',
  },
  QMQ_ERR_REPLICATION_TIMEOUT: {
    status: 402,
    retriable: true,
    httpStatus: 504,
    message: 'No in-sync slave confirmed the records in time; resend them (same ids)',
  },
  QMQ_ERR_USAGE: { status: 350, retriable: false, httpStatus: 400, message: 'Wrong command-line usage' },
  QMQ_ERR_PORT_IN_USE: {
    status: 351,
    retriable: false,
    httpStatus: 409,
    message: 'A port a service should listen on is in use',
  },
  QMQ_ERR_DEPENDENCY_MISSING: {
    status: 352,
    retriable: false,
    httpStatus: 500,
    message: 'An optional dependency this feature needs is not installed',
  },
} as const satisfies Record<string, ErrorCodeSpec>

export type ErrorCode = keyof typeof ERROR_CODES

const BY_STATUS = new Map<number, ErrorCode>()
for (const [code, spec] of Object.entries(ERROR_CODES) as [ErrorCode, ErrorCodeSpec][]) {
  BY_STATUS.set(spec.status, code)
}

/** The code for a wire status, or undefined if this build does not know it (a newer peer). */
export function codeForStatus(status: number): ErrorCode | undefined {
  return BY_STATUS.get(status)
}

export function isErrorCode(value: string): value is ErrorCode {
  return Object.hasOwn(ERROR_CODES, value)
}
