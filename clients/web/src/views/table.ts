// The task table: only the rows in view exist in the DOM (plus a few either side), so ten thousand live
// rows scroll and update smoothly. A row keeps its element while it stays in view, so focus on its
// buttons follows the task, not the position. Its columns (views/columns.ts) give way from the least
// needed as the table narrows, and below the width of the essential ones each row takes two lines.

import { h } from "../dom";
import type { Row } from "../feed";
import { type Action, COLUMNS, type Cell, type Column, rowState, rowTitle } from "./columns";

export type { Action } from "./columns";

export const ROW_HEIGHT = 52;
/** A row in the phone layout: two lines. */
export const STACKED_ROW_HEIGHT = 92;
const HEADER_HEIGHT = 40;
const OVERSCAN = 8;
// Must match .trow's column gap and side padding in styles.css.
const GAP_PX = 12;
const PADDING_PX = 24;

interface Slot {
  el: HTMLDivElement;
  key: string;
  cells: Cell[];
}

export interface TableHandlers {
  action(action: Action, row: Row): void;
  /** A row's checkbox was toggled; `range` when Shift was held (select from the last one toggled). */
  select(row: Row, selected: boolean, range: boolean): void;
  /** The header checkbox: every row shown, or none. */
  selectShown(selected: boolean): void;
  isSelected(key: string): boolean;
}

/** Which columns fit in `widthPx`, and whether even the essential ones do not (then rows take two lines). */
export function fit(columns: readonly Column[], widthPx: number): { shown: Column[]; stacked: boolean } {
  let shown = [...columns];
  const need = (cs: Column[]): number => cs.reduce((sum, c) => sum + c.minPx, 0) + GAP_PX * (cs.length - 1) + PADDING_PX;
  while (need(shown) > widthPx) {
    const droppable = shown.filter((c) => Number.isFinite(c.keep));
    if (!droppable.length) break;
    const least = droppable.reduce((a, b) => (b.keep < a.keep ? b : a));
    shown = shown.filter((c) => c !== least);
  }
  if (need(shown) <= widthPx) return { shown, stacked: false };
  return { shown: columns.filter((c) => c.stacked), stacked: true };
}

export class TaskTable {
  readonly element: HTMLElement;
  private readonly table: HTMLElement;
  private readonly viewport: HTMLDivElement;
  private readonly body: HTMLDivElement;
  private readonly empty: HTMLParagraphElement;
  private readonly headers: HTMLElement[];
  private readonly selectShown: HTMLInputElement;
  private slots: Slot[] = [];
  private rows: Row[] = [];
  private byKey = new Map<string, Row>();
  private batchSizes = new Map<string, number>();
  private width = -1;
  private rowHeight = ROW_HEIGHT;
  private headerHeight = HEADER_HEIGHT;
  private shown = new Set<string>(COLUMNS.map((c) => c.id));

