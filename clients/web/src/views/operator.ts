// The Operator view: every task kind with its pause switch, its rate limit (edit, clear) and how many tasks
// of every user wait for it. Shown only to users the server says are operators: the first ListKindControls
// decides (PERMISSION_DENIED hides it). The controls and counts cover every user's tasks, which this user's
// task stream does not carry, so the list is asked for when the view opens, after each action, and every
// REFRESH_MS while the view is shown and the tab visible.

import { type OperatorClient, type Refusal, UNARY_TIMEOUT_MS, isNotOperator, isTransient, refusal } from "../api";
import { announce, h } from "../dom";
import { ms, timeOfDay } from "../format";
import type { KindControl } from "../gen/resilienttask/v1/operator_pb";
import { type RateField, periodSeconds, rateFieldOf, rateLimitText, validateRateLimit } from "../operator";

/** How often the shown view asks again, for counts moved by other users' tasks. */
export const REFRESH_MS = 5000;
/** A probe that failed for a passing reason (the server restarting) is tried again this much later. */
const PROBE_RETRY_MS = 30_000;

/** What the server said about this user: the view's tab is offered only to an "operator". */
export type OperatorAccess = "checking" | "operator" | "not-operator" | "unavailable";

interface KindRow {
  el: HTMLTableRowElement;
  control: KindControl;
  toggle: HTMLButtonElement;
  state: HTMLElement;
  rate: HTMLTableCellElement;
  waiting: HTMLTableCellElement;
  editing: boolean;
  busy: boolean;
}

let formCount = 0;

export class OperatorView {
  readonly element: HTMLElement;
  private readonly body: HTMLTableSectionElement;
  private readonly empty: HTMLElement;
  private readonly notice: HTMLElement;
  private readonly rows = new Map<string, KindRow>();
  private readonly call = { timeoutMs: UNARY_TIMEOUT_MS };
  private visible = false;
  private loading = false;
  private again = false;
  private timer: ReturnType<typeof setInterval> | undefined;
  private retry: ReturnType<typeof setTimeout> | undefined;
  private disposed = false;
  /** Grows with every change made here; a list asked for before one is not applied over it. */
  private generation = 0;

  constructor(
    private readonly client: OperatorClient,
    private readonly onAccess: (access: OperatorAccess) => void,
  ) {
    this.body = h("tbody");
    this.empty = h("p", { class: "empty" }, "Loading kinds…");
    this.notice = h("p", { class: "notice-line", role: "status", "aria-live": "polite" });
    const headers = ["Kind", "Paused", "Rate limit", "Waiting"];
    this.element = h(
      "section",
      { class: "panel tasks operator-view", "aria-labelledby": "operator-heading" },
      h(
        "div",
        { class: "toolbar" },
        h("h2", { id: "operator-heading" }, "Task kinds"),
        h("span", { class: "shown-count" }, `Every user's tasks; refreshed every ${REFRESH_MS / 1000} s and after each change.`),
      ),
      this.notice,
      h(
        "div",
        { class: "table-frame schedule-frame" },
        h(
          "table",
          { class: "schedule-table kind-table", "aria-labelledby": "operator-heading" },
          h("thead", {}, h("tr", {}, ...headers.map((c) => h("th", { scope: "col" }, c)))),
          this.body,
        ),
        this.empty,
      ),
    );
  }

  /** Ask once whether this user is an operator; a passing failure is asked again later. */
  probe(): void {
    void this.load(true);
  }

  show(): void {
    this.visible = true;
    void this.load(false);
    clearInterval(this.timer);
    this.timer = setInterval(() => {
      if (!document.hidden) void this.load(false);
    }, REFRESH_MS);
  }

  hide(): void {
    this.visible = false;
    clearInterval(this.timer);
    this.timer = undefined;
  }

  dispose(): void {
    this.disposed = true;
    this.hide();
    clearTimeout(this.retry);
  }

