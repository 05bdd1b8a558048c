/** One `qmq <name>` command. `run` resolves to the process exit code. */
export interface Command {
  name: string
  summary: string
  help(): string
  run(argv: string[]): Promise<number>
  /** The service's own QMQ_<SERVICE>_* environment variables (checked for typos by main). */
  envNames?(): readonly string[]
}
