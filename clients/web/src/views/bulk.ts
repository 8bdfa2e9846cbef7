// The selection of tasks (row checkboxes, Shift for a range, or every task matching the filter) and the bulk
// actions on it: a bar that says what is selected, a confirmation that states how many tasks the action
// will take (CountTasks for a filter), then the bulk RPC page by page with a progress bar and the result.

import type { SchedulerClient } from "../api";
import { announce, h } from "../dom";
import { APPLICABLE, type BulkTarget, type BulkTotals, type BulkVerb, VERB_LABELS, narrow, plural, runBulk } from "../bulk";
import type { Row } from "../feed";
import { type TaskQuery, isEmpty, toFilters } from "../query";

const CALL = { timeoutMs: 30_000 };

export interface BulkContext {
  query(): TaskQuery;
  shownRows(): readonly Row[];
  get(key: string): Row | undefined;
  /** The selection changed: repaint the rows' checkboxes. */
  repaint(): void;
  tell(message: string, problem?: boolean): void;
  describe(err: unknown): string;
}

export class BulkActions {
  readonly bar: HTMLElement;
  readonly dialog: HTMLDialogElement;
  private readonly summary: HTMLElement;
  private readonly selectAll: HTMLButtonElement;
  private readonly heading: HTMLElement;
  private readonly text: HTMLElement;
  private readonly meter: HTMLProgressElement;
  private readonly meterText: HTMLElement;
  private readonly back: HTMLButtonElement;
  private readonly go: HTMLButtonElement;
  private selected = new Set<string>();
  private anchor: string | null = null;
  /** Every task matching the query is selected (not only those loaded); its count once known. */
  private all = false;
  private allCount: number | null = null;
  private running = false;
  private pending: { verb: BulkVerb; target: BulkTarget; count: number } | null = null;

  constructor(
    private readonly scheduler: SchedulerClient,
    private readonly ctx: BulkContext,
  ) {
    this.summary = h("span", { class: "bulk-summary", role: "status" });
    this.selectAll = h("button", { type: "button", class: "btn ghost small", "data-bulk": "all" }, "Select all matching");
    this.selectAll.addEventListener("click", () => void this.selectAllMatching());
    const verbButton = (verb: BulkVerb): HTMLButtonElement => {
      const b = h("button", { type: "button", class: `btn small ${verb}`, "data-bulk": verb }, `${VERB_LABELS[verb].verb} selected`);
      b.addEventListener("click", () => void this.confirm(verb));
      return b;
    };
    const clear = h("button", { type: "button", class: "btn ghost small" }, "Clear selection");
    clear.addEventListener("click", () => this.clear());
    this.bar = h(
      "div",
      { class: "bulk-bar", role: "region", "aria-label": "Selected tasks", hidden: true },
      this.summary,
      this.selectAll,
      h("span", { class: "spacer" }),
      verbButton("cancel"),
      verbButton("retry"),
      verbButton("delete"),
      clear,
    );

    this.heading = h("h2", { id: "bulk-heading" });
    this.text = h("p", { id: "bulk-text" });
    this.meter = h("progress", { max: 1, value: 0, "aria-labelledby": "bulk-heading", hidden: true });
    this.meterText = h("p", { class: "bulk-progress", role: "status" });
    this.back = h("button", { type: "button", class: "btn" }, "Go back");
    this.go = h("button", { type: "button", class: "btn danger" });
    this.back.addEventListener("click", () => this.dialog.close());
    this.go.addEventListener("click", () => void this.execute());
    this.dialog = h(
      "dialog",
      { class: "confirm bulk-dialog", "aria-labelledby": "bulk-heading", "aria-describedby": "bulk-text" },
      this.heading,
      this.text,
      this.meter,
      this.meterText,
      h("div", { class: "buttons" }, this.back, this.go),
    );
    // While the pages are being sent the dialog stays: Escape would hide the progress, not stop the work.
    this.dialog.addEventListener("cancel", (event) => {
      if (this.running) event.preventDefault();
    });
    this.update();
  }

