// How a task's place in the queue reads on screen: its priority, its concurrency key, and what a queued
// task waits for beyond a free worker (the server's Task.wait_reason).

import { type Task, TaskStatus, WaitReason } from "./gen/resilienttask/v1/task_pb";

export interface WaitBadge {
  /** Short text for the badge. */
  text: string;
  /** The whole explanation, for a tooltip and screen readers. */
  detail: string;
  /** The enum name without its prefix (KIND_PAUSED, ...): a stable hook for styles and tests. */
  reason: string;
}

/** "3"; a task from before priorities existed (0) reads as the default the server gives it. */
export function priorityText(task: Pick<Task, "priority">): string {
  return String(task.priority || 3);
}

/** "At most 2 tasks with key customer-7 run at once", or "" without a key. */
export function concurrencyText(task: Pick<Task, "concurrencyKey" | "concurrencyLimit">): string {
  return task.concurrencyKey ? `At most ${task.concurrencyLimit} tasks with key ${task.concurrencyKey} run at once` : "";
}

/** The badge of a queued task the server holds back, or null when it waits for nothing but a worker. */
export function waitBadge(task: Pick<Task, "status" | "waitReason" | "concurrencyKey" | "concurrencyLimit" | "kind">): WaitBadge | null {
  if (task.status !== TaskStatus.QUEUED) return null;
  const reason = WaitReason[task.waitReason] ?? "UNSPECIFIED";
  switch (task.waitReason) {
    case WaitReason.CONCURRENCY_KEY:
      return {
        text: `waiting: key ${task.concurrencyKey} (${task.concurrencyLimit} running)`,
        detail: `Waiting: ${task.concurrencyLimit} of your tasks with key ${task.concurrencyKey} are running; it starts when one ends.`,
        reason,
      };
    case WaitReason.KIND_PAUSED:
      return { text: "kind paused", detail: `Waiting: an operator paused kind ${task.kind}; it starts when the kind is resumed.`, reason };
    case WaitReason.RATE_LIMIT:
      return { text: "rate limited", detail: `Waiting: kind ${task.kind} used its rate limit for this period.`, reason };
    case WaitReason.SLOT_SHARE:
      return { text: "waiting: share", detail: "Waiting: your tasks hold your fair share of the busy workers; others go first.", reason };
    default:
      return null;
  }
}
