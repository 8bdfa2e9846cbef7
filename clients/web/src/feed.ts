// Everything the dashboard shows, kept from the WatchTasks stream alone, plus optimistic rows for
// submissions the server has not answered yet. Plain state: no DOM, no network, so it is unit-tested.

import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { TaskEvent, WatchTasksResponse } from "./gen/resilienttask/v1/scheduler_pb";
import { type Task, type TaskStats, TaskStatus, type Worker } from "./gen/resilienttask/v1/task_pb";

/** An optimistic row: one replica of a submission still on its way, or refused. */
export interface Pending {
  requestId: string;
  replicaIndex: number;
  replicas: number;
  name: string;
  kind: string;
  /** Why the submission failed; undefined while waiting for the server. */
  failure?: string;
  /** True when sending the same request again may succeed (the failure was not a refusal). */
  retryable: boolean;
}

export interface Row {
  /** The task id, or pendingKey(...) for an optimistic row. */
  key: string;
  /** Sort position, newest first (creation time in ms). A confirmed optimistic row keeps its own. */
  order: number;
  replicaIndex: number;
  task?: Task;
  pending?: Pending;
}

/** "all", "active" (queued, running or cancelling), one status, or any test of a row. */
export type Filter = "all" | "active" | TaskStatus | ((row: Row) => boolean);

const ACTIVE = new Set([TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.CANCELLING]);

export function isActive(status: TaskStatus): boolean {
  return ACTIVE.has(status);
}

export function isFinished(status: TaskStatus): boolean {
  return status !== TaskStatus.UNSPECIFIED && status !== TaskStatus.SCHEDULED && !ACTIVE.has(status);
}

export function pendingKey(requestId: string, replicaIndex: number): string {
  return `pending:${requestId}:${replicaIndex}`;
}

function byPosition(a: Row, b: Row): number {
  return b.order - a.order || a.replicaIndex - b.replicaIndex || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}

function matches(row: Row, filter: Filter): boolean {
  if (filter === "all") return true;
  if (typeof filter === "function") return filter(row);
  if (!row.task) return filter === "active" || filter === TaskStatus.QUEUED;
  return filter === "active" ? isActive(row.task.status) : row.task.status === filter;
}

export class Feed {
  stats: TaskStats | undefined;
  workers: Worker[] = [];
  /** Grows with every change; views compare it to know whether to render. */
  revision = 0;
  /** False until the first snapshot arrived. */
  ready = false;
  private rows = new Map<string, Row>();
  // Ids deleted since the last snapshot: a late event about one must not bring it back.
  private deleted = new Set<string>();
  private sorted: Row[] | null = null;
  private batchSizes = new Map<string, number>();
  private listeners = new Set<() => void>();

  /** Call `listener` after every change; returns the unsubscribe function. */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Take one stream message. */
  apply(message: WatchTasksResponse): void {
    const kind = message.kind;
    switch (kind.case) {
      case "snapshot":
        this.snapshot(kind.value.tasks, kind.value.stats, kind.value.workers);
        break;
      case "event":
        this.event(kind.value);
        this.changed();
        break;
      case "events":
        // Changes that were ready together: applied in order, rendered once.
        for (const event of kind.value.events) this.event(event);
        this.changed();
        break;
      case "workers":
        this.workers = kind.value.workers;
        this.changed();
        break;
      default:
        break; // heartbeats carry only a resume token
    }
  }

  private event(event: TaskEvent): void {
    if (event.stats) this.stats = event.stats;
    if (event.task && event.deleted) this.remove(event.task.id);
    else if (event.task) this.upsert(event.task);
  }

  /** Tasks from an answer (submit, cancel, retry, an older page): kept only if newer than what is shown. */
  merge(tasks: readonly Task[]): void {
    let any = false;
    for (const task of tasks) any = this.upsert(task) || any;
    if (any) this.changed();
  }

