// Follows one task's handler logs over WatchTaskLogs: the stored lines, then new ones as they are stored,
// until the task finishes. A broken stream is reopened after the last sequence received, so no line is
// shown twice and none is missed (lines the server dropped to stay within its bounds are reported).

import { Code, ConnectError } from "@connectrpc/connect";
import type { SchedulerClient } from "./api";
import type { LogLine } from "./gen/resilienttask/v1/scheduler_pb";

export type LogState = "connecting" | "live" | "reconnecting" | "finished" | "unavailable";

export interface LogHandlers {
  /** New lines, oldest first; `dropped` lines were lost (server bounds) just before them. */
  lines(lines: LogLine[], dropped: number): void;
  state(state: LogState, detail?: string): void;
}

const FIRST_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 5_000;

export class LogFollower {
  private after = 0n;
  private stopped = false;
  private controller: AbortController | null = null;
  private timer = 0;

  constructor(
    private readonly scheduler: SchedulerClient,
    private readonly taskId: string,
    private readonly on: LogHandlers,
  ) {}

  start(): void {
    void this.run();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.controller?.abort();
  }

  private async run(): Promise<void> {
    let failures = 0;
    this.on.state("connecting");
    while (!this.stopped) {
      const controller = new AbortController();
      this.controller = controller;
      try {
        const stream = this.scheduler.watchTaskLogs({ taskId: this.taskId, afterSequence: this.after, follow: true }, { signal: controller.signal });
        for await (const message of stream) {
          if (this.stopped) return;
          failures = 0;
          this.on.state("live");
          const fresh = message.lines.filter((line) => line.sequence > this.after);
          if (fresh.length) this.after = fresh[fresh.length - 1].sequence;
          if (fresh.length || message.dropped > 0n) this.on.lines(fresh, Number(message.dropped));
          if (message.finished) {
            this.on.state("finished");
            return;
          }
        }
      } catch (err) {
        if (this.stopped) return;
        const code = ConnectError.from(err).code;
        if (code === Code.NotFound || code === Code.Unimplemented || code === Code.Unauthenticated || code === Code.PermissionDenied) {
          this.on.state("unavailable", code === Code.NotFound ? "the task no longer exists" : "logs are not available");
          return;
        }
      }
      if (this.stopped) return;
      // The stream ended without saying the task finished (a gateway went away): resume where it stopped.
      failures++;
      this.on.state("reconnecting");
      const delay = Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** (failures - 1));
      await new Promise<void>((resolve) => (this.timer = window.setTimeout(resolve, delay)));
    }
  }
}
