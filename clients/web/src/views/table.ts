// The task table: only the rows in view exist in the DOM (plus a few either side), so thousands of
// live rows scroll and update smoothly. A row keeps its element while it stays in view, so focus on
// its buttons follows the task, not the position.

import { h } from "../dom";
import { type Row, isActive, isFinished } from "../feed";
import { STATUS_LABELS, duration, ms, statusName, timeOfDay, until } from "../format";
import { TaskStatus } from "../gen/resilienttask/v1/task_pb";

/** What a row's buttons do; "details" is its task name, which opens the task's whole record. */
export type Action = RowAction | "details";
type RowAction = "cancel" | "cancel-batch" | "retry" | "delete" | "dismiss" | "resubmit";

export const ROW_HEIGHT = 52;
const HEADER_HEIGHT = 40;
const OVERSCAN = 8;
const COLUMNS = ["Task", "Status", "Progress", "Attempt", "Worker", "Duration", "Created", "Actions"];

interface Slot {
  el: HTMLDivElement;
  key: string;
  name: HTMLButtonElement;
  meta: HTMLElement;
  badge: HTMLElement;
  bar: HTMLElement;
  fill: HTMLElement;
  percent: HTMLElement;
  attempt: HTMLElement;
  worker: HTMLElement;
  duration: HTMLElement;
  created: HTMLElement;
  actions: HTMLElement;
  signature: string;
}

