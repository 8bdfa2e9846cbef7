// The Schedules view: the create form (schedule-form.ts) and the list of the user's schedules (next runs, last
// result, counts) with pause/resume, trigger now and delete. Schedules have no stream of their own: the list is asked for
// when the view opens, after each action, when the task stream shows a task a schedule submitted, and when
// the earliest next run passes (a slot may have been skipped) — never on a fixed timer.

import { type Api, type Refusal, UNARY_TIMEOUT_MS, refusal } from "../api";
import { announce, h } from "../dom";
import { STATUS_LABELS, ms, statusName, timeOfDay, until } from "../format";
import { ListSchedulesRequestSchema, type Schedule } from "../gen/resilienttask/v1/schedule_pb";
import { type Task, TaskStatus } from "../gen/resilienttask/v1/task_pb";
import { valueRange } from "../limits";
import { type CreateInit, timingText } from "../schedules";
import { newRequestId } from "../validation";
import { ScheduleCreateForm } from "./schedule-form";

const PAGE_SIZE = valueRange(ListSchedulesRequestSchema, "page_size").max;
const NEXT_RUNS_SHOWN = 3;
// Events of one firing arrive together; one list call answers them all.
const CHANGE_DEBOUNCE_MS = 300;
// After the earliest next run, look again this much later (the firing has usually committed by then).
const AFTER_SLOT_MS = 300;
const MAX_TIMER_MS = 2 ** 31 - 1;
const CONFIRM_MS = 4000;

type Action = "pause" | "resume" | "trigger" | "delete";

function nextRunsText(schedule: Schedule, now: number): string {
  if (schedule.paused) return "—";
  const runs = schedule.nextRuns
    .slice(0, NEXT_RUNS_SHOWN)
    .map((t) => ms(t))
    .filter((t): t is number => t !== null);
  return runs.map((t, i) => (i === 0 ? `${timeOfDay(t)} (${until(t, now)})` : timeOfDay(t))).join(", ") || "—";
}

export class SchedulesView {
  readonly element: HTMLElement;
  private readonly form: ScheduleCreateForm;
  private readonly body: HTMLTableSectionElement;
  private readonly empty: HTMLElement;
  private readonly notice: HTMLElement;
  private schedules: Schedule[] = [];
  private visible = false;
  private loaded = false;
  private loading = false;
  private again = false;
  private debounce: ReturnType<typeof setTimeout> | undefined;
  private slotTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly confirming = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly drawn = new Map<string, ScheduleRow>();
  /** Grows with every change made here; a list asked for before one is not applied over it. */
  private generation = 0;

  constructor(
    private readonly api: Api,
    /** Tasks a trigger submitted, for the task feed. */
    private readonly submitted: (tasks: Task[]) => void,
  ) {
    this.form = new ScheduleCreateForm((form, request) => this.create(form, request));
    this.body = h("tbody");
    this.empty = h("p", { class: "empty" }, "Loading schedules…");
    this.notice = h("p", { class: "notice-line", role: "status", "aria-live": "polite" });
    const headers = ["Schedule", "State", "Next runs", "Last result", "Fired", "Skipped", "Actions"];
    this.element = h(
      "div",
      { class: "columns schedules-view" },
      h("div", { class: "side" }, this.form.element),
      h(
        "section",
        { class: "panel tasks", "aria-labelledby": "schedules-heading" },
        h("div", { class: "toolbar" }, h("h2", { id: "schedules-heading" }, "Schedules")),
        this.notice,
        h(
          "div",
          { class: "table-frame schedule-frame" },
          h(
            "table",
            { class: "schedule-table", "aria-labelledby": "schedules-heading" },
            h("thead", {}, h("tr", {}, ...headers.map((c) => h("th", { scope: "col" }, c)))),
            this.body,
          ),
          this.empty,
        ),
      ),
    );
    this.body.addEventListener("click", (event) => {
      const button = (event.target as Element).closest<HTMLButtonElement>("button[data-action]");
      const id = button?.closest<HTMLElement>("[data-schedule-id]")?.dataset.scheduleId;
      const schedule = this.schedules.find((s) => s.id === id);
      if (button && schedule) void this.act(button.dataset.action as Action, schedule);
    });
  }

  setKinds(kinds: string[]): void {
    this.form.setKinds(kinds);
  }

  show(): void {
    this.visible = true;
    void this.load();
  }

  hide(): void {
    this.visible = false;
    clearTimeout(this.slotTimer);
  }

