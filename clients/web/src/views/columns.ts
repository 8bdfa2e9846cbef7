// The task table's columns, in one place: each says its header, its width, when it gives way on a narrow
// screen, and how one of its cells is drawn. A new column is one more entry in COLUMNS (the table, its
// header, its responsive layout and its phone layout follow); nothing else needs an edit.

import { h } from "../dom";
import { type Row, isActive, isFinished } from "../feed";
import { concurrencyText, priorityText, waitBadge } from "../fairness";
import { STATUS_LABELS, duration, ms, statusName, timeOfDay, until } from "../format";
import { TaskStatus } from "../gen/resilienttask/v1/task_pb";

/** What a row's buttons do; "details" is its task name, which opens the task's page. */
export type Action = RowAction | "details";
export type RowAction = "cancel" | "cancel-batch" | "retry" | "delete" | "dismiss" | "resubmit";

/** Everything a cell may need to draw itself. */
export interface CellContext {
  row: Row;
  /** "name #replica": how buttons and labels name the row's task. */
  title: string;
  batchSize: number;
  selected: boolean;
  now: number;
}

export interface Cell {
  el: HTMLElement;
  fill(ctx: CellContext): void;
}

export interface Column {
  id: string;
  /** Header text; the select column's header holds a checkbox instead. */
  header: string;
  /** CSS grid track when shown. */
  track: string;
  /** The least width it needs (px), to decide which columns fit. */
  minPx: number;
  /** Columns with the lowest value give way first when the table is narrow; Infinity never does. */
  keep: number;
  /** Shown in the phone layout (two lines per row) too. */
  stacked: boolean;
  create(): Cell;
}

export function setText(el: HTMLElement, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

export function rowTitle(row: Row): string {
  const name = row.task?.name ?? row.pending?.name ?? "";
  return `${name} #${row.replicaIndex + 1}`;
}

/** The buttons a row offers, as [action, visible label]. */
export function actionsFor(row: Row, batchSize: number): [RowAction, string][] {
  if (row.pending) {
    if (!row.pending.failure) return [];
    return row.pending.retryable
      ? [
          ["resubmit", "Retry"],
          ["dismiss", "Dismiss"],
        ]
      : [["dismiss", "Dismiss"]];
  }
  const status = row.task?.status ?? TaskStatus.UNSPECIFIED;
  const actions: [RowAction, string][] = [];
  if (status === TaskStatus.SCHEDULED || status === TaskStatus.QUEUED || status === TaskStatus.RUNNING) {
    actions.push(["cancel", "Cancel"]);
    if (batchSize > 1) actions.push(["cancel-batch", "Cancel batch"]);
  }
  if (status === TaskStatus.FAILED || status === TaskStatus.TIMED_OUT || status === TaskStatus.CANCELLED) {
    actions.push(["retry", "Retry"]);
  }
  if (isFinished(status)) actions.push(["delete", "Delete"]);
  return actions;
}

// Each button's accessible name starts with its visible text and names the task it acts on.
const ARIA_LABELS: Record<RowAction, string> = {
  cancel: "Cancel",
  "cancel-batch": "Cancel batch of",
  retry: "Retry",
  delete: "Delete",
  dismiss: "Dismiss",
  resubmit: "Retry submission of",
};

const cell = (id: string, cls = ""): HTMLElement => h("span", { role: "cell", class: `col-${id} ${cls}`.trim() });

function textColumn(id: string, header: string, track: string, minPx: number, keep: number, text: (ctx: CellContext) => string, cls = "num"): Column {
  return {
    id,
    header,
    track,
    minPx,
    keep,
    stacked: false,
    create() {
      const el = cell(id, cls);
      return { el, fill: (ctx) => setText(el, text(ctx)) };
    },
  };
}

const select: Column = {
  id: "select",
  header: "",
  track: "28px",
  minPx: 28,
  keep: Infinity,
  stacked: true,
  create() {
    const box = h("input", { type: "checkbox", class: "row-select", "data-select": "" });
    const el = cell("select");
    el.append(box);
    return {
      el,
      fill(ctx) {
        box.checked = ctx.selected;
        box.disabled = ctx.row.task === undefined;
        box.setAttribute("aria-label", `Select ${ctx.title}`);
      },
    };
  },
};

const task: Column = {
  id: "task",
  header: "Task",
  track: "minmax(150px, 2fr)",
  minPx: 150,
  keep: Infinity,
  stacked: true,
  create() {
    // The name opens the task's page (attempts, history, logs, payload, result: what the live summaries leave out).
    const name = h("button", { type: "button", class: "task-name", "data-action": "details" });
    const meta = h("span", { class: "task-meta" });
    const el = cell("task", "task");
    el.append(name, meta);
    return {
      el,
      fill({ row, title, batchSize }) {
        const { task: t, pending } = row;
        const label = t?.name ?? pending?.name ?? "";
        const kind = t?.kind ?? pending?.kind ?? "";
        const replica = batchSize > 1 ? ` · #${row.replicaIndex + 1}` : "";
        const problem = pending?.failure ?? t?.error ?? "";
        const dead = t?.deadLettered ? " · dead-lettered" : "";
        const runAt = t?.status === TaskStatus.SCHEDULED ? ms(t.runAt) : null;
        const starts = runAt === null ? "" : ` · starts ${timeOfDay(runAt)}`;
        setText(name, label);
        name.disabled = t === undefined;
        name.setAttribute("aria-label", `${title} details`);
        setText(meta, `${kind}${replica}${starts}${dead}${problem ? ` · ${problem}` : ""}`);
        meta.classList.toggle("problem", Boolean(problem));
        el.title = problem ? `${label}: ${problem}` : label;
      },
    };
  },
};

function state(row: Row): string {
  if (row.pending) return row.pending.failure ? "REFUSED" : "PENDING";
  return statusName(row.task?.status ?? TaskStatus.UNSPECIFIED);
}

const status: Column = {
  id: "status",
  header: "Status",
  track: "112px",
  minPx: 112,
  keep: Infinity,
  stacked: true,
  create() {
    const badge = h("span", { class: "badge" });
    // What a queued task waits for beyond a free worker (a paused kind, a rate limit, its key, its share).
    const wait = h("span", { class: "wait-badge" });
    const el = cell("status", "status");
    el.append(badge, wait);
    return {
      el,
      fill({ row }) {
        const { task: t, pending } = row;
        const label = pending ? (pending.failure ? "Refused" : "Pending") : STATUS_LABELS[t?.status ?? TaskStatus.UNSPECIFIED];
        setText(badge, label);
        badge.className = `badge badge-${state(row).toLowerCase()}`;
        const waiting = t ? waitBadge(t) : null;
        wait.hidden = waiting === null;
        setText(wait, waiting?.text ?? "");
        wait.title = waiting?.detail ?? "";
        wait.dataset.wait = waiting?.reason ?? "";
      },
    };
  },
};

const progress: Column = {
  id: "progress",
  header: "Progress",
  track: "minmax(110px, 1.3fr)",
  minPx: 110,
  keep: Infinity,
  stacked: true,
  create() {
    const fill = h("span", { class: "fill" });
    const bar = h("span", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 }, fill);
    const percent = h("span", { class: "percent" });
    const el = cell("progress", "progress");
    el.append(bar, percent);
    return {
      el,
      fill({ row, title }) {
        const t = row.task;
        const value = t ? Math.round(t.progress * 100) : 0;
        fill.style.width = `${value}%`;
        bar.setAttribute("aria-valuenow", String(value));
        bar.setAttribute("aria-label", `Progress of ${title}`);
        bar.classList.toggle("live", t !== undefined && isActive(t.status));
        setText(percent, t ? `${value}%` : "");
      },
    };
  },
};

