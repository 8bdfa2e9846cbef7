// How statuses, durations and times read on screen.

import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { TaskStatus } from "./gen/resilienttask/v1/task_pb";

export const STATUS_LABELS: Record<TaskStatus, string> = {
  [TaskStatus.UNSPECIFIED]: "Unknown",
  [TaskStatus.QUEUED]: "Queued",
  [TaskStatus.RUNNING]: "Running",
  [TaskStatus.CANCELLING]: "Cancelling",
  [TaskStatus.SUCCEEDED]: "Succeeded",
  [TaskStatus.FAILED]: "Failed",
  [TaskStatus.CANCELLED]: "Cancelled",
  [TaskStatus.TIMED_OUT]: "Timed out",
  [TaskStatus.SCHEDULED]: "Scheduled",
};

/** The enum name without its prefix (RUNNING, TIMED_OUT): stable hooks for styles and tests. */
export function statusName(status: TaskStatus): string {
  return TaskStatus[status] ?? "UNSPECIFIED";
}

export function ms(ts: Timestamp | undefined): number | null {
  return ts ? timestampMs(ts) : null;
}

/** 850ms, 12.3s, 4m 05s, 2h 07m. */
export function duration(millis: number): string {
  if (millis < 1000) return `${Math.max(0, Math.round(millis))}ms`;
  const s = millis / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const whole = Math.floor(s);
  if (whole < 3600) return `${Math.floor(whole / 60)}m ${String(whole % 60).padStart(2, "0")}s`;
  return `${Math.floor(whole / 3600)}h ${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")}m`;
}

/** "just now", "12s ago", "3m ago". */
export function ago(millis: number, now: number): string {
  const s = Math.max(0, Math.floor((now - millis) / 1000));
  if (s < 2) return "just now";
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

const TIME = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hourCycle: "h23",
});

export function timeOfDay(millis: number): string {
  return TIME.format(millis);
}

/** "in 12s", "in 3m", "in 2h" for a time ahead; "due" once it passed. */
export function until(millis: number, now: number): string {
  if (millis <= now) return "due";
  const s = Math.ceil((millis - now) / 1000);
  if (s < 60) return `in ${s}s`;
  if (s < 3600) return `in ${Math.floor(s / 60)}m`;
  if (s < 86400) return `in ${Math.floor(s / 3600)}h`;
  return `in ${Math.floor(s / 86400)}d`;
}