  isSelected(key: string): boolean {
    if (this.all) return this.ctx.get(key)?.task !== undefined;
    return this.selected.has(key);
  }

  /** A row's checkbox; with `range`, every row from the last one toggled to this one takes its state. */
  toggle(row: Row, selected: boolean, range: boolean): void {
    if (this.all) this.leaveAll();
    const shown = this.ctx.shownRows();
    const from = range && this.anchor ? shown.findIndex((r) => r.key === this.anchor) : -1;
    const to = shown.findIndex((r) => r.key === row.key);
    const keys = from >= 0 && to >= 0 ? shown.slice(Math.min(from, to), Math.max(from, to) + 1).filter((r) => r.task).map((r) => r.key) : [row.key];
    for (const key of keys) (selected ? this.selected.add(key) : this.selected.delete(key));
    this.anchor = row.key;
    this.changed();
  }

  /** The header checkbox: every row shown (loaded and matching), or none. */
  selectShown(selected: boolean): void {
    if (this.all) this.leaveAll();
    if (selected) {
      for (const row of this.ctx.shownRows()) if (row.task) this.selected.add(row.key);
    } else {
      this.selected.clear();
    }
    this.changed();
  }

  clear(): void {
    this.selected.clear();
    this.all = false;
    this.allCount = null;
    this.anchor = null;
    this.changed();
  }

  /** Rows that left the view (deleted, or no longer matching) leave the selection too. */
  prune(shown: readonly Row[]): void {
    if (this.all || this.selected.size === 0) return;
    const keys = new Set(shown.map((r) => r.key));
    let any = false;
    for (const key of this.selected) if (!keys.has(key)) any = this.selected.delete(key) || any;
    if (any) this.update();
  }

  private leaveAll(): void {
    // From "all matching" to a list: the rows loaded stand for it, and the change is made to them.
    this.all = false;
    this.allCount = null;
    this.selected = new Set(this.ctx.shownRows().filter((r) => r.task).map((r) => r.key));
  }

  private changed(): void {
    this.update();
    this.ctx.repaint();
  }

  private update(): void {
    const count = this.all ? this.allCount : this.selected.size;
    this.bar.hidden = !this.all && this.selected.size === 0;
    const scope = isEmpty(this.ctx.query()) ? "" : " matching the filter";
    this.summary.textContent = this.all
      ? count === null
        ? `Counting every task${scope}…`
        : `All ${plural(count, "task")}${scope} selected`
      : `${plural(this.selected.size, "task")} selected`;
    this.selectAll.hidden = this.all;
    this.selectAll.textContent = `Select all tasks${scope}`;
  }

  private async selectAllMatching(): Promise<void> {
    this.all = true;
    this.allCount = null;
    this.selected.clear();
    this.changed();
    const filters = toFilters(this.ctx.query());
    try {
      // A whole id is two filters (task or batch): what matches is at most one page, all of it shown.
      const count = filters.length === 1 ? Number((await this.scheduler.countTasks({ filter: filters[0] }, CALL)).count) : this.shownTasks().length;
      if (this.all) this.allCount = count;
    } catch (err) {
      this.ctx.tell(`Could not count the tasks: ${this.ctx.describe(err)}`, true);
      this.all = false;
    }
    this.changed();
  }

  private shownTasks(): string[] {
    return this.ctx.shownRows().flatMap((r) => (r.task ? [r.task.id] : []));
  }

