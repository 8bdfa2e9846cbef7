import assert from "node:assert/strict";
import { test } from "node:test";
import { type BulkPage, type BulkRequest, BULK_PAGE, narrow, runBulk } from "../src/bulk";
import { TaskStatus } from "../src/gen/resilienttask/v1/task_pb";

test("a filter is narrowed to the statuses the verb acts on", () => {
  assert.deepEqual(narrow({ kind: "fail" }, "retry")?.statuses, [TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED]);
  assert.deepEqual(narrow({ statuses: [TaskStatus.FAILED, TaskStatus.RUNNING] }, "retry")?.statuses, [TaskStatus.FAILED]);
  assert.equal(narrow({ statuses: [TaskStatus.SUCCEEDED] }, "cancel"), null, "nothing finished can be cancelled");
  assert.deepEqual(narrow({ nameContains: "x" }, "delete")?.nameContains, "x");
});

test("ids go in chunks of one page; the totals add up", async () => {
  const ids = Array.from({ length: BULK_PAGE * 2 + 3 }, (_, i) => `id-${i}`);
  const seen: BulkRequest[] = [];
  const progress: number[] = [];
  const totals = await runBulk(
    async (request): Promise<BulkPage> => {
      seen.push(request);
      const count = request.selection.target.case === "ids" ? request.selection.target.value.taskIds.length : 0;
      return { affected: BigInt(count - 1), skipped: 1n, nextPageToken: "" };
    },
    { kind: "ids", ids },
    (t) => progress.push(t.affected + t.skipped),
  );
  assert.deepEqual(
    seen.map((r) => (r.selection.target.case === "ids" ? r.selection.target.value.taskIds.length : -1)),
    [BULK_PAGE, BULK_PAGE, 3],
  );
  assert.deepEqual(totals, { affected: ids.length - 3, skipped: 3, calls: 3 });
  assert.deepEqual(progress, [BULK_PAGE, BULK_PAGE * 2, ids.length]);
});

test("a filter is followed page by page with the server's token until it has no more", async () => {
  const tokens: string[] = [];
  const totals = await runBulk(
    async (request): Promise<BulkPage> => {
      tokens.push(request.pageToken);
      const next = { "": "p2", p2: "p3", p3: "" }[request.pageToken] ?? "";
      return { affected: 500n, skipped: 0n, nextPageToken: next };
    },
    { kind: "filter", filter: { statuses: [TaskStatus.FAILED] } },
    () => {},
  );
  assert.deepEqual(tokens, ["", "p2", "p3"]);
  assert.equal(totals.affected, 1500);
});
