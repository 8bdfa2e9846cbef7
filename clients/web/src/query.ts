// What the task list is narrowed to: the search box, kind, statuses, time range and dead-lettered. One plain
// value read from and written to the address bar's query string (so a reload or a shared link restores the
// view), turned into the server's TaskFilter for ListTasks, CountTasks and the bulk calls, and matched
// against tasks here so live changes join or leave the view. Plain state: unit-tested.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { TaskFilterSchema } from "./gen/resilienttask/v1/scheduler_pb";
import { type Task, TaskStatus } from "./gen/resilienttask/v1/task_pb";
import { maxChars } from "./limits";

export interface TaskQuery {
  /** The search box as typed: a name fragment, or an id prefix / a whole task or batch id. */
  text: string;
  kind: string;
  /** Any of these; empty means any status. Kept sorted, without duplicates. */
  statuses: TaskStatus[];
  /** Created at or after (ms since the epoch), or null. */
  fromMs: number | null;
  /** Created before (ms since the epoch), or null. */
  toMs: number | null;
  deadLettered: boolean;
}

export type TaskFilterInit = MessageInitShape<typeof TaskFilterSchema>;

export const EMPTY_QUERY: TaskQuery = { text: "", kind: "", statuses: [], fromMs: null, toMs: null, deadLettered: false };

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
// Eight hex digits or more (dashes allowed) read as an id: no task name is taken for one by accident unless
// it is itself such a string, and then the id search still finds nothing it should not.
const ID_LIKE = /^[0-9a-f][0-9a-f-]{7,35}$/;
// The longest text and kind a filter takes (TaskFilter's declared limits).
export const MAX_TEXT = maxChars(TaskFilterSchema, "name_contains");
const MAX_KIND = maxChars(TaskFilterSchema, "kind");

/** Statuses as they appear in the URL (the enum names, lower case). */
const STATUS_WORDS = new Map<string, TaskStatus>(
  Object.values(TaskStatus)
    .filter((v): v is TaskStatus => typeof v === "number" && v !== TaskStatus.UNSPECIFIED)
    .map((v) => [TaskStatus[v].toLowerCase(), v]),
);

/** How the search text is read: a name fragment, an id prefix, or a whole id (that of a task or of a batch). */
export type Search = { by: "none" } | { by: "name"; text: string } | { by: "id-prefix"; text: string } | { by: "id"; text: string };

export function search(text: string): Search {
  const trimmed = text.trim();
  if (!trimmed) return { by: "none" };
  const lower = trimmed.toLowerCase();
  if (UUID.test(lower)) return { by: "id", text: lower };
  if (ID_LIKE.test(lower)) return { by: "id-prefix", text: lower };
  return { by: "name", text: trimmed.slice(0, MAX_TEXT) };
}

export function isEmpty(query: TaskQuery): boolean {
  return (
    search(query.text).by === "none" &&
    !query.kind &&
    query.statuses.length === 0 &&
    query.fromMs === null &&
    query.toMs === null &&
    !query.deadLettered
  );
}

export function sameQuery(a: TaskQuery, b: TaskQuery): boolean {
  return toSearch(a) === toSearch(b);
}

function parseTime(value: string | null): number | null {
  if (!value) return null;
  const parsed = Date.parse(value);
  return Number.isNaN(parsed) ? null : parsed;
}

/** Read the query from a location's search string ("?q=…&status=failed,timed_out"); unknown parts are ignored. */
export function fromSearch(searchString: string): TaskQuery {
  const params = new URLSearchParams(searchString);
  const statuses = (params.get("status") ?? "")
    .split(",")
    .map((word) => STATUS_WORDS.get(word.trim().toLowerCase()))
    .filter((s): s is TaskStatus => s !== undefined);
  return {
    text: (params.get("q") ?? "").slice(0, MAX_TEXT),
    kind: (params.get("kind") ?? "").slice(0, MAX_KIND),
    statuses: [...new Set(statuses)].sort((a, b) => a - b),
    fromMs: parseTime(params.get("from")),
    toMs: parseTime(params.get("to")),
    deadLettered: params.get("dead") === "1",
  };
}

