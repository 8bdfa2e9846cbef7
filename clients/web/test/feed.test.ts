import assert from "node:assert/strict";
import { test } from "node:test";
import { type MessageInitShape, create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Feed, isActive, isFinished, pendingKey } from "../src/feed";
import {
  type TaskEventSchema,
  type WatchTasksResponse,
  WatchTasksResponseSchema,
} from "../src/gen/resilienttask/v1/scheduler_pb";
import { type Task, TaskSchema, TaskStatus } from "../src/gen/resilienttask/v1/task_pb";

function task(id: string, version: number, fields: MessageInitShape<typeof TaskSchema> = {}): Task {
  return create(TaskSchema, {
    id,
    name: id,
    version: BigInt(version),
    status: TaskStatus.QUEUED,
    createdAt: timestampFromMs(1_000_000),
    ...fields,
  });
}

function snapshot(...tasks: Task[]): WatchTasksResponse {
  return create(WatchTasksResponseSchema, { resumeToken: "t", kind: { case: "snapshot", value: { tasks } } });
}

function event(t: Task, deleted = false): WatchTasksResponse {
  return create(WatchTasksResponseSchema, { resumeToken: "t", kind: { case: "event", value: { task: t, deleted } } });
}

function batch(...events: MessageInitShape<typeof TaskEventSchema>[]): WatchTasksResponse {
  return create(WatchTasksResponseSchema, { resumeToken: "t", kind: { case: "events", value: { events } } });
}

const keys = (feed: Feed): string[] => feed.view("all").rows.map((r) => r.key);

test("an update older than the one shown is ignored", () => {
  const feed = new Feed();
  feed.apply(snapshot(task("a", 3, { status: TaskStatus.RUNNING })));
  feed.apply(event(task("a", 2, { status: TaskStatus.QUEUED })));
  feed.apply(event(task("a", 3, { status: TaskStatus.QUEUED })));
  assert.equal(feed.get("a")?.task?.status, TaskStatus.RUNNING);
  feed.apply(event(task("a", 4, { status: TaskStatus.SUCCEEDED })));
  assert.equal(feed.get("a")?.task?.status, TaskStatus.SUCCEEDED);
});

test("a batch applies its events in order and renders once", () => {
  const feed = new Feed();
  feed.apply(snapshot(task("a", 1)));
  let renders = 0;
  feed.subscribe(() => renders++);
  feed.apply(
    batch(
      { task: task("a", 2, { status: TaskStatus.RUNNING }) },
      { task: task("b", 1), stats: { queued: 1n } },
      { task: task("a", 3, { status: TaskStatus.SUCCEEDED }), stats: { queued: 2n } },
      { task: task("b", 2), deleted: true },
    ),
  );
  assert.equal(renders, 1);
  assert.equal(feed.get("a")?.task?.status, TaskStatus.SUCCEEDED);
  assert.deepEqual(keys(feed), ["a"]);
  assert.equal(feed.stats?.queued, 2n, "the stats after the last event");
});

test("a deleted task stays deleted when a late update about it arrives", () => {
  const feed = new Feed();
  feed.apply(snapshot(task("a", 1)));
  feed.apply(event(task("a", 5), true));
  feed.apply(event(task("a", 6)));
  assert.deepEqual(keys(feed), []);
});

test("optimistic rows become the server's tasks in place, and a retry reuses them", () => {
  const feed = new Feed();
  feed.apply(snapshot(task("old", 1, { createdAt: timestampFromMs(Date.now() + 60_000) })));
  feed.addPending("req", 3, "batch", "sleep");
  feed.addPending("req", 3, "batch", "sleep");
  assert.deepEqual(keys(feed), [pendingKey("req", 0), pendingKey("req", 1), pendingKey("req", 2), "old"]);

  feed.apply(event(task("t1", 1, { requestId: "req", replicaIndex: 1, createdAt: timestampFromMs(0) })));
  assert.deepEqual(keys(feed), [pendingKey("req", 0), "t1", pendingKey("req", 2), "old"]);
  feed.merge([0, 1, 2].map((i) => task(`t${i}`, 1, { requestId: "req", replicaIndex: i })));
  assert.deepEqual(keys(feed), ["t0", "t1", "t2", "old"]);
});

test("a refused submission is marked failed and can be dismissed", () => {
  const feed = new Feed();
  feed.addPending("req", 2, "x", "sleep");
  feed.failPending("req", "kind: unknown", false);
  assert.ok(feed.view("all").rows.every((r) => r.pending?.failure === "kind: unknown" && !r.pending.retryable));
  feed.dismissPending("req");
  assert.equal(feed.size, 0);
});

test("a snapshot replaces the tasks but keeps rows still waiting for the server", () => {
  const feed = new Feed();
  feed.apply(snapshot(task("a", 1), task("b", 1)));
  feed.addPending("req", 1, "x", "sleep");
  feed.apply(snapshot(task("b", 2)));
  assert.deepEqual(keys(feed).sort(), ["b", pendingKey("req", 0)].sort());
  assert.equal(feed.get("b")?.task?.version, 2n);
});

test("filters pick statuses, and active means queued, running or cancelling", () => {
  const feed = new Feed();
  const statuses = [TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.CANCELLING, TaskStatus.SUCCEEDED, TaskStatus.FAILED];
  feed.apply(snapshot(...statuses.map((status, i) => task(`t${i}`, 1, { status }))));
  assert.equal(feed.view("active").rows.length, 3);
  assert.deepEqual(
    feed.view(TaskStatus.FAILED).rows.map((r) => r.key),
    ["t4"],
  );
});

test("a scheduled task is neither active nor finished, and has its own filter", () => {
  assert.equal(isActive(TaskStatus.SCHEDULED), false);
  assert.equal(isFinished(TaskStatus.SCHEDULED), false, "it can still run: no delete button, no 'clear history'");
  const feed = new Feed();
  feed.apply(snapshot(task("later", 1, { status: TaskStatus.SCHEDULED }), task("now", 1)));
  assert.deepEqual(feed.view(TaskStatus.SCHEDULED).rows.map((r) => r.key), ["later"]);
  assert.deepEqual(feed.view("active").rows.map((r) => r.key), ["now"]);
});