  /** The task stream showed tasks a schedule submitted (or changed): its counts and last result moved. */
  changed(): void {
    if (!this.visible || this.debounce !== undefined) return;
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      void this.load();
    }, CHANGE_DEBOUNCE_MS);
  }

  dispose(): void {
    this.hide();
    clearTimeout(this.debounce);
    for (const timer of this.confirming.values()) clearTimeout(timer);
  }

  private tell(message: string, problem = false): void {
    this.notice.textContent = message;
    this.notice.classList.toggle("problem", problem);
  }

  private async load(): Promise<void> {
    if (this.loading) {
      this.again = true;
      return;
    }
    this.loading = true;
    try {
      do {
        this.again = false;
        const asked = this.generation;
        const found: Schedule[] = [];
        let pageToken = "";
        do {
          const reply = await this.api.schedules.listSchedules({ pageSize: PAGE_SIZE, pageToken }, { timeoutMs: UNARY_TIMEOUT_MS });
          found.push(...reply.schedules);
          pageToken = reply.nextPageToken;
        } while (pageToken);
        if (asked !== this.generation) {
          this.again = true; // a pause, resume, create or delete answered meanwhile: this list may predate it
          continue;
        }
        this.schedules = found;
        this.loaded = true;
        this.paint();
      } while (this.again);
    } catch (err) {
      this.tell(`Could not load schedules: ${refusal(err).reason}`, true);
    } finally {
      this.loading = false;
      this.armSlotTimer();
    }
  }

  /** Look again once the earliest next run has passed: a skipped slot changes counts without any task. */
  private armSlotTimer(): void {
    clearTimeout(this.slotTimer);
    if (!this.visible) return;
    const next = this.schedules
      .filter((s) => !s.paused && s.nextRuns.length > 0)
      .map((s) => ms(s.nextRuns[0]) ?? Infinity)
      .reduce((a, b) => Math.min(a, b), Infinity);
    if (next === Infinity) return;
    const wait = Math.min(MAX_TIMER_MS, Math.max(AFTER_SLOT_MS, next - Date.now() + AFTER_SLOT_MS));
    this.slotTimer = setTimeout(() => void this.load(), wait);
  }

  private replace(schedule: Schedule | undefined): void {
    if (!schedule) return;
    this.generation++;
    const index = this.schedules.findIndex((s) => s.id === schedule.id);
    if (index < 0) this.schedules = [...this.schedules, schedule];
    else if (this.schedules[index].version <= schedule.version) this.schedules[index] = schedule;
    this.paint();
    this.armSlotTimer();
  }

  private async create(form: ScheduleCreateForm, request: CreateInit): Promise<Refusal | null> {
    try {
      const reply = await this.api.schedules.createSchedule(request, { timeoutMs: UNARY_TIMEOUT_MS });
      this.replace(reply.schedule);
      form.reset();
      const name = reply.schedule?.spec?.name ?? "";
      this.tell(`Schedule ${name} created.`);
      announce(`Schedule ${name} created`);
      return null;
    } catch (err) {
      return refusal(err);
    }
  }

  private async act(action: Action, schedule: Schedule): Promise<void> {
    const name = schedule.spec?.name ?? "";
    const call = { timeoutMs: UNARY_TIMEOUT_MS };
    const scheduleId = schedule.id;
    try {
      if (action === "pause") {
        this.replace((await this.api.schedules.pauseSchedule({ scheduleId }, call)).schedule);
        this.tell(`${name} paused.`);
      } else if (action === "resume") {
        this.replace((await this.api.schedules.resumeSchedule({ scheduleId }, call)).schedule);
        this.tell(`${name} resumed.`);
      } else if (action === "trigger") {
        const reply = await this.api.schedules.triggerSchedule({ scheduleId, requestId: newRequestId() }, call);
        this.submitted(reply.tasks);
        const n = reply.tasks.length;
        this.tell(reply.skipped ? `${name} skipped: its previous run is still active.` : `${name} triggered: ${n} task${n === 1 ? "" : "s"} submitted.`);
        void this.load();
      } else if (action === "delete") {
        // The first press asks; a second press within a few seconds deletes.
        if (!this.confirming.has(scheduleId)) {
          this.confirming.set(
            scheduleId,
            setTimeout(() => {
              this.confirming.delete(scheduleId);
              this.paint();
            }, CONFIRM_MS),
          );
          this.paint();
          return;
        }
        clearTimeout(this.confirming.get(scheduleId));
        this.confirming.delete(scheduleId);
        await this.api.schedules.deleteSchedule({ scheduleId }, call);
        this.generation++;
        this.schedules = this.schedules.filter((s) => s.id !== scheduleId);
        this.paint();
        this.tell(`${name} deleted; the tasks it submitted are kept.`);
      }
      announce(this.notice.textContent ?? "");
    } catch (err) {
      this.tell(`Could not ${action} ${name}: ${refusal(err).reason}`, true);
    }
  }

  /** Draw the list; also called every second so "in 12s" counts down without any request. Rows and their
   * buttons are kept and updated in place, so a button being clicked or focused stays the same element. */
  paint(now = Date.now()): void {
    if (!this.visible) return;
    this.empty.hidden = this.schedules.length > 0;
    this.empty.textContent = this.loaded ? "No schedules yet. Create one and its tasks appear under Tasks as it fires." : "Loading schedules…";
    const rows = this.schedules.map((schedule) => {
      let drawn = this.drawn.get(schedule.id);
      if (!drawn) {
        drawn = new ScheduleRow(schedule.id);
        this.drawn.set(schedule.id, drawn);
      }
      drawn.update(schedule, this.confirming.has(schedule.id), now);
      return drawn.row;
    });
    const shown = new Set(this.schedules.map((s) => s.id));
    for (const id of [...this.drawn.keys()]) if (!shown.has(id)) this.drawn.delete(id);
    const current = [...this.body.children];
    if (current.length !== rows.length || rows.some((row, i) => current[i] !== row)) this.body.replaceChildren(...rows);
  }
}

