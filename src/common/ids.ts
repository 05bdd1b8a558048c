import hyperid from 'hyperid'

/**
 * Message ids: hyperid, URL-safe. A process-wide generator: a UUID prefix fixed at start plus a
 * counter, so ids are unique across processes and cheap (no syscall, no randomness per id).
 * An id is at most 40 ASCII bytes, well under MAX_ID_BYTES.
 */
const generate = hyperid({ urlSafe: true })

export function newMessageId(): string {
  return generate()
}