/** The query as a search string ("" when empty, else "?…"); times in UTC so a shared link means the same everywhere. */
export function toSearch(query: TaskQuery): string {
  const params = new URLSearchParams();
  if (query.text.trim()) params.set("q", query.text.trim());
  if (query.kind) params.set("kind", query.kind);
  if (query.statuses.length) params.set("status", [...query.statuses].sort((a, b) => a - b).map((s) => TaskStatus[s].toLowerCase()).join(","));
  if (query.fromMs !== null) params.set("from", new Date(query.fromMs).toISOString());
  if (query.toMs !== null) params.set("to", new Date(query.toMs).toISOString());
  if (query.deadLettered) params.set("dead", "1");
  const text = params.toString();
  return text ? `?${text}` : "";
}

/** The conditions every search shares (all but the text). */
function baseFilter(query: TaskQuery): TaskFilterInit {
  const filter: TaskFilterInit = {};
  if (query.statuses.length) filter.statuses = [...query.statuses];
  if (query.kind) filter.kind = query.kind;
  if (query.fromMs !== null) filter.createdAfter = timestampFromMs(query.fromMs);
  if (query.toMs !== null) filter.createdBefore = timestampFromMs(query.toMs);
  if (query.deadLettered) filter.deadLettered = true;
  return filter;
}

/**
 * The server filters that together select what the query means: one filter, except for a whole id,
 * which may be a task's id or a batch's, so it needs two (each answers in one page: one task, or the
 * replicas of one submission, at most 50).
 */
export function toFilters(query: TaskQuery): TaskFilterInit[] {
  const base = baseFilter(query);
  const s = search(query.text);
  switch (s.by) {
    case "none":
      return [base];
    case "name":
      return [{ ...base, nameContains: s.text }];
    case "id-prefix":
      return [{ ...base, idPrefix: s.text }];
    case "id":
      return [
        { ...base, idPrefix: s.text },
        { ...base, batchId: s.text },
      ];
  }
}

/** Does `task` meet the query, as the server would judge it? Live changes join or leave the view by this. */
export function matches(task: Task, query: TaskQuery): boolean {
  return matcher(query)(task);
}

/** The query's test, read once: the view applies it to every task at each frame that changed something. */
export function matcher(query: TaskQuery): (task: Task) => boolean {
  const s = search(query.text);
  const statuses = query.statuses.length ? new Set(query.statuses) : null;
  const needle = s.by === "none" ? "" : s.by === "name" ? s.text.toLowerCase() : s.text;
  const { kind, deadLettered, fromMs, toMs } = query;
  return (task) => {
    if (statuses && !statuses.has(task.status)) return false;
    if (kind && task.kind !== kind) return false;
    if (deadLettered && !task.deadLettered) return false;
    if (fromMs !== null || toMs !== null) {
      const created = task.createdAt ? timestampMs(task.createdAt) : null;
      if (created === null) return false;
      if (fromMs !== null && created < fromMs) return false;
      if (toMs !== null && created >= toMs) return false;
    }
    switch (s.by) {
      case "none":
        return true;
      case "name":
        return task.name.toLowerCase().includes(needle);
      case "id-prefix":
        return task.id.startsWith(needle);
      case "id":
        return task.id === needle || task.batchId === needle;
    }
  };
}

/** A short sentence for what the view shows, for the notice line and screen readers. */
export function describe(query: TaskQuery): string {
  if (isEmpty(query)) return "all tasks";
  const parts: string[] = [];
  const s = search(query.text);
  if (s.by === "name") parts.push(`name contains “${s.text}”`);
  if (s.by === "id-prefix") parts.push(`id starts with ${s.text}`);
  if (s.by === "id") parts.push(`task or batch ${s.text}`);
  if (query.kind) parts.push(`kind ${query.kind}`);
  if (query.statuses.length) parts.push(query.statuses.map((st) => TaskStatus[st].toLowerCase().replace("_", " ")).join(" or "));
  if (query.deadLettered) parts.push("dead-lettered");
  if (query.fromMs !== null) parts.push(`from ${new Date(query.fromMs).toISOString()}`);
  if (query.toMs !== null) parts.push(`before ${new Date(query.toMs).toISOString()}`);
  return parts.join(", ");
}
