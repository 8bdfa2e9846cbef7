// The submit form's rules: the same checks, limits and messages as the gateway's validation.submission,
// so a request the form lets through is one the server accepts.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { SubmitTaskRequestSchema } from "./gen/resilienttask/v1/scheduler_pb";
import { durationRangeMs, durationText, fieldLimits, maxChars, valueRange } from "./limits";

// Every bound is the one the contract declares (limits.ts reads it from the descriptors).
const SUBMIT = SubmitTaskRequestSchema;
export const MAX_NAME_CHARS = maxChars(SUBMIT, "name");
export const MAX_WORKLOAD_MS = durationRangeMs(SUBMIT, "workload").max;
export const { min: MIN_RUNTIME_MS, max: MAX_RUNTIME_MS } = durationRangeMs(SUBMIT, "max_runtime");
export const { min: MIN_REPLICAS, max: MAX_REPLICAS } = valueRange(SUBMIT, "replicas");
export const { min: MIN_ATTEMPTS, max: MAX_ATTEMPTS } = valueRange(SUBMIT, "max_attempts");
/** How long a task may be delayed. */
export const MAX_DELAY_MS = durationRangeMs(SUBMIT, "delay").max;
/** How far ahead a start time may lie, and how far in the past (it then starts now). */
export const MAX_AHEAD_MS = Number(fieldLimits(SUBMIT, "run_at").maxAheadMs);
export const RUN_AT_GRACE_MS = Number(fieldLimits(SUBMIT, "run_at").maxPastMs);
export const { min: MIN_PRIORITY, max: MAX_PRIORITY } = valueRange(SUBMIT, "priority");
/** What 0 (unset) means: a default, not a limit (SubmitTaskRequest.priority's comment). */
export const DEFAULT_PRIORITY = 3;
export const MAX_CONCURRENCY_KEY_CHARS = maxChars(SUBMIT, "concurrency_key");
export const { min: MIN_CONCURRENCY_LIMIT, max: MAX_CONCURRENCY_LIMIT } = valueRange(SUBMIT, "concurrency_limit");

/** What the form holds, as typed. Durations are in seconds, decimals allowed. */
export interface TaskForm {
  name: string;
  kind: string;
  workloadS: string;
  maxRuntimeS: string;
  replicas: string;
  maxAttempts: string;
  /** Optional start: a local date and time (as an <input type="datetime-local"> gives it), or a delay. */
  startAt?: string;
  startAfterS?: string;
  /** 1 (lowest) to 5 (most urgent); empty means the default, 3. */
  priority?: string;
  /** Optional: at most `concurrencyLimit` of the user's tasks with this key run at once. */
  concurrencyKey?: string;
  concurrencyLimit?: string;
}

export type Field =
  | "name"
  | "kind"
  | "workload"
  | "max_runtime"
  | "replicas"
  | "max_attempts"
  | "run_at"
  | "delay"
  | "priority"
  | "concurrency_key"
  | "concurrency_limit";
export type FieldErrors = Partial<Record<Field, string>>;
export type SubmitInit = MessageInitShape<typeof SubmitTaskRequestSchema>;

// Python's str.strip() removes exactly the characters for which str.isspace() is true.
const PY_SPACE = "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PY_STRIP = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, "gu");

export function pythonStrip(value: string): string {
  return value.replace(PY_STRIP, "");
}

// Python's str.isprintable() is false for the Unicode "Other" and "Separator" categories, except the ASCII space.
const PY_UNPRINTABLE = /(?! )[\p{C}\p{Z}]/u;

export function pythonPrintable(value: string): boolean {
  return !PY_UNPRINTABLE.test(value);
}

/** Characters as Python counts them (code points, not UTF-16 units). */
export function charCount(value: string): number {
  return [...value].length;
}

interface Duration {
  seconds: bigint;
  nanos: number;
}

/** A decimal number of seconds as an exact Duration (no float rounding), or null if it is not one. */
export function parseSeconds(text: string): Duration | null {
  const match = /^\s*(\d{0,12})(?:\.(\d{0,9}))?\s*$/.exec(text);
  if (!match || !/\d/.test(text)) return null;
  return { seconds: BigInt(match[1] || "0"), nanos: Number((match[2] ?? "").padEnd(9, "0")) };
}

/** Whole milliseconds, as the server counts them (nanos below a millisecond are dropped). */
export function durationMs(d: Duration): number {
  return Number(d.seconds) * 1000 + Math.floor(d.nanos / 1_000_000);
}

function wholeNumber(text: string): number | null {
  return /^\s*\d{1,6}\s*$/.test(text) ? Number(text) : null;
}

/** A local "YYYY-MM-DDTHH:MM[:SS]" as milliseconds since the epoch, or null. */
export function localTimeMs(text: string): number | null {
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?$/.test(text.trim())) return null;
  const value = new Date(text.trim()).getTime();
  return Number.isNaN(value) ? null : value;
}

type Start = SubmitInit["start"];

interface Fairness {
  priority: number;
  concurrencyKey: string;
  concurrencyLimit: number;
}

