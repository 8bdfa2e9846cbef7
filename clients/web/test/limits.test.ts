// The forms bound what the contract declares, read straight from the descriptors here (getOption): a bound
// written into the dashboard's own code, and then changed in the proto, fails one of these.
import assert from "node:assert/strict";
import { test } from "node:test";
import { type DescMessage, getOption, hasOption } from "@bufbuild/protobuf";
import { type FieldLimits, limits } from "../src/gen/resilienttask/v1/limits_pb";
import { RateLimitSchema } from "../src/gen/resilienttask/v1/operator_pb";
import { SubmitTaskRequestSchema } from "../src/gen/resilienttask/v1/scheduler_pb";
import { validateRateLimit } from "../src/operator";
import { type TaskForm, validateTask } from "../src/validation";

const KINDS = ["sleep"];
const VALID: TaskForm = { name: "job", kind: "sleep", workloadS: "0", maxRuntimeS: "", replicas: "1", maxAttempts: "3" };
const NOW = new Date("2026-12-06T12:00:00").getTime();

function declared(message: DescMessage): Map<string, FieldLimits> {
  const found = new Map<string, FieldLimits>();
  for (const field of message.fields) if (hasOption(field, limits)) found.set(field.name, getOption(field, limits));
  return found;
}

function refused(changes: Partial<TaskForm>): string[] {
  const result = validateTask({ ...VALID, ...changes }, KINDS, "r", NOW);
  return "errors" in result ? Object.keys(result.errors) : [];
}

const seconds = (ms: bigint | number) => String(Number(ms) / 1000);
const local = (ms: number) => {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
};

// Each declared field of SubmitTaskRequest the submit form takes: the form at each bound, then one past it.
type Probe = (bound: "min" | "max", past: boolean) => Partial<TaskForm>;
const SUBMIT_FORM: Record<string, Probe> = {
  name: (b, past) => ({ name: "x".repeat(Number(b === "max" ? lim("name").maxChars : lim("name").minChars) + (past ? (b === "max" ? 1 : -1) : 0)) }),
  workload: (_b, past) => ({ workloadS: seconds(lim("workload").maxDurationMs! + (past ? 1n : 0n)) }),
  max_runtime: (b, past) => {
    const l = lim("max_runtime");
    return { maxRuntimeS: seconds(b === "max" ? l.maxDurationMs! + (past ? 1n : 0n) : l.minDurationMs! - (past ? 1n : 0n)) };
  },
  replicas: (b, past) => ({ replicas: String(int("replicas", b, past)) }),
  max_attempts: (b, past) => ({ maxAttempts: String(int("max_attempts", b, past)) }),
  priority: (b, past) => ({ priority: String(int("priority", b, past)) }),
  concurrency_key: (_b, past) => ({ concurrencyKey: "k".repeat(lim("concurrency_key").maxChars! + (past ? 1 : 0)), concurrencyLimit: "1" }),
  concurrency_limit: (b, past) => ({ concurrencyKey: "k", concurrencyLimit: String(int("concurrency_limit", b, past)) }),
  delay: (_b, past) => ({ startAfterS: seconds(lim("delay").maxDurationMs! + (past ? 1n : 0n)) }),
  run_at: (b, past) => {
    const l = lim("run_at");
    return { startAt: local(b === "max" ? NOW + Number(l.maxAheadMs) + (past ? 1000 : 0) : NOW - Number(l.maxPastMs) - (past ? 1000 : 0)) };
  },
};
// What the form does not take (the payload is not a form field; the request id is generated).
const NOT_IN_FORM = ["payload", "request_id"];

function lim(field: string) {
  const found = declared(SubmitTaskRequestSchema).get(field);
  assert.ok(found, field);
  return found;
}

function int(field: string, bound: "min" | "max", past: boolean): number {
  const l = lim(field);
  return bound === "max" ? Number(l.maxValue) + (past ? 1 : 0) : Number(l.minValue) - (past ? 1 : 0);
}

test("the descriptors carry the declared limits", () => {
  assert.equal(Number(lim("replicas").maxValue) > 1, true);
  assert.deepEqual([...declared(SubmitTaskRequestSchema).keys()].sort(), [...Object.keys(SUBMIT_FORM), ...NOT_IN_FORM].sort());
});

test("the submit form accepts each declared bound and refuses one past it", () => {
  for (const [field, probe] of Object.entries(SUBMIT_FORM)) {
    const l = lim(field);
    const bounds: ("min" | "max")[] = [];
    if (l.maxChars !== undefined || l.maxValue !== undefined || l.maxDurationMs !== undefined || l.maxAheadMs !== undefined) bounds.push("max");
    if ((l.minChars ?? 0) > 0 || (l.minValue ?? 0n) > 0n || (l.minDurationMs ?? 0n) > 0n || l.maxPastMs !== undefined) bounds.push("min");
    for (const bound of bounds) {
      assert.deepEqual(refused(probe(bound, false)), [], `${field} at its ${bound}`);
      assert.deepEqual(refused(probe(bound, true)), [field], `${field} one past its ${bound}`);
    }
  }
});

test("the rate-limit form bounds what RateLimit declares", () => {
  const fields = declared(RateLimitSchema);
  const starts = fields.get("starts")!;
  const period = fields.get("period")!;
  const errors = (s: number, ms: bigint) => {
    const result = validateRateLimit(String(s), seconds(ms));
    return "errors" in result ? Object.keys(result.errors) : [];
  };
  const [minS, maxS, minMs, maxMs] = [Number(starts.minValue), Number(starts.maxValue), period.minDurationMs!, period.maxDurationMs!];
  assert.deepEqual(errors(minS, minMs), []);
  assert.deepEqual(errors(maxS, maxMs), []);
  assert.deepEqual(errors(minS - 1, minMs), ["starts"]);
  assert.deepEqual(errors(maxS + 1, minMs), ["starts"]);
  assert.deepEqual(errors(minS, minMs - 1n), ["period"]);
  assert.deepEqual(errors(minS, maxMs + 1n), ["period"]);
});
