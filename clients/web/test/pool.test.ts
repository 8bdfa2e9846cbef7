import assert from "node:assert/strict";
import { test } from "node:test";
import { type MessageInitShape, create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Feed } from "../src/feed";
import { WatchTasksResponseSchema } from "../src/gen/resilienttask/v1/scheduler_pb";
import { type Task, TaskSchema, TaskStatus, type Worker, WorkerSchema } from "../src/gen/resilienttask/v1/task_pb";
import { busySlots } from "../src/pool";

const BEAT = 50_000;

function worker(id: string, busy: number, slots = 10, beatMs: number | null = BEAT): Worker {
  return create(WorkerSchema, { id, busy, slots, lastHeartbeat: beatMs === null ? undefined : timestampFromMs(beatMs) });
}

function task(id: string, workerId: string, status: TaskStatus, startedMs: number, finishedMs?: number): Task {
  const fields: MessageInitShape<typeof TaskSchema> = { id, workerId, status, version: 1n, startedAt: timestampFromMs(startedMs) };
  if (finishedMs !== undefined) fields.finishedAt = timestampFromMs(finishedMs);
  return create(TaskSchema, fields);
}

const running = (id: string, on: string, startedMs: number) => task(id, on, TaskStatus.RUNNING, startedMs);

test("tasks started after the heartbeat count at once: no '0 of 30 busy' while they run", () => {
  const tasks = [running("a", "w1", BEAT + 10), running("b", "w1", BEAT + 20), running("c", "w2", BEAT + 30)];
  const busy = busySlots([worker("w1", 0), worker("w2", 0)], tasks);
  assert.deepEqual([...busy], [["w1", 2], ["w2", 1]]);
});

test("tasks finished after the heartbeat free their slots at once", () => {
  // The heartbeat saw both running; both have ended since.
  const tasks = [
    task("a", "w1", TaskStatus.CANCELLED, BEAT - 100, BEAT + 5),
    task("b", "w1", TaskStatus.SUCCEEDED, BEAT - 100, BEAT + 6),
  ];
  assert.equal(busySlots([worker("w1", 2)], tasks).get("w1"), 0);
});

test("other users' work comes from the heartbeat, which the caller's tasks cannot explain", () => {
  // At the heartbeat: 5 busy, 2 of them the caller's (one still running, one finished since); 3 are someone else's.
  const tasks = [
    running("a", "w1", BEAT - 100),
    task("b", "w1", TaskStatus.SUCCEEDED, BEAT - 100, BEAT + 1),
    running("c", "w1", BEAT + 2), // started since
    task("d", "w1", TaskStatus.SUCCEEDED, BEAT - 300, BEAT - 200), // over before the heartbeat: not in its figure
    running("e", "w2", BEAT + 3), // another worker's
  ];
  assert.equal(busySlots([worker("w1", 5)], tasks).get("w1"), 3 + 2);
});

test("a cancelling task still holds its slot; never more than the slots; no heartbeat time trusts the figure", () => {
  const tasks = [task("a", "w1", TaskStatus.CANCELLING, BEAT + 1), running("b", "w1", BEAT + 2), running("c", "w2", 1)];
  const busy = busySlots([worker("w1", 9, 10), worker("w2", 4, 10, null)], tasks);
  assert.equal(busy.get("w1"), 10, "2 of the caller's now and 9 others' at the heartbeat, capped at 10 slots");
  assert.equal(busy.get("w2"), 4, "the figure already counts the caller's task");
  assert.equal(busySlots([worker("idle", 0)], [task("q", "", TaskStatus.QUEUED, 0)]).get("idle"), 0);
});

test("the feed hands its tasks to the count, not its optimistic rows", () => {
  const feed = new Feed();
  feed.apply(
    create(WatchTasksResponseSchema, {
      resumeToken: "t",
      kind: { case: "snapshot", value: { tasks: [running("a", "w1", BEAT + 1)], workers: [worker("w1", 0)] } },
    }),
  );
  feed.addPending("req", 2, "later", "sleep");
  assert.deepEqual([...feed.tasks()].map((t) => t.id), ["a"]);
  assert.equal(busySlots(feed.workers, feed.tasks()).get("w1"), 1);
});