  private async load(probing: boolean): Promise<void> {
    if (this.disposed) return;
    if (this.loading) {
      // One more list after the current one, which may have been asked for before a change.
      if (!probing) this.again = true;
      return;
    }
    this.loading = true;
    const generation = this.generation;
    try {
      const reply = await this.client.listKindControls({}, this.call);
      if (this.disposed) return;
      if (probing) this.onAccess("operator");
      if (generation === this.generation) this.draw(reply.kinds);
    } catch (err) {
      if (this.disposed) return;
      if (isNotOperator(err)) {
        this.hide();
        this.onAccess("not-operator");
      } else if (probing) {
        this.onAccess("unavailable");
        if (isTransient(err)) this.retry = setTimeout(() => this.probe(), PROBE_RETRY_MS);
      } else {
        this.tell(`Could not load the kinds: ${refusal(err).reason}`, true);
      }
    } finally {
      this.loading = false;
      if (this.again && this.visible) {
        this.again = false;
        void this.load(false);
      }
    }
  }

  private tell(message: string, problem = false): void {
    this.notice.textContent = message;
    this.notice.classList.toggle("problem", problem);
  }

  private draw(controls: KindControl[]): void {
    const seen = new Set<string>();
    for (const control of controls) {
      seen.add(control.kind);
      const row = this.rows.get(control.kind) ?? this.createRow(control);
      this.fill(row, control);
    }
    for (const [kind, row] of this.rows) {
      if (!seen.has(kind)) {
        row.el.remove();
        this.rows.delete(kind);
      }
    }
    // Sorted by kind, as the server sends them; rows are moved only when out of place, so focus stays.
    controls.forEach((control, i) => {
      const el = this.rows.get(control.kind)?.el;
      if (el && this.body.children[i] !== el) this.body.insertBefore(el, this.body.children[i] ?? null);
    });
    this.empty.hidden = controls.length > 0;
    this.empty.textContent = "No kinds yet: none is served by a worker or has a control.";
  }

  private createRow(control: KindControl): KindRow {
    const kind = control.kind;
    const toggle = h(
      "button",
      { type: "button", role: "switch", class: "switch", "aria-checked": "false", "aria-label": `Pause ${kind}` },
      h("span", { class: "switch-knob", "aria-hidden": "true" }),
    );
    const state = h("span", { class: "switch-state" });
    const rate = h("td", { class: "rate-cell" });
    const waiting = h("td", { class: "num", "data-count": "waiting" });
    const el = h("tr", { "data-kind": kind }, h("th", { scope: "row", class: "kind-name" }, kind), h("td", { class: "switch-cell" }, toggle, state), rate, waiting);
    const row: KindRow = { el, control, toggle, state, rate, waiting, editing: false, busy: false };
    toggle.addEventListener("click", () => void this.togglePause(row));
    this.rows.set(kind, row);
    return row;
  }

  private fill(row: KindRow, control: KindControl): void {
    row.control = control;
    const paused = control.paused;
    row.toggle.setAttribute("aria-checked", String(paused));
    row.el.dataset.paused = String(paused);
    const since = ms(control.pausedAt);
    row.state.textContent = paused ? (since === null ? "Paused" : `Paused since ${timeOfDay(since)}`) : "Running";
    row.waiting.textContent = String(control.waiting);
    if (!row.editing) this.showRate(row);
  }

  private showRate(row: KindRow): void {
    const { kind, rateLimit } = row.control;
    row.editing = false;
    // Each button's accessible name starts with its visible text and names the kind it acts on.
    const verb = rateLimit ? "Edit" : "Set";
    const edit = h("button", { type: "button", class: "btn small", "aria-label": `${verb} rate limit of ${kind}` }, verb);
    edit.addEventListener("click", () => this.editRate(row));
    const clear = rateLimit ? h("button", { type: "button", class: "btn small danger-outline", "aria-label": `Clear rate limit of ${kind}` }, "Clear") : null;
    clear?.addEventListener("click", () => void this.clearRate(row));
    row.rate.replaceChildren(h("span", { class: "rate-text", "data-rate": kind }, rateLimitText(rateLimit)), h("span", { class: "rate-buttons" }, edit, clear));
  }