  addPending(requestId: string, replicas: number, name: string, kind: string): void {
    // A retried submission reuses its request_id and so its rows: never twice the rows.
    const order = Math.max(Date.now(), this.newestOrder() + 1);
    for (let i = 0; i < replicas; i++) {
      const key = pendingKey(requestId, i);
      const held = this.rows.get(key);
      const pending: Pending = { requestId, replicaIndex: i, replicas, name, kind, retryable: false };
      if (held) held.pending = pending;
      else this.rows.set(key, { key, order, replicaIndex: i, pending });
    }
    this.sorted = null;
    this.changed();
  }

  /** Mark the submission's unconfirmed rows as failed, with the reason shown on each. */
  failPending(requestId: string, failure: string, retryable: boolean): void {
    for (const row of this.rows.values()) {
      if (row.pending?.requestId === requestId) row.pending = { ...row.pending, failure, retryable };
    }
    this.changed();
  }

  dismissPending(requestId: string): void {
    for (const [key, row] of this.rows) if (row.pending?.requestId === requestId) this.rows.delete(key);
    this.sorted = null;
    this.changed();
  }

  /** True when the stream said this task was deleted (since the last snapshot). */
  isDeleted(id: string): boolean {
    return this.deleted.has(id);
  }

  get(key: string): Row | undefined {
    return this.rows.get(key);
  }

  get size(): number {
    return this.rows.size;
  }

  /** The server tasks held (not optimistic rows), in no particular order. */
  *tasks(): IterableIterator<Task> {
    for (const row of this.rows.values()) if (row.task) yield row.task;
  }

  /** Rows that are server tasks (not optimistic ones). */
  get taskCount(): number {
    let n = 0;
    for (const row of this.rows.values()) if (row.task) n++;
    return n;
  }

  /** The rows passing `filter`, in display order, and how many tasks each batch has. */
  view(filter: Filter): { rows: Row[]; batchSizes: Map<string, number> } {
    // Both change only when rows come or go, not when a task's state changes: kept until then.
    if (this.sorted === null) {
      this.sorted = [...this.rows.values()].sort(byPosition);
      this.batchSizes = new Map<string, number>();
      for (const row of this.sorted) {
        const batch = row.task?.batchId;
        if (batch) this.batchSizes.set(batch, (this.batchSizes.get(batch) ?? 0) + 1);
      }
    }
    const batchSizes = this.batchSizes;
    return { rows: filter === "all" ? this.sorted : this.sorted.filter((row) => matches(row, filter)), batchSizes };
  }

  private snapshot(tasks: readonly Task[], stats: TaskStats | undefined, workers: Worker[]): void {
    const previous = this.rows;
    // A snapshot is the whole truth about tasks; optimistic rows are not in it yet, so they stay.
    this.rows = new Map([...previous].filter(([, row]) => row.pending));
    this.deleted.clear();
    for (const task of tasks) this.insert(task, previous.get(task.id)?.order);
    this.stats = stats;
    this.workers = workers;
    this.ready = true;
    this.sorted = null;
    this.changed();
  }

  /** Returns true when the task was new or newer than the one shown. */
  private upsert(task: Task): boolean {
    if (this.deleted.has(task.id)) return false;
    const held = this.rows.get(task.id);
    if (held?.task) {
      if (task.version <= held.task.version) return false;
      held.task = task;
      return true;
    }
    this.insert(task, undefined);
    return true;
  }

  private insert(task: Task, order: number | undefined): void {
    // The first sight of a task this tab submitted replaces its optimistic row, in the same place.
    const optimistic = pendingKey(task.requestId, task.replicaIndex);
    const pending = this.rows.get(optimistic);
    if (pending) this.rows.delete(optimistic);
    const created = task.createdAt ? timestampMs(task.createdAt) : Date.now();
    this.rows.set(task.id, {
      key: task.id,
      order: pending?.order ?? order ?? created,
      replicaIndex: task.replicaIndex,
      task,
    });
    this.sorted = null;
  }

  private remove(id: string): void {
    this.deleted.add(id);
    if (this.rows.delete(id)) this.sorted = null;
  }

  private newestOrder(): number {
    let newest = 0;
    for (const row of this.rows.values()) newest = Math.max(newest, row.order);
    return newest;
  }

  private changed(): void {
    this.revision++;
    for (const listener of this.listeners) listener();
  }
}