const priority = textColumn("priority", "Priority", "70px", 70, 4.5, ({ row: { task: t } }) => (t ? priorityText(t) : "—"));

const concurrencyKey: Column = {
  id: "key",
  header: "Key",
  track: "minmax(90px, 0.9fr)",
  minPx: 90,
  keep: 3.5,
  stacked: false,
  create() {
    // The key on one line, its limit under it, like the task cell's name and meta.
    const name = h("span", { class: "key-name" });
    const limit = h("span", { class: "key-limit" });
    const el = cell("key", "key-cell");
    el.append(name, limit);
    return {
      el,
      fill({ row: { task: t } }) {
        const keyed = t !== undefined && t.concurrencyKey !== "";
        setText(name, keyed ? t.concurrencyKey : "—");
        setText(limit, keyed ? `max ${t.concurrencyLimit}` : "");
        el.title = keyed ? concurrencyText(t) : "";
      },
    };
  },
};

const attempt = textColumn("attempt", "Attempt", "64px", 64, 1, ({ row: { task: t } }) =>
  t && t.attempt > 0 ? `${t.attempt} / ${t.maxAttempts}` : "—",
);

const worker: Column = {
  id: "worker",
  header: "Worker",
  track: "minmax(100px, 1fr)",
  minPx: 100,
  keep: 2,
  stacked: false,
  create() {
    const el = cell("worker", "worker-cell");
    return {
      el,
      fill({ row }) {
        setText(el, row.task?.workerId || "—");
        el.title = row.task?.workerId ?? "";
      },
    };
  },
};

const elapsed = textColumn("duration", "Duration", "74px", 74, 4, ({ row: { task: t }, now }) => {
  const runAt = t?.status === TaskStatus.SCHEDULED ? ms(t.runAt) : null;
  if (runAt !== null) return until(runAt, now);
  const started = ms(t?.startedAt);
  return started === null ? "—" : duration((ms(t?.finishedAt) ?? now) - started);
});

const created = textColumn("created", "Created", "78px", 78, 3, ({ row: { task: t } }) => {
  const at = ms(t?.createdAt);
  return at === null ? "—" : timeOfDay(at);
});

const actions: Column = {
  id: "actions",
  header: "Actions",
  // Wide enough for the widest pair ("Cancel" and "Cancel batch") at the largest font size we ship.
  track: "192px",
  minPx: 192,
  keep: Infinity,
  stacked: true,
  create() {
    const el = cell("actions", "actions");
    let signature = "";
    return {
      el,
      fill({ row, title, batchSize }) {
        const offered = actionsFor(row, batchSize);
        const next = `${row.key}|${offered.map(([a]) => a).join(",")}`;
        if (next === signature) return;
        signature = next;
        el.replaceChildren(
          ...offered.map(([action, text]) =>
            h("button", { type: "button", class: `btn small ${action}`, "data-action": action, "aria-label": `${ARIA_LABELS[action]} ${title}` }, text),
          ),
        );
      },
    };
  },
};

/** The columns, left to right. */
export const COLUMNS: readonly Column[] = [select, task, status, progress, priority, concurrencyKey, attempt, worker, elapsed, created, actions];

/** The row's state name (RUNNING, PENDING, REFUSED, ...): the row's data-status, a hook for styles and tests. */
export const rowState = state;