  private editRate(row: KindRow): void {
    const { kind, rateLimit } = row.control;
    row.editing = true;
    const n = ++formCount;
    const starts = h("input", { id: `rate-starts-${n}`, inputmode: "numeric", autocomplete: "off", value: rateLimit ? String(rateLimit.starts) : "", "aria-describedby": `rate-starts-${n}-error` });
    const period = h("input", { id: `rate-period-${n}`, inputmode: "decimal", autocomplete: "off", value: rateLimit ? periodSeconds(rateLimit) : "1", "aria-describedby": `rate-period-${n}-error` });
    const fieldErrors: Record<RateField, HTMLElement> = {
      starts: h("p", { class: "field-error", id: `rate-starts-${n}-error` }),
      period: h("p", { class: "field-error", id: `rate-period-${n}-error` }),
    };
    const controls: Record<RateField, HTMLInputElement> = { starts, period };
    const formError = h("p", { class: "form-error", role: "alert" });
    const cancel = h("button", { type: "button", class: "btn small ghost" }, "Cancel");
    const form = h(
      "form",
      { class: "rate-form", novalidate: true, "aria-label": `Rate limit of ${kind}` },
      h("div", { class: "field" }, h("label", { for: starts.id }, "Starts"), starts, fieldErrors.starts),
      h("div", { class: "field" }, h("label", { for: period.id }, "Per (s)"), period, fieldErrors.period),
      h("span", { class: "rate-buttons" }, h("button", { type: "submit", class: "btn small primary" }, "Save"), cancel),
      formError,
    );
    const show = (errors: Partial<Record<RateField, string>>): void => {
      for (const field of ["starts", "period"] as const) {
        const message = errors[field] ?? "";
        fieldErrors[field].textContent = message ? `${field === "starts" ? "Starts" : "Period"} ${message}` : "";
        controls[field].toggleAttribute("aria-invalid", Boolean(message));
      }
    };
    cancel.addEventListener("click", () => {
      this.showRate(row);
      row.rate.querySelector("button")?.focus();
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      formError.textContent = "";
      const result = validateRateLimit(starts.value, period.value);
      if ("errors" in result) {
        show(result.errors);
        controls[result.errors.starts ? "starts" : "period"].focus();
        return;
      }
      show({});
      void this.act(row, "set the rate limit of", () => this.client.setKindRateLimit({ kind, rateLimit: result.limit }, this.call)).then((refused) => {
        if (!refused) {
          row.rate.querySelector("button")?.focus();
          return;
        }
        const field = rateFieldOf(refused.field);
        if (field) {
          show({ [field]: refused.reason });
          controls[field].focus();
        } else {
          formError.textContent = `Not saved: ${refused.field ? `${refused.field}: ` : ""}${refused.reason}`;
        }
      });
    });
    row.rate.replaceChildren(form);
    starts.focus();
  }

  private async togglePause(row: KindRow): Promise<void> {
    const kind = row.control.kind;
    if (row.control.paused) await this.act(row, "resume", () => this.client.resumeKind({ kind }, this.call));
    else await this.act(row, "pause", () => this.client.pauseKind({ kind }, this.call));
  }

  private async clearRate(row: KindRow): Promise<void> {
    const kind = row.control.kind;
    await this.act(row, "clear the rate limit of", () => this.client.clearKindRateLimit({ kind }, this.call));
    row.rate.querySelector("button")?.focus();
  }

  /** Run one change; the answer (the kind's control as it now is) is drawn at once, then the list is asked again. */
  private async act(row: KindRow, verb: string, change: () => Promise<{ kind?: KindControl }>): Promise<Refusal | null> {
    if (row.busy) return null;
    row.busy = true;
    // aria-disabled rather than disabled: a disabled button would drop the keyboard focus.
    row.toggle.setAttribute("aria-disabled", "true");
    row.el.setAttribute("aria-busy", "true");
    this.generation++;
    const kind = row.control.kind;
    try {
      const reply = await change();
      if (reply.kind) {
        row.editing = false;
        this.fill(row, reply.kind);
      }
      const message = `${kind}: ${reply.kind?.paused ? "paused" : "running"}, rate limit ${rateLimitText(reply.kind?.rateLimit)}.`;
      this.tell(message);
      announce(message);
      return null;
    } catch (err) {
      if (isNotOperator(err)) {
        this.hide();
        this.onAccess("not-operator");
      }
      const refused = refusal(err);
      if (!row.editing) this.tell(`Could not ${verb} ${kind}: ${refused.reason}`, true);
      return refused;
    } finally {
      row.busy = false;
      row.toggle.removeAttribute("aria-disabled");
      row.el.removeAttribute("aria-busy");
      if (this.visible) void this.load(false);
    }
  }
}
