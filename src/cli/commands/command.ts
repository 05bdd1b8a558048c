/** One `qmq <name>` command. `run` resolves to the process exit code. */
export interface Command {
  name: string
  summary: string
  help(): string
  run(argv: string[]): Promise<number>
}
