import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { concurrencyText, priorityText, waitBadge } from "../src/fairness";
import { TaskSchema, TaskStatus, WaitReason } from "../src/gen/resilienttask/v1/task_pb";

const queued = (waitReason: WaitReason) =>
  create(TaskSchema, { status: TaskStatus.QUEUED, kind: "sleep", priority: 4, concurrencyKey: "customer-7", concurrencyLimit: 2, waitReason });

test("a queued task's wait reason reads as a short badge", () => {
  assert.equal(waitBadge(queued(WaitReason.CONCURRENCY_KEY))?.text, "waiting: key customer-7 (2 running)");
  assert.equal(waitBadge(queued(WaitReason.KIND_PAUSED))?.text, "kind paused");
  assert.equal(waitBadge(queued(WaitReason.KIND_PAUSED))?.reason, "KIND_PAUSED");
  assert.equal(waitBadge(queued(WaitReason.RATE_LIMIT))?.text, "rate limited");
  assert.equal(waitBadge(queued(WaitReason.SLOT_SHARE))?.text, "waiting: share");
  assert.equal(waitBadge(queued(WaitReason.UNSPECIFIED)), null, "waiting only for a worker: no badge");
  assert.equal(waitBadge({ ...queued(WaitReason.KIND_PAUSED), status: TaskStatus.RUNNING }), null, "only queued tasks wait");
});

test("priority and key read plainly", () => {
  assert.equal(priorityText(queued(WaitReason.UNSPECIFIED)), "4");
  assert.equal(priorityText({ priority: 0 }), "3");
  assert.equal(concurrencyText(queued(WaitReason.UNSPECIFIED)), "At most 2 tasks with key customer-7 run at once");
  assert.equal(concurrencyText({ concurrencyKey: "", concurrencyLimit: 0 }), "");
});
