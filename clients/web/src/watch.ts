// The one long-lived WatchTasks stream: reopened with the last resume token whenever it breaks,
// so a network drop or a gateway restart loses nothing. Nothing here polls.

import { Code, ConnectError } from "@connectrpc/connect";
import { isUnauthenticated, type SchedulerClient } from "./api";
import type { WatchTasksResponse } from "./gen/resilienttask/v1/scheduler_pb";

export type Connection = "connecting" | "live" | "reconnecting" | "offline";

// The server sends a heartbeat every 5 s on a quiet stream; three missed ones mean the stream is dead
// even if the socket never said so (a half-open connection).
const SILENCE_LIMIT_MS = 15_000;
const FIRST_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 5_000;
// After this many failed reconnects in a row the indicator says "offline" (it keeps trying).
const OFFLINE_AFTER_FAILURES = 3;

export interface WatchHandlers {
  message(message: WatchTasksResponse): void;
  state(connection: Connection): void;
  unauthenticated(): void;
}

export class TaskWatch {
  private resumeToken = "";
  private controller: AbortController | null = null;
  private stopped = false;
  private wake: (() => void) | null = null;

  constructor(
    private readonly scheduler: SchedulerClient,
    private readonly on: WatchHandlers,
  ) {}

  start(): void {
    window.addEventListener("online", this.nudge);
    void this.run();
  }

  stop(): void {
    this.stopped = true;
    window.removeEventListener("online", this.nudge);
    this.controller?.abort();
    this.nudge();
  }

  // The browser says the network is back: try now rather than at the end of the backoff.
  private readonly nudge = (): void => this.wake?.();

  private async run(): Promise<void> {
    let failures = 0;
    this.on.state("connecting");
    while (!this.stopped) {
      const controller = new AbortController();
      this.controller = controller;
      let silence = setTimeout(() => controller.abort(), SILENCE_LIMIT_MS);
      try {
        // Batches are unpacked by the feed; the message's token is that of its last event.
        const stream = this.scheduler.watchTasks(
          { resumeToken: this.resumeToken, acceptBatches: true },
          { signal: controller.signal },
        );
        for await (const message of stream) {
          clearTimeout(silence);
          silence = setTimeout(() => controller.abort(), SILENCE_LIMIT_MS);
          failures = 0;
          if (message.resumeToken) this.resumeToken = message.resumeToken;
          this.on.state("live");
          this.on.message(message);
        }
      } catch (err) {
        if (this.stopped) return;
        if (isUnauthenticated(err)) {
          this.on.unauthenticated();
          return;
        }
        // The token is not one the server can resume from: start again from a fresh snapshot.
        if (ConnectError.from(err).code === Code.InvalidArgument) this.resumeToken = "";
      } finally {
        clearTimeout(silence);
      }
      if (this.stopped) return;
      failures++;
      this.on.state(!navigator.onLine || failures > OFFLINE_AFTER_FAILURES ? "offline" : "reconnecting");
      await this.pause(failures);
    }
  }

  private pause(failures: number): Promise<void> {
    const base = Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** (failures - 1));
    const delay = base * (0.8 + Math.random() * 0.4);
    return new Promise((resolve) => {
      const timer = setTimeout(done, delay);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }
}