function setText(el: HTMLElement, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

function rowTitle(row: Row): string {
  const name = row.task?.name ?? row.pending?.name ?? "";
  return `${name} #${row.replicaIndex + 1}`;
}

/** The buttons a row offers, as [action, visible label]. */
function actionsFor(row: Row, batchSize: number): [RowAction, string][] {
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

export class TaskTable {
  readonly element: HTMLElement;
  private readonly table: HTMLElement;
  private readonly viewport: HTMLDivElement;
  private readonly body: HTMLDivElement;
  private readonly empty: HTMLParagraphElement;
  private slots: Slot[] = [];
  private rows: Row[] = [];
  private byKey = new Map<string, Row>();
  private batchSizes = new Map<string, number>();

  constructor(private readonly onAction: (action: Action, row: Row) => void) {
    const header = h(
      "div",
      { role: "rowgroup", class: "thead" },
      h("div", { role: "row", class: "trow", "aria-rowindex": 1 }, ...COLUMNS.map((c) => h("span", { role: "columnheader" }, c))),
    );
    this.body = h("div", { role: "rowgroup", class: "tbody" });
    this.table = h("div", { role: "table", class: "table", "aria-label": "Tasks", "aria-rowcount": 1 }, header, this.body);
    // The scrolling frame can take focus, so the keyboard scrolls it too.
    this.viewport = h("div", { class: "viewport", tabindex: 0, role: "region", "aria-label": "Task list" }, this.table);
    this.empty = h("p", { class: "empty" });
    this.element = h("div", { class: "table-frame" }, this.viewport, this.empty);
    this.viewport.addEventListener("scroll", () => this.paint(), { passive: true });
    new ResizeObserver(() => this.paint()).observe(this.viewport);
    this.body.addEventListener("click", (event) => {
      const button = (event.target as Element).closest<HTMLButtonElement>("button[data-action]");
      const key = button?.closest<HTMLElement>("[data-key]")?.dataset.key;
      const row = key ? this.byKey.get(key) : undefined;
      if (button && row) this.onAction(button.dataset.action as Action, row);
    });
  }

  /** Show these rows (already filtered and ordered); `emptyText` when there are none. */
  update(rows: Row[], batchSizes: Map<string, number>, emptyText: string): void {
    this.rows = rows;
    this.byKey = new Map(rows.map((r) => [r.key, r]));
    this.batchSizes = batchSizes;
    this.body.style.height = `${rows.length * ROW_HEIGHT}px`;
    this.table.setAttribute("aria-rowcount", String(rows.length + 1));
    this.empty.hidden = rows.length > 0;
    setText(this.empty, emptyText);
    this.paint();
  }

  /** Render the rows in view; also called every second so running durations tick. */
  paint(now = Date.now()): void {
    const top = Math.max(0, this.viewport.scrollTop - HEADER_HEIGHT);
    const height = this.viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
    const wanted = this.rows.slice(first, last);
    const wantedKeys = new Set(wanted.map((r) => r.key));
    const kept = new Map<string, Slot>();
    const free: Slot[] = [];
    for (const slot of this.slots) (wantedKeys.has(slot.key) ? kept.set(slot.key, slot) : free.push(slot));
    const focused = document.activeElement;
    this.slots = wanted.map((row, i) => {
      const slot = kept.get(row.key) ?? free.pop() ?? this.createSlot();
      this.fill(slot, row, first + i, now);
      return slot;
    });
    for (const slot of free) slot.el.remove();
    this.body.style.paddingTop = `${first * ROW_HEIGHT}px`;
    this.slots.forEach((slot, i) => {
      const current = this.body.children[i];
      if (current !== slot.el) this.body.insertBefore(slot.el, current ?? null);
    });
    // Moving an element drops its focus; give it back if the element is still shown.
    if (focused instanceof HTMLElement && focused.isConnected && document.activeElement !== focused) {
      focused.focus({ preventScroll: true });
    }
  }

  private createSlot(): Slot {
    const cell = (cls: string, ...children: Node[]): HTMLElement => h("span", { role: "cell", class: cls }, ...children);
    // The name opens the task's details (payload, result, whole error: what the live summaries leave out).
    const name = h("button", { type: "button", class: "task-name", "data-action": "details" });
    const meta = h("span", { class: "task-meta" });
    const badge = h("span", { class: "badge" });
    const fill = h("span", { class: "fill" });
    const bar = h("span", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 }, fill);
    const percent = h("span", { class: "percent" });
    const slot: Slot = {
      el: h("div", { role: "row", class: "trow" }),
      key: "",
      name,
      meta,
      badge,
      bar,
      fill,
      percent,
      attempt: cell("num"),
      worker: cell("worker-cell"),
      duration: cell("num"),
      created: cell("num"),
      actions: cell("actions"),
      signature: "",
    };
    slot.el.append(
      cell("task", name, meta),
      cell("status", badge),
      cell("progress", bar, percent),
      slot.attempt,
      slot.worker,
      slot.duration,
      slot.created,
      slot.actions,
    );
    return slot;
  }

  private fill(slot: Slot, row: Row, index: number, now: number): void {
    const { task, pending } = row;
    slot.key = row.key;
    slot.el.dataset.key = row.key;
    slot.el.setAttribute("aria-rowindex", String(index + 2));
    const state = pending ? (pending.failure ? "REFUSED" : "PENDING") : statusName(task?.status ?? TaskStatus.UNSPECIFIED);
    slot.el.dataset.status = state;
    slot.el.className = `trow${pending ? " optimistic" : ""}`;

    const batchSize = pending?.replicas ?? this.batchSizes.get(task?.batchId ?? "") ?? 1;
    const name = task?.name ?? pending?.name ?? "";
    const kind = task?.kind ?? pending?.kind ?? "";
    const replica = batchSize > 1 ? ` · #${row.replicaIndex + 1}` : "";
    const problem = pending?.failure ?? task?.error ?? "";
    const dead = task?.deadLettered ? " · dead-lettered" : "";
    const runAt = task?.status === TaskStatus.SCHEDULED ? ms(task.runAt) : null;
    const starts = runAt === null ? "" : ` · starts ${timeOfDay(runAt)}`;
    setText(slot.name, name);
    slot.name.disabled = task === undefined;
    slot.name.setAttribute("aria-label", `${rowTitle(row)} details`);
    setText(slot.meta, `${kind}${replica}${starts}${dead}${problem ? ` · ${problem}` : ""}`);
    slot.meta.classList.toggle("problem", Boolean(problem));
    slot.el.title = problem ? `${name}: ${problem}` : name;

    const label = pending ? (pending.failure ? "Refused" : "Pending") : STATUS_LABELS[task?.status ?? TaskStatus.UNSPECIFIED];
    setText(slot.badge, label);
    slot.badge.className = `badge badge-${state.toLowerCase()}`;

    const percent = task ? Math.round(task.progress * 100) : 0;
    slot.fill.style.width = `${percent}%`;
    slot.bar.setAttribute("aria-valuenow", String(percent));
    slot.bar.setAttribute("aria-label", `Progress of ${rowTitle(row)}`);
    slot.bar.classList.toggle("live", task !== undefined && isActive(task.status));
    setText(slot.percent, task ? `${percent}%` : "");

    setText(slot.attempt, task && task.attempt > 0 ? `${task.attempt} / ${task.maxAttempts}` : "—");
    setText(slot.worker, task?.workerId || "—");
    slot.worker.title = task?.workerId ?? "";
    const started = ms(task?.startedAt);
    const finished = ms(task?.finishedAt);
    if (runAt !== null) setText(slot.duration, until(runAt, now));
    else setText(slot.duration, started === null ? "—" : duration((finished ?? now) - started));
    const created = ms(task?.createdAt);
    setText(slot.created, created === null ? "—" : timeOfDay(created));

    const actions = actionsFor(row, batchSize);
    const signature = `${row.key}|${actions.map(([a]) => a).join(",")}`;
    if (signature !== slot.signature) {
      slot.signature = signature;
      const title = rowTitle(row);
      slot.actions.replaceChildren(
        ...actions.map(([action, text]) =>
          h(
            "button",
            { type: "button", class: `btn small ${action}`, "data-action": action, "aria-label": `${ARIA_LABELS[action]} ${title}` },
            text,
          ),
        ),
      );
    }
  }
}
