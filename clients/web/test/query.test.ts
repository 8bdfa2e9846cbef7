import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { TaskSchema, TaskStatus } from "../src/gen/resilienttask/v1/task_pb";
import { EMPTY_QUERY, fromSearch, isEmpty, matches, search, toFilters, toSearch } from "../src/query";
import { taskHash, taskInHash } from "../src/route";

const ID = "0f8fad5b-d9cb-469f-a165-70867728950e";
const BATCH = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

test("the address round-trips every part of a query", () => {
  const query = {
    text: "nightly report",
    kind: "sleep",
    statuses: [TaskStatus.FAILED, TaskStatus.RUNNING],
    fromMs: Date.UTC(2026, 11, 6, 9, 30),
    toMs: Date.UTC(2026, 11, 6, 18, 0),
    deadLettered: true,
  };
  const searchString = toSearch(query);
  assert.equal(searchString, "?q=nightly+report&kind=sleep&status=running%2Cfailed&from=2026-12-06T09%3A30%3A00.000Z&to=2026-12-06T18%3A00%3A00.000Z&dead=1");
  assert.deepEqual(fromSearch(searchString), { ...query, statuses: [TaskStatus.RUNNING, TaskStatus.FAILED] });
  assert.equal(toSearch(EMPTY_QUERY), "");
  assert.ok(isEmpty(fromSearch("")));
});

test("unknown statuses and bad times in the address are ignored, not errors", () => {
  const query = fromSearch("?status=failed,bogus,FAILED&from=yesterday&dead=yes");
  assert.deepEqual(query.statuses, [TaskStatus.FAILED]);
  assert.equal(query.fromMs, null);
  assert.equal(query.deadLettered, false);
});

test("the search box reads a name, the start of an id, or a whole id", () => {
  assert.deepEqual(search("  Report "), { by: "name", text: "Report" });
  assert.deepEqual(search("0F8FAD5B"), { by: "id-prefix", text: "0f8fad5b" });
  assert.deepEqual(search(ID.toUpperCase()), { by: "id", text: ID });
  assert.deepEqual(search("cafe"), { by: "name", text: "cafe" }, "too short to be taken for an id");
  assert.deepEqual(search(""), { by: "none" });
});

test("a whole id asks the server twice (task or batch); everything else once", () => {
  const base = { ...EMPTY_QUERY, kind: "fail" };
  assert.deepEqual(toFilters({ ...base, text: ID }), [
    { kind: "fail", idPrefix: ID },
    { kind: "fail", batchId: ID },
  ]);
  assert.deepEqual(toFilters({ ...base, text: "rep" }), [{ kind: "fail", nameContains: "rep" }]);
  const timed = toFilters({ ...EMPTY_QUERY, fromMs: 1_000, statuses: [TaskStatus.FAILED], deadLettered: true })[0];
  assert.deepEqual(timed.statuses, [TaskStatus.FAILED]);
  assert.deepEqual(timed.createdAfter, timestampFromMs(1_000));
  assert.equal(timed.deadLettered, true);
  assert.deepEqual(toFilters(EMPTY_QUERY), [{}]);
});

test("a task matches as the server would judge it", () => {
  const task = create(TaskSchema, {
    id: ID,
    batchId: BATCH,
    name: "Nightly Report",
    kind: "sleep",
    status: TaskStatus.FAILED,
    deadLettered: true,
    createdAt: timestampFromMs(5_000),
  });
  assert.ok(matches(task, EMPTY_QUERY));
  assert.ok(matches(task, { ...EMPTY_QUERY, text: "night" }), "name contains, any case");
  assert.ok(matches(task, { ...EMPTY_QUERY, text: BATCH }), "a batch id");
  assert.ok(matches(task, { ...EMPTY_QUERY, text: ID.slice(0, 10) }), "the start of its id");
  assert.ok(!matches(task, { ...EMPTY_QUERY, text: "7c9e6679" }), "the start of a batch id is not searched");
  assert.ok(matches(task, { ...EMPTY_QUERY, statuses: [TaskStatus.RUNNING, TaskStatus.FAILED] }));
  assert.ok(!matches(task, { ...EMPTY_QUERY, statuses: [TaskStatus.RUNNING] }));
  assert.ok(!matches(task, { ...EMPTY_QUERY, kind: "fail" }));
  assert.ok(matches(task, { ...EMPTY_QUERY, fromMs: 5_000, toMs: 5_001 }), "from is inclusive");
  assert.ok(!matches(task, { ...EMPTY_QUERY, toMs: 5_000 }), "before is exclusive");
  assert.ok(!matches({ ...task, deadLettered: false }, { ...EMPTY_QUERY, deadLettered: true }));
});

test("a task's page has its address in the fragment", () => {
  assert.equal(taskInHash(taskHash(ID)), ID);
  assert.equal(taskInHash("#/tasks/not-an-id"), null);
  assert.equal(taskInHash(""), null);
});
