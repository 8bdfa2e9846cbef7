// The search and filter bar above the task table. It holds no state of its own beyond its controls: it
// reports a TaskQuery on every change (the text after a short pause in typing) and can be set from one
// (a reload, a shared link, the browser's back button).

import { h } from "../dom";
import { STATUS_LABELS } from "../format";
import { TaskStatus } from "../gen/resilienttask/v1/task_pb";
import { EMPTY_QUERY, MAX_TEXT, type TaskQuery } from "../query";

const TYPING_PAUSE_MS = 250;
const STATUSES = [
  TaskStatus.SCHEDULED,
  TaskStatus.QUEUED,
  TaskStatus.RUNNING,
  TaskStatus.CANCELLING,
  TaskStatus.SUCCEEDED,
  TaskStatus.FAILED,
  TaskStatus.CANCELLED,
  TaskStatus.TIMED_OUT,
];

/** A datetime-local value (local time, to the minute) for a time, and back. */
function toLocalInput(millis: number | null): string {
  if (millis === null) return "";
  const d = new Date(millis - new Date(millis).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 16);
}

function fromLocalInput(value: string): number | null {
  if (!value) return null;
  const parsed = new Date(value).getTime(); // a value without a zone is local time
  return Number.isNaN(parsed) ? null : parsed;
}

export class FilterBar {
  readonly element: HTMLElement;
  private readonly text: HTMLInputElement;
  private readonly kind: HTMLSelectElement;
  private readonly statusPicker: HTMLDetailsElement;
  private readonly statusSummary: HTMLElement;
  private readonly statusBoxes = new Map<TaskStatus, HTMLInputElement>();
  private readonly from: HTMLInputElement;
  private readonly to: HTMLInputElement;
  private readonly dead: HTMLInputElement;
  private readonly reset: HTMLButtonElement;
  private kinds: string[] = [];
  private typing = 0;

  constructor(private readonly changed: (query: TaskQuery) => void) {
    this.text = h("input", {
      id: "task-search",
      type: "search",
      autocomplete: "off",
      spellcheck: "false",
      maxlength: MAX_TEXT,
      placeholder: "Name, task id or batch id",
    });
    this.kind = h("select", { id: "kind-filter" });
    this.statusSummary = h("span", {});
    const boxes = STATUSES.map((status) => {
      const box = h("input", { type: "checkbox", value: TaskStatus[status].toLowerCase() });
      this.statusBoxes.set(status, box);
      return h("label", { class: "check" }, box, STATUS_LABELS[status]);
    });
    this.statusPicker = h(
      "details",
      { class: "status-picker" },
      h("summary", { class: "btn", id: "status-filter" }, this.statusSummary),
      h("fieldset", { class: "status-options" }, h("legend", { class: "visually-hidden" }, "Statuses shown"), ...boxes),
    );
    this.from = h("input", { id: "created-from", type: "datetime-local" });
    this.to = h("input", { id: "created-to", type: "datetime-local" });
    this.dead = h("input", { id: "dead-filter", type: "checkbox" });
    this.reset = h("button", { type: "button", class: "btn ghost small" }, "Clear filters");

    this.text.addEventListener("input", () => {
      clearTimeout(this.typing);
      this.typing = window.setTimeout(() => this.emit(), TYPING_PAUSE_MS);
    });
    // Enter searches at once, without waiting for the pause.
    this.text.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        clearTimeout(this.typing);
        this.emit();
      }
    });
    for (const control of [this.kind, this.from, this.to, this.dead]) control.addEventListener("change", () => this.emit());
    this.statusPicker.addEventListener("change", () => this.emit());
    // Escape folds the status list away and gives focus back to its button.
    this.statusPicker.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.statusPicker.open) {
        event.stopPropagation();
        this.statusPicker.open = false;
        this.statusPicker.querySelector("summary")?.focus();
      }
    });
    this.reset.addEventListener("click", () => {
      this.set(EMPTY_QUERY);
      this.emit();
      this.text.focus();
    });

    const field = (label: string, forId: string, control: HTMLElement, cls = ""): HTMLElement =>
      h("div", { class: `filter ${cls}`.trim() }, h("label", { for: forId }, label), control);
    this.element = h(
      "div",
      { class: "filters", role: "search", "aria-label": "Task filters" },
      field("Search", "task-search", this.text, "filter-search"),
      field("Kind", "kind-filter", this.kind),
      h("div", { class: "filter" }, h("span", { class: "filter-label", "aria-hidden": "true" }, "Status"), this.statusPicker),
      field("Created from", "created-from", this.from),
      field("Created before", "created-to", this.to),
      h("div", { class: "filter filter-check" }, h("label", { class: "check" }, this.dead, "Dead-lettered only")),
      h("div", { class: "filter filter-reset" }, this.reset),
    );
    this.setKinds([]);
    this.set(EMPTY_QUERY);
  }

  /** The kinds the server knows; a kind in the query that is not among them stays offered. */
  setKinds(kinds: readonly string[]): void {
    this.kinds = [...kinds];
    this.fillKinds(this.kind.value);
  }

  private fillKinds(chosen: string): void {
    const names = [...new Set([...this.kinds, ...(chosen ? [chosen] : [])])].sort();
    this.kind.replaceChildren(h("option", { value: "" }, "Any kind"), ...names.map((k) => h("option", { value: k }, k)));
    this.kind.value = chosen;
  }

  /** Show `query` in the controls (without reporting it). */
  set(query: TaskQuery): void {
    if (this.text.value.trim() !== query.text.trim()) this.text.value = query.text;
    this.fillKinds(query.kind);
    for (const [status, box] of this.statusBoxes) box.checked = query.statuses.includes(status);
    this.from.value = toLocalInput(query.fromMs);
    this.to.value = toLocalInput(query.toMs);
    this.dead.checked = query.deadLettered;
    this.summarise(query.statuses);
  }

  read(): TaskQuery {
    const statuses = [...this.statusBoxes].filter(([, box]) => box.checked).map(([status]) => status);
    return {
      text: this.text.value.trim(),
      kind: this.kind.value,
      statuses: statuses.sort((a, b) => a - b),
      fromMs: fromLocalInput(this.from.value),
      toMs: fromLocalInput(this.to.value),
      deadLettered: this.dead.checked,
    };
  }

  private summarise(statuses: TaskStatus[]): void {
    const text = statuses.length === 0 ? "Any status" : statuses.length <= 2 ? statuses.map((s) => STATUS_LABELS[s]).join(", ") : `${statuses.length} statuses`;
    this.statusSummary.textContent = text;
    this.statusSummary.parentElement?.setAttribute("aria-label", `Status: ${text}`);
  }

  private emit(): void {
    const query = this.read();
    this.summarise(query.statuses);
    this.changed(query);
  }

  dispose(): void {
    clearTimeout(this.typing);
  }
}
