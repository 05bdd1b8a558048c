import type { HistoryAnswer, ListAnswer, MessageAnswer, QueryRequest } from '../../common/protocol/query'
import type { QmqError } from '../../common/errors'
import type { BacklogEntry } from '../../common/protocol/admin'
import type { StartPositionValue } from '../../common/protocol/commands'
import type { RecordHeader } from '../../common/record'
import type { ReadHold } from './read-pool'

/**
 * The broker's storage contract: what the broker server (src/broker/server) may ask of the store.
 * The store owns durability and every piece of consumer state (cursors, pull logs, acks, leases,
 * redelivery times, delivery counts, dead letters); the server owns sockets, long polls and metrics.
 * Nothing here touches the network.
 */

/**
 * A record as received: the verified bytes (stored as they are) and its routing header. The store
 * writes `bytes` without copying and keeps them to serve pulls of recent messages: the caller must not
 * modify them after `append()` (the server's are slices of socket reads, which are never reused).
 */
export interface AppendInput {
  bytes: Buffer
  header: RecordHeader
}

export interface AppendResult {
  /** The subject's sequence of the stored record (of the first copy, for a duplicate). */
  sequence: number
  /** True when the id was already stored within the dedupe window: nothing new was written. */
  duplicate: boolean
  /**
   * Message-log offset the store must hold durably for this record to be kept: the end of the record
   * (of the batch it was answered in, for a duplicate). A SEND under `sync` replication waits until a
   * slave holds its records' largest `end`, not the log's end (which later SENDs move on).
   */
  end: number
}

/** One message handed to a consumer. */
export interface StoredMessage {
  subject: string
  sequence: number
  /** 1 on the first delivery to this group; kept across restarts. */
  deliveryCount: number
  /** The stored record bytes, to be sent as they are. */
  record: Buffer
}

export interface PullOptions {
  subject: string
  group: string
  consumerId: string
  maxMessages: number
  /** Soft cap on record bytes; at least one message is returned when any is available. */
  maxBytes: number
  /** Every consumer id gets every message (own cursor per consumerId); no redelivery between consumers. */
  broadcast: boolean
  /** Acked on delivery: never redelivered. */
  atMostOnce: boolean
  /** Tag filter; empty = all messages. Non-matching messages are skipped (acked) for this group. */
  tags: readonly string[]
  tagsAll: boolean
  /** Where a group that has no cursor yet starts. */
  start: StartPositionValue
  startTime: number
  /**
   * True on a consumer's first pull after it (re)connects: messages it still holds (unacked, lease
   * not expired) are handed back first, before anything new.
   */
  resumeHeld?: boolean
  /**
   * Owner of the read-pool buffers the answer's records view (read-pool.ts); the caller releases it
   * once the records are no longer read (the answer written). Without it, records are in fresh memory.
   */
  hold?: ReadHold
}

export interface NackOptions {
  /** Redeliver after this long; undefined = exponential backoff with jitter from the delivery count. */
  retryAfterMs?: number
  /** Dead-letter now, whatever the delivery count. */
  deadLetter?: boolean
}

/** Backlog figures of a (subject, group): the same shape as the ADMIN_BACKLOG answer carries. */
export type BacklogInfo = BacklogEntry

export interface DeadLetter {
  subject: string
  group: string
  sequence: number
  deliveryCount: number
  /** When it was dead-lettered (ms since epoch). */
  deadAt: number
  record: Buffer
}

export type CursorPosition = { kind: 'earliest' } | { kind: 'latest' } | { kind: 'timestamp'; timeMs: number }

/** What recovery found and did, reported once on open (and logged by the store). */
export interface RecoveryReport {
  /**
   * The checkpoint recovery started from: the current one, the previous one (the current one was
   * unreadable, or missing after a crash between the two renames), or none (a new store).
   */
  checkpoint: 'current' | 'previous' | 'none'
  /** Why the checkpoints not used could not be (empty when the current one was used). */
  checkpointProblems: string[]
  /**
   * Message-log bytes dropped from a torn or corrupt tail (damage after which nothing valid follows
   * in its segment), per segment file: position in the file, and logical offset.
   */
  truncated: { file: string; offset: number; logOffset: number; droppedBytes: number; reason: string }[]
  /**
   * Damaged message-log ranges stepped over: recovery resynchronised on the next valid frame and kept
   * everything after it. The bytes stay in the file; the records in them are lost.
   */
  skipped: { file: string; offset: number; logOffset: number; bytes: number; reason: string }[]
  /**
   * Sequences whose message was in a damaged range (skipped, or cut off before other records of the
   * subject): they read as holes. Ranges, per subject.
   */
  lostMessages: { subject: string; first: number; last: number }[]
  /** Consume logs rebuilt (missing or short) from the message log. */
  rebuiltConsumeLogs: string[]
  /**
   * Consume-log entries found inconsistent with the message log (garbage, or pointing at the wrong
   * record) and rebuilt from it: sequences [first, last] of a subject; `holes` of them had no record
   * left in the message log.
   */
  repairedConsumeLogs: { subject: string; first: number; last: number; holes: number }[]
  /**
   * Message-log offset the consume-log replay started at: the checkpoint's, or the log's start when a
   * consume log was missing or short (or there was no checkpoint) and had to be rebuilt.
   */
  replayedFrom: number
  /** Records replayed from the message log after the last checkpoint. */
  replayedRecords: number
  /** Action-log entries replayed after the last checkpoint. */
  replayedActions: number
  durationMs: number
}

