import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { CatchupPolicy, OverlapPolicy, ScheduleSchema } from "../src/gen/resilienttask/v1/schedule_pb";
import { until } from "../src/format";
import { type ScheduleForm, fieldFor, scheduleRequest, timingText } from "../src/schedules";

const VALID: ScheduleForm = {
  name: " nightly ",
  timing: "cron",
  cron: " 0 3 * * * ",
  timeZone: "Europe/Paris",
  intervalS: "60",
  taskName: "",
  kind: "sleep",
  workloadS: "1.5",
  maxRuntimeS: "",
  replicas: "2",
  maxAttempts: "",
  overlap: String(OverlapPolicy.CANCEL_PREVIOUS),
  catchup: String(CatchupPolicy.ALL),
  catchupLimit: "5",
  jitterS: "",
  paused: true,
};

function errors(changes: Partial<ScheduleForm>): Record<string, string> {
  const result = scheduleRequest({ ...VALID, ...changes }, "r");
  return "errors" in result ? result.errors : {};
}

test("a cron schedule becomes the request the server expects", () => {
  const result = scheduleRequest(VALID, "req-1");
  assert.ok("request" in result);
  const { spec, paused, requestId } = result.request;
  assert.equal(spec?.name, "nightly");
  assert.deepEqual(spec?.timing, { case: "cron", value: { expression: "0 3 * * *", timeZone: "Europe/Paris" } });
  assert.equal(spec?.task?.name, "nightly", "the tasks are named after the schedule unless told otherwise");
  assert.deepEqual(spec?.task?.workload, { seconds: 1n, nanos: 500_000_000 });
  assert.equal(spec?.task?.maxRuntime, undefined);
  assert.equal(spec?.task?.replicas, 2);
  assert.equal(spec?.task?.maxAttempts, 0, "empty: the server's default");
  assert.equal(spec?.overlap, OverlapPolicy.CANCEL_PREVIOUS);
  assert.equal(spec?.catchup, CatchupPolicy.ALL);
  assert.equal(spec?.catchupLimit, 5);
  assert.equal(spec?.jitter, undefined);
  assert.equal(paused, true);
  assert.equal(requestId, "req-1");
});

test("an interval schedule sends its interval, not the cron fields", () => {
  const result = scheduleRequest({ ...VALID, timing: "interval", intervalS: "0.5", taskName: " tick ", jitterS: "0.1" }, "r");
  assert.ok("request" in result);
  assert.deepEqual(result.request.spec?.timing, { case: "interval", value: { seconds: 0n, nanos: 500_000_000 } });
  assert.equal(result.request.spec?.task?.name, "tick");
  assert.deepEqual(result.request.spec?.jitter, { seconds: 0n, nanos: 100_000_000 });
});

test("the browser refuses only what it knows for certain", () => {
  assert.deepEqual(errors({ name: "  " }), { name: "is required" });
  assert.deepEqual(errors({ cron: " " }), { cron: "is required" });
  assert.deepEqual(errors({ cron: "not a cron" }), {}, "the server judges cron expressions");
  assert.deepEqual(errors({ timeZone: "Mars/Olympus" }), {}, "and time zones");
  assert.deepEqual(errors({ timing: "interval", intervalS: "soon" }), { interval: "must be a number of seconds" });
  assert.deepEqual(errors({ timing: "interval", intervalS: "0.1" }), {}, "and the minimum interval");
  assert.deepEqual(errors({ replicas: "two", catchupLimit: "-1" }), {
    replicas: "must be a whole number",
    catchup_limit: "must be a whole number",
  });
});

test("a server refusal is shown next to the field it names", () => {
  assert.equal(fieldFor("spec.cron.expression"), "cron");
  assert.equal(fieldFor("cron"), "cron");
  assert.equal(fieldFor("spec.cron.time_zone"), "time_zone");
  assert.equal(fieldFor("time_zone"), "time_zone");
  assert.equal(fieldFor("spec.interval"), "interval");
  assert.equal(fieldFor("spec.task.name"), "task_name");
  assert.equal(fieldFor("spec.task.replicas"), "replicas");
  assert.equal(fieldFor("spec.name"), "name");
  assert.equal(fieldFor("jitter"), "jitter");
  assert.equal(fieldFor("request_id"), null);
  assert.equal(fieldFor(null), null);
});

test("timing reads as a person says it", () => {
  const cron = create(ScheduleSchema, { spec: { timing: { case: "cron", value: { expression: "*/5 * * * *" } } } });
  assert.equal(timingText(cron), "cron */5 * * * * (UTC)");
  const every = create(ScheduleSchema, { spec: { timing: { case: "interval", value: { seconds: 30n } } } });
  assert.equal(timingText(every), "every 30.0s");
});

test("a countdown rounds up, so a slot less than a second away still reads 'in 1s'", () => {
  const now = 1_000_000;
  assert.equal(until(now + 200, now), "in 1s");
  assert.equal(until(now + 59_001, now), "in 1m");
  assert.equal(until(now + 3 * 3600_000, now), "in 3h");
  assert.equal(until(now + 2 * 86_400_000, now), "in 2d");
  assert.equal(until(now, now), "due");
  assert.equal(until(now - 5_000, now), "due");
});
