// Bulk actions: what a selection is (listed ids, or every task matching a filter), which statuses each
// verb can act on (so the confirmation counts only those), and the loop that calls a bulk RPC page by
// page, reporting progress. No DOM here: unit-tested.

import { CancelTasksRequestSchema, TaskIdsSchema } from "./gen/resilienttask/v1/scheduler_pb";
import { TaskStatus } from "./gen/resilienttask/v1/task_pb";
import { maxItems, valueRange } from "./limits";
import type { TaskFilterInit } from "./query";

export type BulkVerb = "cancel" | "retry" | "delete";

/** The tasks a bulk action takes: these ids, or every task matching the filter (page by page). */
export type BulkTarget = { kind: "ids"; ids: string[] } | { kind: "filter"; filter: TaskFilterInit };

/** Statuses each verb acts on; the server leaves the others as they are (and counts them as skipped). */
export const APPLICABLE: Record<BulkVerb, readonly TaskStatus[]> = {
  cancel: [TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.RUNNING],
  retry: [TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED],
  delete: [TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT],
};

export const VERB_LABELS: Record<BulkVerb, { verb: string; done: string; applies: string }> = {
  cancel: { verb: "Cancel", done: "Cancelled", applies: "not finished" },
  retry: { verb: "Retry", done: "Queued again", applies: "failed, timed out or cancelled" },
  delete: { verb: "Delete", done: "Deleted", applies: "finished" },
};

/** Most ids (and tasks per page) one bulk call takes, as the contract declares it. */
export const BULK_PAGE = Math.min(maxItems(TaskIdsSchema, "task_ids"), valueRange(CancelTasksRequestSchema, "page_size").max);

/**
 * The filter narrowed to the statuses `verb` acts on, so counting it gives what will be acted on and the
 * pages hold no task that would be skipped; null when the filter's statuses leave none.
 */
export function narrow(filter: TaskFilterInit, verb: BulkVerb): TaskFilterInit | null {
  const applicable = APPLICABLE[verb];
  const asked = filter.statuses ?? [];
  const statuses = asked.length ? asked.filter((s) => applicable.includes(s)) : [...applicable];
  return statuses.length ? { ...filter, statuses } : null;
}

export function plural(n: number, word: string): string {
  return `${n.toLocaleString("en-US")} ${word}${n === 1 ? "" : "s"}`;
}

export interface BulkPage {
  affected: bigint;
  skipped: bigint;
  nextPageToken: string;
}

export interface BulkRequest {
  selection: { target: { case: "ids"; value: { taskIds: string[] } } | { case: "filter"; value: TaskFilterInit } };
  pageSize: number;
  pageToken: string;
}

export interface BulkTotals {
  affected: number;
  skipped: number;
  calls: number;
}

/** Run one bulk verb over the whole target: ids in chunks of BULK_PAGE, a filter page by page with its token. */
export async function runBulk(
  call: (request: BulkRequest) => Promise<BulkPage>,
  target: BulkTarget,
  progress: (totals: BulkTotals) => void,
  signal?: AbortSignal,
): Promise<BulkTotals> {
  const totals: BulkTotals = { affected: 0, skipped: 0, calls: 0 };
  const take = (page: BulkPage): void => {
    totals.affected += Number(page.affected);
    totals.skipped += Number(page.skipped);
    totals.calls++;
    progress({ ...totals });
  };
  if (target.kind === "ids") {
    for (let i = 0; i < target.ids.length; i += BULK_PAGE) {
      if (signal?.aborted) break;
      const ids = target.ids.slice(i, i + BULK_PAGE);
      take(await call({ selection: { target: { case: "ids", value: { taskIds: ids } } }, pageSize: ids.length, pageToken: "" }));
    }
    return totals;
  }
  let token = "";
  do {
    if (signal?.aborted) break;
    const page = await call({ selection: { target: { case: "filter", value: target.filter } }, pageSize: BULK_PAGE, pageToken: token });
    take(page);
    token = page.nextPageToken;
  } while (token);
  return totals;
}