export type AvailableListener = (subject: string) => void

export interface HeartbeatSubscription {
  subject: string
  group: string
  /** The held messages to extend; undefined = every message the consumer holds in this group. */
  sequences?: readonly number[] | undefined
}

export interface HeartbeatResult {
  /** Messages whose lease was extended. */
  extended: number
  /** The store's lease: a handed-out message not extended for this long is redelivered. */
  leaseMs: number
}

/** Why a store refuses writes until it is reopened (a log failed closed, docs/broker.md). */
export interface StoreFailure {
  /** The log that failed closed. */
  log: 'message' | 'action'
  code: string
  message: string
}

export interface MessageStore {
  /**
   * Set once a log failed closed (writes refused until the store is reopened): the broker's /health
   * then answers 503 with it. Optional: a store without it is never reported failed.
   */
  failure?(): StoreFailure | undefined
  /** Recovers from disk; must be called (and awaited) before anything else. */
  open(): Promise<RecoveryReport>
  /**
   * Message query, lifecycle trace and per-minute counts (ADMIN_QUERY, docs/query.md); `server` is
   * the broker group's name, reported in the answers. Optional: a store without it answers nothing.
   */
  query?(req: QueryRequest, server: string): Promise<MessageAnswer | ListAnswer | HistoryAnswer>
  /** Flushes, writes a checkpoint and closes files. Later calls fail with QMQ_ERR_STORE_CLOSED. */
  close(): Promise<void>

  /**
   * Appends a batch. Resolves once the records are durable under the flush policy ('sync': after a
   * shared fdatasync; 'async': after the write), one result per input in order. Rejects as a whole
   * with a retriable QmqError (QMQ_ERR_DISK_FULL, QMQ_ERR_STORE_IO) when nothing could be stored.
   */
  append(records: readonly AppendInput[]): Promise<AppendResult[]>

  /**
   * Hands the next messages to a consumer without waiting: held messages first when resumeHeld,
   * then redeliveries that are due, then new messages from the group's cursor. Records the
   * hand-out in the action log. Never returns a message a crash could still lose.
   */
  pull(options: PullOptions): Promise<StoredMessage[]>

  /** Acks held messages in any order; returns how many were held by this consumer. */
  ack(
    subject: string,
    group: string,
    consumerId: string,
    sequences: readonly number[],
    broadcast?: boolean,
  ): Promise<number>

  /** Gives messages back for redelivery (or dead letter); returns how many were held. */
  nack(
    subject: string,
    group: string,
    consumerId: string,
    sequences: readonly number[],
    options?: NackOptions,
  ): Promise<number>

  /**
   * The consumer is still there: extends the lease deadlines of exactly the messages listed per
   * subscription (those it still holds), or of everything it holds in a subscription listed without
   * `sequences` (clients from before per-message leases). Pulls and acks do not extend anything.
   */
  heartbeat(consumerId: string, subscriptions: readonly HeartbeatSubscription[]): HeartbeatResult

  /** Hands held messages back to their group at once (their answer could not be delivered). */
  release(subject: string, group: string, consumerId: string, sequences: readonly number[]): number

  /**
   * Called when a subject may have something new to pull: appends made durable, a redelivery that
   * came due, a lease that expired. Long polls wait on this. Returns an unsubscribe function.
   */
  onAvailable(listener: AvailableListener): () => void

  subjects(): string[]
  /** Backlog of every (subject, group), or of one subject / one group. */
  backlog(subject?: string, group?: string): BacklogInfo[]
  /** Operator reset of a group's cursor. In-flight messages stay in flight. */
  resetCursor(subject: string, group: string, position: CursorPosition): Promise<void>

  listDeadLetters(
    subject: string,
    group: string,
    options?: { limit?: number; afterSequence?: number },
  ): Promise<DeadLetter[]>
  /** Makes dead letters deliverable to their group again (same message id, delivery count reset). */
  redriveDeadLetters(subject: string, group: string, sequences?: readonly number[]): Promise<number>
  /**
   * Removes a consumer group of a subject with all its state (cursor, messages in flight, retries,
   * dead letters, broadcast cursors): for groups nobody uses any more. Refused with
   * QMQ_ERR_GROUP_ACTIVE while a consumer of the group holds a lease. False when there is no such group.
   */
  forgetGroup(subject: string, group: string): Promise<boolean>
}

export type { QmqError }
