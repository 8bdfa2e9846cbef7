// The recent past of the counts the WatchTasks stream carries: tasks finished per second by outcome and the
// queue depth, binned by second over the last few minutes. Derived from the stats every event already brings,
// so the charts cost no request. Plain state: no DOM, no clock of its own, so it is unit-tested.

import type { TaskStats } from "./gen/resilienttask/v1/task_pb";

export const OUTCOMES = ["succeeded", "failed", "cancelled", "timedOut"] as const;
export type Outcome = (typeof OUTCOMES)[number];

export const BIN_MS = 1000;
/** Three minutes of one-second bins: bars a few pixels wide on a laptop screen. */
export const WINDOW_BINS = 180;

export interface Bin {
  /** Start of the bin, in ms since the epoch. */
  t: number;
  /** Tasks that reached each outcome during the bin. */
  finished: Record<Outcome, number>;
  /** Tasks queued and running at the end of the bin (the last counts seen, carried forward). */
  queued: number;
  running: number;
}

interface Counts {
  finished: Record<Outcome, number>;
  queued: number;
  running: number;
}

function counts(stats: TaskStats): Counts {
  return {
    finished: {
      succeeded: Number(stats.succeeded),
      failed: Number(stats.failed),
      cancelled: Number(stats.cancelled),
      timedOut: Number(stats.timedOut),
    },
    queued: Number(stats.queued),
    running: Number(stats.running),
  };
}

function zero(): Record<Outcome, number> {
  return { succeeded: 0, failed: 0, cancelled: 0, timedOut: 0 };
}

export class Trend {
  private last: Counts | null = null;
  // Bin index (t / BIN_MS) → what happened in it; only bins that saw a change are kept.
  private bins = new Map<number, Bin>();

  /**
   * Take the stats the stream carried at `atMs`. The first stats are the baseline (what finished before the
   * page opened is history, not throughput). A count that falls (history cleared, a failed task retried)
   * adds nothing: only finishes are plotted.
   */
  observe(stats: TaskStats, atMs: number): void {
    const now = counts(stats);
    const index = Math.floor(atMs / BIN_MS);
    const bin = this.bins.get(index) ?? { t: index * BIN_MS, finished: zero(), queued: 0, running: 0 };
    if (this.last) {
      for (const outcome of OUTCOMES) bin.finished[outcome] += Math.max(0, now.finished[outcome] - this.last.finished[outcome]);
    }
    bin.queued = now.queued;
    bin.running = now.running;
    this.bins.set(index, bin);
    this.last = now;
    this.forget(index - WINDOW_BINS);
  }

  /** The WINDOW_BINS bins up to and including the one holding `nowMs`, oldest first, empty ones filled in. */
  series(nowMs: number): Bin[] {
    const end = Math.floor(nowMs / BIN_MS);
    const start = end - WINDOW_BINS + 1;
    this.forget(start);
    // Depths before the first kept bin are unknown until something was seen; after it, carried forward.
    let queued = 0;
    let running = 0;
    let newestBefore = -Infinity;
    for (const [index, bin] of this.bins) {
      if (index < start && index > newestBefore) {
        newestBefore = index;
        queued = bin.queued;
        running = bin.running;
      }
    }
    const out: Bin[] = [];
    for (let index = start; index <= end; index++) {
      const held = this.bins.get(index);
      if (held) {
        queued = held.queued;
        running = held.running;
      }
      out.push({ t: index * BIN_MS, finished: held ? { ...held.finished } : zero(), queued, running });
    }
    return out;
  }

  // Drops bins older than `index`, keeping the newest of them: it holds the depth that is still current.
  private forget(index: number): void {
    let keep = -Infinity;
    for (const key of this.bins.keys()) if (key < index && key > keep) keep = key;
    for (const key of [...this.bins.keys()]) if (key < keep) this.bins.delete(key);
  }
}