/** Priority, concurrency key and its limit, checked as the server checks them (the key is trimmed first). */
function validateFairness(form: TaskForm, errors: FieldErrors): Fairness {
  const priorityText = (form.priority ?? "").trim();
  const priority = priorityText === "" ? DEFAULT_PRIORITY : wholeNumber(priorityText);
  if (priority === null || priority < MIN_PRIORITY || priority > MAX_PRIORITY) {
    errors.priority = `must be between ${MIN_PRIORITY} and ${MAX_PRIORITY}`;
  }
  const key = pythonStrip(form.concurrencyKey ?? "");
  const limitText = (form.concurrencyLimit ?? "").trim();
  const limit = limitText === "" ? 0 : wholeNumber(limitText);
  if (!key) {
    if (limit !== 0) errors.concurrency_limit = "needs a concurrency key (leave it empty without one)";
  } else {
    if (charCount(key) > MAX_CONCURRENCY_KEY_CHARS || !pythonPrintable(key)) {
      errors.concurrency_key = `must be at most ${MAX_CONCURRENCY_KEY_CHARS} printable characters`;
    }
    if (limit === null || limit < MIN_CONCURRENCY_LIMIT || limit > MAX_CONCURRENCY_LIMIT) {
      errors.concurrency_limit = `must be between ${MIN_CONCURRENCY_LIMIT} and ${MAX_CONCURRENCY_LIMIT} with a concurrency key`;
    }
  }
  return { priority: priority ?? DEFAULT_PRIORITY, concurrencyKey: key, concurrencyLimit: key ? (limit ?? 0) : 0 };
}

/** The optional start (at a time, or after a delay), checked as the server checks it. */
function validateStart(form: TaskForm, errors: FieldErrors, now: number): Start {
  const at = (form.startAt ?? "").trim();
  const after = (form.startAfterS ?? "").trim();
  if (at && after) {
    errors.run_at = "cannot be combined with a delay";
    return undefined;
  }
  if (at) {
    const value = localTimeMs(at);
    if (value === null) errors.run_at = "must be a date and time";
    else if (value < now - RUN_AT_GRACE_MS) errors.run_at = "must not be in the past";
    else if (value > now + MAX_AHEAD_MS) errors.run_at = `must be at most ${durationText(MAX_AHEAD_MS)} ahead`;
    else return { case: "runAt", value: { seconds: BigInt(Math.floor(value / 1000)), nanos: (value % 1000) * 1_000_000 } };
    return undefined;
  }
  if (after) {
    const delay = parseSeconds(after);
    if (!delay) errors.delay = "must be a number of seconds, not negative";
    else if (durationMs(delay) > MAX_DELAY_MS) errors.delay = `must be at most ${durationText(MAX_DELAY_MS)}`;
    else return { case: "delay", value: delay };
  }
  return undefined;
}

/** The request to send, or the errors to show next to each field. */
export function validateTask(
  form: TaskForm,
  kinds: readonly string[],
  requestId: string,
  now: number = Date.now(),
): { request: SubmitInit } | { errors: FieldErrors } {
  const errors: FieldErrors = {};
  const name = pythonStrip(form.name);
  if (!name) errors.name = "is required";
  else if (charCount(name) > MAX_NAME_CHARS) errors.name = `must be at most ${MAX_NAME_CHARS} characters`;

  const kind = form.kind || "sleep";
  if (!kinds.includes(kind)) errors.kind = `unknown kind '${kind.slice(0, 50)}'; known kinds: ${kinds.join(", ")}`;

  const workload = parseSeconds(form.workloadS === "" ? "0" : form.workloadS);
  if (!workload) errors.workload = "must be a number of seconds, not negative";
  else if (durationMs(workload) > MAX_WORKLOAD_MS) errors.workload = `must be at most ${durationText(MAX_WORKLOAD_MS)}`;

  let maxRuntime: Duration | undefined;
  if (form.maxRuntimeS.trim() !== "") {
    const parsed = parseSeconds(form.maxRuntimeS);
    const ms = parsed ? durationMs(parsed) : -1;
    if (!parsed || ms < MIN_RUNTIME_MS || ms > MAX_RUNTIME_MS) {
      errors.max_runtime = `must be between ${durationText(MIN_RUNTIME_MS)} and ${durationText(MAX_RUNTIME_MS)}`;
    }
    else maxRuntime = parsed;
  }

  const replicas = wholeNumber(form.replicas);
  if (replicas === null || replicas < MIN_REPLICAS || replicas > MAX_REPLICAS) {
    errors.replicas = `must be between ${MIN_REPLICAS} and ${MAX_REPLICAS}`;
  }
  const maxAttempts = wholeNumber(form.maxAttempts);
  if (maxAttempts === null || maxAttempts < MIN_ATTEMPTS || maxAttempts > MAX_ATTEMPTS) {
    errors.max_attempts = `must be between ${MIN_ATTEMPTS} and ${MAX_ATTEMPTS}`;
  }
  const start = validateStart(form, errors, now);
  const fairness = validateFairness(form, errors);
  if (Object.keys(errors).length > 0 || !workload || replicas === null || maxAttempts === null) return { errors };
  return {
    request: {
      name,
      kind,
      workload,
      maxRuntime,
      replicas,
      maxAttempts,
      requestId,
      start,
      ...fairness,
    },
  };
}

/** A random UUID (v4) that works outside secure contexts too, where crypto.randomUUID is missing. */
export function newRequestId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
