export * from './types'
export {
  createMessageStore,
  FileMessageStore,
  type FileMessageStoreOptions,
  openMessageStore,
} from './file-message-store'
export { type MessageStoreOptions, messageStoreOptionsSchema, resolveMessageStoreOptions } from './options'
export {
  type ScanResult,
  type SegmentInfo,
  SegmentLog,
  type SegmentLogOptions,
  type Truncation,
} from './segment-log'
export { type FsIo, nodeFsIo } from './fs-io'