function setText(el: HTMLElement, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

/** One schedule's row: built once, its cells and buttons updated as the schedule changes. */
class ScheduleRow {
  readonly row: HTMLTableRowElement;
  private readonly name = h("span", { class: "schedule-name" });
  private readonly meta = h("span", { class: "task-meta" });
  private readonly state = h("span", { class: "badge" });
  private readonly next = h("td", { class: "num next-runs" });
  private readonly last = h("td", {});
  private readonly fired = h("td", { class: "num", "data-count": "fired" });
  private readonly skipped = h("td", { class: "num", "data-count": "skipped" });
  private readonly toggle = h("button", { type: "button", class: "btn small" });
  private readonly trigger = h("button", { type: "button", class: "btn small trigger", "data-action": "trigger" }, "Trigger now");
  private readonly remove = h("button", { type: "button", class: "btn small delete", "data-action": "delete" });
  private lastKey = "";

  constructor(id: string) {
    this.row = h(
      "tr",
      { "data-schedule-id": id },
      h("td", { class: "task" }, this.name, this.meta),
      h("td", {}, this.state),
      this.next,
      this.last,
      this.fired,
      this.skipped,
      h("td", {}, h("div", { class: "actions" }, this.toggle, this.trigger, this.remove)),
    );
  }

  update(schedule: Schedule, confirming: boolean, now: number): void {
    const spec = schedule.spec;
    const name = spec?.name ?? "";
    const task = spec?.task;
    const template = task ? `${task.name} · ${task.kind || "sleep"}${task.replicas > 1 ? ` × ${task.replicas}` : ""}` : "";
    this.row.dataset.paused = String(schedule.paused);
    setText(this.name, name);
    setText(this.meta, `${timingText(schedule)} · ${template}`);
    setText(this.state, schedule.paused ? "Paused" : "Active");
    this.state.className = `badge ${schedule.paused ? "badge-cancelling" : "badge-succeeded"}`;
    setText(this.next, nextRunsText(schedule, now));
    setText(this.fired, String(schedule.fired));
    setText(this.skipped, String(schedule.skipped));
    const toggle: [Action, string] = schedule.paused ? ["resume", "Resume"] : ["pause", "Pause"];
    this.toggle.dataset.action = toggle[0];
    this.toggle.className = `btn small ${toggle[0]}`;
    setText(this.toggle, toggle[1]);
    this.toggle.setAttribute("aria-label", `${toggle[1]} ${name}`);
    this.trigger.setAttribute("aria-label", `Trigger now ${name}`);
    const removeText = confirming ? "Confirm delete" : "Delete";
    setText(this.remove, removeText);
    this.remove.setAttribute("aria-label", `${removeText} ${name}`);

    const key = `${schedule.lastError}|${schedule.lastStatus}|${ms(schedule.lastSlot)}`;
    if (key === this.lastKey) return;
    this.lastKey = key;
    const lastSlot = ms(schedule.lastSlot);
    const status = schedule.lastStatus;
    this.last.replaceChildren(
      schedule.lastError
        ? h("span", { class: "problem-text", title: schedule.lastError }, `Refused: ${schedule.lastError}`)
        : lastSlot === null
          ? h("span", { class: "muted" }, "never fired")
          : h(
              "span",
              { class: "last-result" },
              h(
                "span",
                { class: `badge badge-${statusName(status).toLowerCase()}`, "data-last-status": statusName(status) },
                status === TaskStatus.UNSPECIFIED ? "—" : STATUS_LABELS[status],
              ),
              ` ${timeOfDay(lastSlot)}`,
            ),
    );
  }
}