  constructor(private readonly on: TableHandlers) {
    this.selectShown = h("input", { type: "checkbox", class: "row-select", "aria-label": "Select every task shown" });
    this.selectShown.addEventListener("change", () => this.on.selectShown(this.selectShown.checked));
    this.headers = COLUMNS.map((c) =>
      c.id === "select"
        ? h("span", { role: "columnheader", class: "col-select" }, this.selectShown)
        : h("span", { role: "columnheader", class: `col-${c.id}` }, c.header),
    );
    const header = h("div", { role: "rowgroup", class: "thead" }, h("div", { role: "row", class: "trow", "aria-rowindex": 1 }, ...this.headers));
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
      const row = this.rowOf(button);
      if (button && row) this.on.action(button.dataset.action as Action, row);
    });
    this.body.addEventListener("change", (event) => {
      const box = event.target as HTMLInputElement;
      const row = box.matches("[data-select]") ? this.rowOf(box) : undefined;
      if (row) this.on.select(row, box.checked, (event as Event & { shiftKey?: boolean }).shiftKey === true || this.shift);
    });
    // A change event does not say whether Shift was held: remember it from the click that caused it.
    this.body.addEventListener("click", (event) => (this.shift = event.shiftKey), { capture: true });
  }

  private shift = false;

  private rowOf(el: Element | null): Row | undefined {
    const key = el?.closest<HTMLElement>("[data-key]")?.dataset.key;
    return key ? this.byKey.get(key) : undefined;
  }

  /** The rows shown, in order (those a "select every task shown" takes). */
  get shownRows(): readonly Row[] {
    return this.rows;
  }

  /** Show these rows (already filtered and ordered); `emptyText` when there are none. */
  update(rows: Row[], batchSizes: Map<string, number>, emptyText: string): void {
    if (rows !== this.rows) {
      this.rows = rows;
      this.byKey = new Map(rows.map((r) => [r.key, r]));
    }
    this.batchSizes = batchSizes;
    this.table.setAttribute("aria-rowcount", String(rows.length + 1));
    this.empty.hidden = rows.length > 0;
    if (this.empty.textContent !== emptyText) this.empty.textContent = emptyText;
    this.paint();
  }

  /** The viewport's scroll position is near the end of the rows (time to load more). */
  nearEnd(rowsLeft = 40): boolean {
    const bottom = this.viewport.scrollTop + this.viewport.clientHeight - this.headerHeight;
    return bottom >= (this.rows.length - rowsLeft) * this.rowHeight;
  }

  onScroll(listener: () => void): void {
    this.viewport.addEventListener("scroll", listener, { passive: true });
  }

  private layout(): void {
    const width = this.viewport.clientWidth;
    if (width === this.width || width === 0) return;
    this.width = width;
    const { shown, stacked } = fit(COLUMNS, width);
    this.shown = new Set(shown.map((c) => c.id));
    this.table.classList.toggle("stacked", stacked);
    this.rowHeight = stacked ? STACKED_ROW_HEIGHT : ROW_HEIGHT;
    this.headerHeight = stacked ? 0 : HEADER_HEIGHT;
    this.table.style.setProperty("--columns", shown.map((c) => c.track).join(" "));
    this.table.style.setProperty("--row", `${this.rowHeight}px`);
    COLUMNS.forEach((c, i) => (this.headers[i].hidden = !this.shown.has(c.id)));
    for (const slot of this.slots) this.hideCells(slot);
  }

  private hideCells(slot: Slot): void {
    COLUMNS.forEach((c, i) => (slot.cells[i].el.hidden = !this.shown.has(c.id)));
  }

  /** Render the rows in view; also called every second so running durations tick. */
  paint(now = Date.now()): void {
    this.layout();
    const rowHeight = this.rowHeight;
    this.body.style.height = `${this.rows.length * rowHeight}px`;
    const top = Math.max(0, this.viewport.scrollTop - this.headerHeight);
    const height = this.viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / rowHeight) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + height) / rowHeight) + OVERSCAN);
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
    this.body.style.paddingTop = `${first * rowHeight}px`;
    this.slots.forEach((slot, i) => {
      const current = this.body.children[i];
      if (current !== slot.el) this.body.insertBefore(slot.el, current ?? null);
    });
    // Moving an element drops its focus; give it back if the element is still shown.
    if (focused instanceof HTMLElement && focused.isConnected && document.activeElement !== focused) {
      focused.focus({ preventScroll: true });
    }
    const selectable = this.rows.filter((r) => r.task);
    const selected = selectable.filter((r) => this.on.isSelected(r.key)).length;
    this.selectShown.checked = selected > 0 && selected === selectable.length;
    this.selectShown.indeterminate = selected > 0 && selected < selectable.length;
    this.selectShown.disabled = selectable.length === 0;
  }

  private createSlot(): Slot {
    const cells = COLUMNS.map((c) => c.create());
    const slot: Slot = { el: h("div", { role: "row", class: "trow" }), key: "", cells };
    slot.el.append(...cells.map((c) => c.el));
    this.hideCells(slot);
    return slot;
  }

  private fill(slot: Slot, row: Row, index: number, now: number): void {
    slot.key = row.key;
    slot.el.dataset.key = row.key;
    slot.el.setAttribute("aria-rowindex", String(index + 2));
    slot.el.dataset.status = rowState(row);
    const selected = this.on.isSelected(row.key);
    slot.el.className = `trow${row.pending ? " optimistic" : ""}${selected ? " selected" : ""}`;
    const ctx = {
      row,
      title: rowTitle(row),
      batchSize: row.pending?.replicas ?? this.batchSizes.get(row.task?.batchId ?? "") ?? 1,
      selected,
      now,
    };
    COLUMNS.forEach((c, i) => {
      if (this.shown.has(c.id)) slot.cells[i].fill(ctx);
    });
  }
}
