// The schedule form's rules and how a schedule reads on screen. The browser checks only what it can know
// for certain (a name, one timing, numbers that parse); the cron expression, the time zone and every bound
// are the server's to judge, and its refusal is shown next to the field it names.

import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  CatchupPolicy,
  type CreateScheduleRequestSchema,
  OverlapPolicy,
  type Schedule,
} from "./gen/resilienttask/v1/schedule_pb";
import { duration } from "./format";
import { durationMs, parseSeconds, pythonStrip } from "./validation";

export type CreateInit = MessageInitShape<typeof CreateScheduleRequestSchema>;

/** What the form holds, as typed; durations in seconds. */
export interface ScheduleForm {
  name: string;
  timing: "cron" | "interval";
  cron: string;
  timeZone: string;
  intervalS: string;
  taskName: string;
  kind: string;
  workloadS: string;
  maxRuntimeS: string;
  replicas: string;
  maxAttempts: string;
  overlap: string;
  catchup: string;
  catchupLimit: string;
  jitterS: string;
  paused: boolean;
}

export type ScheduleField =
  | "name"
  | "cron"
  | "time_zone"
  | "interval"
  | "task_name"
  | "kind"
  | "workload"
  | "max_runtime"
  | "replicas"
  | "max_attempts"
  | "overlap"
  | "catchup"
  | "catchup_limit"
  | "jitter";
export type ScheduleErrors = Partial<Record<ScheduleField, string>>;

export const OVERLAP_CHOICES: [OverlapPolicy, string][] = [
  [OverlapPolicy.SKIP, "Skip the slot"],
  [OverlapPolicy.ALLOW, "Allow overlap"],
  [OverlapPolicy.CANCEL_PREVIOUS, "Cancel the previous run"],
];
export const CATCHUP_CHOICES: [CatchupPolicy, string][] = [
  [CatchupPolicy.LATEST, "Run the latest once"],
  [CatchupPolicy.SKIP, "Skip missed slots"],
  [CatchupPolicy.ALL, "Run all (up to the limit)"],
];

function count(text: string): number | null {
  return /^\s*\d{1,6}\s*$/.test(text) ? Number(text) : null;
}

/** The CreateSchedule request, or what to fix first. */
export function scheduleRequest(form: ScheduleForm, requestId: string): { request: CreateInit } | { errors: ScheduleErrors } {
  const errors: ScheduleErrors = {};
  const name = pythonStrip(form.name);
  if (!name) errors.name = "is required";
  const seconds = (field: ScheduleField, text: string, required: boolean) => {
    if (!required && text.trim() === "") return undefined;
    const parsed = parseSeconds(text);
    if (!parsed) errors[field] = "must be a number of seconds";
    return parsed ?? undefined;
  };
  let timing: NonNullable<CreateInit["spec"]>["timing"];
  if (form.timing === "cron") {
    const expression = form.cron.trim();
    if (!expression) errors.cron = "is required";
    timing = { case: "cron", value: { expression, timeZone: form.timeZone.trim() } };
  } else {
    const interval = seconds("interval", form.intervalS, true);
    timing = interval ? { case: "interval", value: interval } : undefined;
  }
  const workload = seconds("workload", form.workloadS || "0", true);
  const maxRuntime = seconds("max_runtime", form.maxRuntimeS, false);
  const jitter = seconds("jitter", form.jitterS, false);
  const replicas = count(form.replicas || "1");
  if (replicas === null) errors.replicas = "must be a whole number";
  const maxAttempts = form.maxAttempts.trim() === "" ? 0 : count(form.maxAttempts);
  if (maxAttempts === null) errors.max_attempts = "must be a whole number";
  const catchupLimit = form.catchupLimit.trim() === "" ? 0 : count(form.catchupLimit);
  if (catchupLimit === null) errors.catchup_limit = "must be a whole number";
  if (Object.keys(errors).length > 0) return { errors };
  return {
    request: {
      spec: {
        name,
        timing,
        task: {
          name: pythonStrip(form.taskName) || name,
          kind: form.kind,
          workload,
          maxRuntime,
          replicas: replicas ?? 1,
          maxAttempts: maxAttempts ?? 0,
        },
        overlap: Number(form.overlap) as OverlapPolicy,
        catchup: Number(form.catchup) as CatchupPolicy,
        catchupLimit: catchupLimit ?? 0,
        jitter,
      },
      paused: form.paused,
      requestId,
    },
  };
}

/** The form control a server refusal names: "spec.cron.expression" → cron, "spec.task.name" → task_name. */
export function fieldFor(path: string | null): ScheduleField | null {
  if (!path) return null;
  const parts = path.replace(/^spec\./, "").split(".");
  const last = parts[parts.length - 1];
  if (parts[0] === "task") return last === "name" ? "task_name" : (last as ScheduleField);
  if (parts[0] === "cron") return last === "time_zone" ? "time_zone" : "cron";
  if (last === "expression") return "cron";
  const known: ScheduleField[] = ["name", "interval", "overlap", "catchup", "catchup_limit", "jitter", "time_zone"];
  return known.includes(last as ScheduleField) ? (last as ScheduleField) : null;
}

// "cron 0 3 * * * (Europe/Paris)" or "every 30.0s".
export function timingText(schedule: Schedule): string {
  const timing = schedule.spec?.timing;
  if (timing?.case === "cron") return `cron ${timing.value.expression} (${timing.value.timeZone || "UTC"})`;
  if (timing?.case === "interval") return `every ${duration(durationMs(timing.value))}`;
  return "—";
}
