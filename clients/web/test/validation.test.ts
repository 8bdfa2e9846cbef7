import assert from "node:assert/strict";
import { test } from "node:test";
import { type TaskForm, parseSeconds, pythonStrip, validateTask } from "../src/validation";

const KINDS = ["fail", "sleep", "spin"];
const VALID: TaskForm = { name: "job", kind: "sleep", workloadS: "5", maxRuntimeS: "", replicas: "1", maxAttempts: "3" };

function errors(changes: Partial<TaskForm>): Record<string, string> {
  const result = validateTask({ ...VALID, ...changes }, KINDS, "r");
  return "errors" in result ? result.errors : {};
}

test("a valid form becomes the request the server expects", () => {
  const result = validateTask({ ...VALID, name: "  job  ", workloadS: "1.5", maxRuntimeS: "2" }, KINDS, "req-1");
  assert.ok("request" in result);
  assert.equal(result.request.name, "job");
  assert.deepEqual(result.request.workload, { seconds: 1n, nanos: 500_000_000 });
  assert.deepEqual(result.request.maxRuntime, { seconds: 2n, nanos: 0 });
  assert.equal(result.request.requestId, "req-1");
});

test("names are trimmed and counted as Python does", () => {
  assert.equal(pythonStrip("\u0085\u3000 job \x1f"), "job");
  assert.equal(pythonStrip("\ufeffjob"), "\ufeffjob");
  assert.deepEqual(errors({ name: " \t " }), { name: "is required" });
  assert.deepEqual(errors({ name: "😀".repeat(200) }), {});
  assert.deepEqual(errors({ name: "x".repeat(201) }), { name: "must be at most 200 characters" });
});

test("durations are checked in whole milliseconds, like the server", () => {
  assert.deepEqual(errors({ workloadS: "86400" }), {});
  assert.deepEqual(errors({ workloadS: "86400.001" }), { workload: "must be at most 24h" });
  assert.deepEqual(errors({ workloadS: "86400.0009" }), {});
  assert.deepEqual(errors({ workloadS: "-1" }), { workload: "must be a number of seconds, not negative" });
  assert.deepEqual(errors({ maxRuntimeS: "0.9999" }), { max_runtime: "must be between 1s and 24h" });
  assert.deepEqual(errors({ maxRuntimeS: "1" }), {});
  assert.deepEqual(errors({ maxRuntimeS: "86400.001" }), { max_runtime: "must be between 1s and 24h" });
  assert.equal(parseSeconds("1e3"), null);
  assert.deepEqual(parseSeconds(".25"), { seconds: 0n, nanos: 250_000_000 });
});

test("replicas, attempts and kind are bounded as the server bounds them", () => {
  assert.deepEqual(errors({ replicas: "0" }), { replicas: "must be between 1 and 50" });
  assert.deepEqual(errors({ replicas: "50" }), {});
  assert.deepEqual(errors({ replicas: "2.5" }), { replicas: "must be between 1 and 50" });
  assert.deepEqual(errors({ maxAttempts: "11" }), { max_attempts: "must be between 1 and 10" });
  assert.deepEqual(errors({ kind: "nope" }), { kind: "unknown kind 'nope'; known kinds: fail, sleep, spin" });
});

test("a start is a local time or a delay, bounded as the server bounds it", () => {
  const now = new Date("2026-12-06T12:00:00").getTime();
  const at = (startAt: string, startAfterS = "") => validateTask({ ...VALID, startAt, startAfterS }, KINDS, "r", now);
  const later = at("2026-12-06T12:30");
  assert.ok("request" in later);
  assert.deepEqual(later.request.start, {
    case: "runAt",
    value: { seconds: BigInt(new Date("2026-12-06T12:30:00").getTime() / 1000), nanos: 0 },
  });
  const delayed = at("", "90.5");
  assert.ok("request" in delayed);
  assert.deepEqual(delayed.request.start, { case: "delay", value: { seconds: 90n, nanos: 500_000_000 } });
  const now_ = at("", "");
  assert.ok("request" in now_ && now_.request.start === undefined);
  assert.deepEqual(errors({ startAt: "2026-12-06T12:30", startAfterS: "5" }), { run_at: "cannot be combined with a delay" });
  const refused = (startAt: string, startAfterS = "") => {
    const result = at(startAt, startAfterS);
    return "errors" in result ? result.errors : {};
  };
  assert.deepEqual(refused("2026-12-06T11:58"), { run_at: "must not be in the past" });
  assert.deepEqual(refused("2026-12-06T11:59:30"), {}, "within the grace it starts now");
  assert.deepEqual(refused("2028-01-01T00:00"), { run_at: "must be at most 366 days ahead" });
  assert.deepEqual(refused("tomorrow"), { run_at: "must be a date and time" });
  assert.deepEqual(refused("", "-5"), { delay: "must be a number of seconds, not negative" });
  assert.deepEqual(refused("", String(367 * 86400)), { delay: "must be at most 366 days" });
});

test("priority defaults to 3 and is bounded 1 to 5, as the server bounds it", () => {
  const plain = validateTask(VALID, KINDS, "r");
  assert.ok("request" in plain);
  assert.equal(plain.request.priority, 3);
  assert.equal(plain.request.concurrencyKey, "");
  assert.equal(plain.request.concurrencyLimit, 0);
  const urgent = validateTask({ ...VALID, priority: "5" }, KINDS, "r");
  assert.ok("request" in urgent && urgent.request.priority === 5);
  for (const priority of ["0", "6", "2.5", "high"]) {
    assert.deepEqual(errors({ priority }), { priority: "must be between 1 and 5" }, priority);
  }
});

test("a concurrency key needs a limit of 1 to 1000, and a limit needs a key", () => {
  const keyed = validateTask({ ...VALID, concurrencyKey: " customer-7 ", concurrencyLimit: "2" }, KINDS, "r");
  assert.ok("request" in keyed);
  assert.equal(keyed.request.concurrencyKey, "customer-7");
  assert.equal(keyed.request.concurrencyLimit, 2);
  assert.deepEqual(errors({ concurrencyKey: "k", concurrencyLimit: "" }), {
    concurrency_limit: "must be between 1 and 1000 with a concurrency key",
  });
  assert.deepEqual(errors({ concurrencyKey: "k", concurrencyLimit: "1001" }), {
    concurrency_limit: "must be between 1 and 1000 with a concurrency key",
  });
  assert.deepEqual(errors({ concurrencyKey: "k", concurrencyLimit: "1000" }), {});
  assert.deepEqual(errors({ concurrencyKey: "  ", concurrencyLimit: "3" }), {
    concurrency_limit: "needs a concurrency key (leave it empty without one)",
  });
  const tooLong = { concurrency_key: "must be at most 128 printable characters" };
  assert.deepEqual(errors({ concurrencyKey: "😀".repeat(128), concurrencyLimit: "1" }), {});
  assert.deepEqual(errors({ concurrencyKey: "k".repeat(129), concurrencyLimit: "1" }), tooLong);
  assert.deepEqual(errors({ concurrencyKey: "a\u200bb", concurrencyLimit: "1" }), tooLong, "a format character");
  assert.deepEqual(errors({ concurrencyKey: "a b", concurrencyLimit: "1" }), {}, "the ASCII space is printable");
  assert.deepEqual(errors({ concurrencyKey: "a\u00a0b", concurrencyLimit: "1" }), tooLong, "other spaces are not");
});