  /** Work out what `verb` would take, and ask. */
  private async confirm(verb: BulkVerb): Promise<void> {
    const label = VERB_LABELS[verb];
    let target: BulkTarget;
    let count: number;
    let note = "";
    try {
      const filters = toFilters(this.ctx.query());
      if (this.all && filters.length === 1) {
        const narrowed = narrow(filters[0], verb);
        count = narrowed ? Number((await this.scheduler.countTasks({ filter: narrowed }, CALL)).count) : 0;
        target = { kind: "filter", filter: narrowed ?? filters[0] };
        const total = this.allCount ?? count;
        if (total > count) note = ` The other ${plural(total - count, "task")} selected are not ${label.applies} and are left as they are.`;
      } else {
        const ids = this.all ? this.shownTasks() : [...this.selected];
        const applicable = ids.filter((id) => {
          const status = this.ctx.get(id)?.task?.status;
          return status !== undefined && APPLICABLE[verb].includes(status);
        });
        count = applicable.length;
        target = { kind: "ids", ids: applicable };
        if (ids.length > count) note = ` ${plural(ids.length - count, "selected task")} ${ids.length - count === 1 ? "is" : "are"} not ${label.applies} and ${ids.length - count === 1 ? "is" : "are"} left as ${ids.length - count === 1 ? "it is" : "they are"}.`;
      }
    } catch (err) {
      this.ctx.tell(`Could not count the tasks: ${this.ctx.describe(err)}`, true);
      return;
    }
    this.pending = { verb, target, count };
    this.heading.textContent = `${label.verb} ${plural(count, "task")}?`;
    this.text.textContent =
      count === 0
        ? `None of the selected tasks is ${label.applies}: there is nothing to ${label.verb.toLowerCase()}.${note}`
        : `${verb === "delete" ? "This removes them for good." : verb === "cancel" ? "Queued ones are cancelled at once; running ones are stopped." : "They are queued again, with their attempts counted anew."}${note}`;
    this.meter.hidden = true;
    this.meterText.textContent = "";
    this.go.hidden = count === 0;
    this.go.disabled = false;
    this.go.className = `btn ${verb === "retry" ? "primary" : "danger"}`;
    this.go.textContent = `${label.verb} ${plural(count, "task")}`;
    this.back.textContent = "Go back";
    this.back.disabled = false;
    this.dialog.showModal();
    this.back.focus();
  }

  private async execute(): Promise<void> {
    const job = this.pending;
    if (!job || this.running) return;
    this.running = true;
    const label = VERB_LABELS[job.verb];
    this.go.disabled = true;
    this.back.disabled = true;
    this.meter.hidden = false;
    this.meter.max = Math.max(1, job.count);
    this.meter.value = 0;
    const s = this.scheduler;
    const call =
      job.verb === "cancel"
        ? (r: Parameters<typeof s.cancelTasks>[0]) => s.cancelTasks(r, CALL)
        : job.verb === "retry"
          ? (r: Parameters<typeof s.retryTasks>[0]) => s.retryTasks(r, CALL)
          : (r: Parameters<typeof s.deleteTasks>[0]) => s.deleteTasks(r, CALL);
    const report = (t: BulkTotals): void => {
      const done = t.affected + t.skipped;
      this.meter.value = Math.min(done, this.meter.max);
      this.meterText.textContent = `${label.done} ${t.affected.toLocaleString("en-US")} of ${job.count.toLocaleString("en-US")}…`;
    };
    let totals: BulkTotals | null = null;
    try {
      totals = await runBulk(call, job.target, report);
      const skipped = totals.skipped ? `; ${plural(totals.skipped, "task")} left as ${totals.skipped === 1 ? "it was" : "they were"}` : "";
      const message = `${label.done}: ${plural(totals.affected, "task")}${skipped}.`;
      this.meterText.textContent = message;
      this.ctx.tell(message);
      announce(message);
      this.clear();
    } catch (err) {
      this.meterText.textContent = `Stopped: ${this.ctx.describe(err)}`;
      this.ctx.tell(`Could not ${label.verb.toLowerCase()} every task: ${this.ctx.describe(err)}`, true);
    } finally {
      this.running = false;
      this.pending = null;
      this.go.hidden = true;
      this.back.disabled = false;
      this.back.textContent = "Close";
      this.back.focus();
    }
  }
}
