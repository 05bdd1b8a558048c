export * from './buffer'
export * from './codes'
export * from './commands'
export * from './frame'
