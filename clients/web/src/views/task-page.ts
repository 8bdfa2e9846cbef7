// One task's page (a side sheet with its own address, #/tasks/<id>): its whole record, every attempt, the
// history of its transitions, its live log, and what can be done to it. The live stream carries summaries
// (no payload, no result, the error cut short), so GetTaskHistory is asked when the page opens and again
// when the stream says the task moved on (status, attempt); progress in between comes from the stream.

import { toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { SchedulerClient } from "../api";
import { h } from "../dom";
import { isActive, isFinished } from "../feed";
import { STATUS_LABELS, duration, ms, statusName, timeOfDay } from "../format";
import type { GetTaskHistoryResponse, TaskAttempt, TaskTransition } from "../gen/resilienttask/v1/scheduler_pb";
import { type Task, TaskStatus, WaitReason } from "../gen/resilienttask/v1/task_pb";
import { LogFollower } from "../logs";
import { LogView } from "./logs";

export type TaskAction = "cancel" | "retry" | "delete";

const WAIT_REASONS: Record<WaitReason, string> = {
  [WaitReason.UNSPECIFIED]: "",
  [WaitReason.SLOT_SHARE]: "its owner's fair share of the worker slots",
  [WaitReason.CONCURRENCY_KEY]: "its concurrency key's limit",
  [WaitReason.RATE_LIMIT]: "its kind's rate limit",
  [WaitReason.KIND_PAUSED]: "its kind, paused by an operator",
};

const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium", hourCycle: "h23" });

function when(millis: number | null): string {
  return millis === null ? "—" : DATE_TIME.format(millis);
}

/** What the page needs to know about the task from a history answer (or GetTask when history is not served). */
interface Record_ {
  task: Task;
  attempts: TaskAttempt[] | null;
  transitions: TaskTransition[] | null;
  truncated: boolean;
}

export class TaskPage {
  readonly element: HTMLDialogElement;
  private readonly heading: HTMLElement;
  private readonly badge: HTMLElement;
  private readonly status: HTMLElement;
  private readonly summary: HTMLElement;
  private readonly attempts: HTMLElement;
  private readonly history: HTMLElement;
  private readonly progressFill: HTMLElement;
  private readonly progressBar: HTMLElement;
  private readonly progressText: HTMLElement;
  private readonly buttons: Record<TaskAction, HTMLButtonElement>;
  private readonly logs = new LogView();
  private follower: LogFollower | null = null;
  private taskId = "";
  private shown: Task | null = null;
  /** The newest version the stream announced that needs a fresh record (status or attempt moved). */
  private wanted = -1n;
  private fetched = -1n;
  private fetching = false;

  constructor(
    private readonly scheduler: SchedulerClient,
    private readonly act: (action: TaskAction, task: Task) => Promise<void>,
    private readonly describe: (err: unknown) => string,
    private readonly closed: () => void,
  ) {
    this.heading = h("h2", { id: "task-page-heading" });
    this.badge = h("span", { class: "badge" });
    this.status = h("p", { class: "details-status", role: "status" });
    this.summary = h("div", { class: "details-body" });
    this.progressFill = h("span", { class: "fill" });
    this.progressBar = h("span", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": "Progress" }, this.progressFill);
    this.progressText = h("span", { class: "percent" });
    this.attempts = h("div", { class: "table-scroll" });
    this.history = h("div", { class: "table-scroll" });
    const button = (action: TaskAction, text: string, cls: string): HTMLButtonElement => {
      const b = h("button", { type: "button", class: `btn small ${cls}`, "data-task-action": action }, text);
      b.addEventListener("click", () => void this.run(action));
      return b;
    };
    this.buttons = {
      cancel: button("cancel", "Cancel this task", "cancel"),
      retry: button("retry", "Retry this task", "retry"),
      delete: button("delete", "Delete this task", "delete"),
    };
    const close = h("button", { type: "button", class: "btn small", value: "close" }, "Close");
    close.addEventListener("click", () => this.close());
    this.element = h(
      "dialog",
      { class: "task-page", "aria-labelledby": "task-page-heading" },
      h(
        "header",
        { class: "task-page-head" },
        h("div", { class: "task-page-title" }, this.heading, this.badge),
        h("div", { class: "buttons" }, this.buttons.cancel, this.buttons.retry, this.buttons.delete, close),
      ),
      this.status,
      h("div", { class: "progress task-page-progress" }, this.progressBar, this.progressText),
      this.summary,
      h("section", { class: "task-page-section", "aria-labelledby": "attempts-heading" }, h("h3", { id: "attempts-heading" }, "Attempts"), this.attempts),
      h("section", { class: "task-page-section", "aria-labelledby": "history-heading" }, h("h3", { id: "history-heading" }, "History"), this.history),
      this.logs.element,
    );
    this.element.addEventListener("close", () => {
      const was = this.taskId;
      this.stopLogs();
      this.taskId = "";
      this.shown = null;
      if (was) this.closed();
    });
  }

  /** The id of the task shown, or "". */
  get openFor(): string {
    return this.taskId;
  }

  /** Show the task `taskId`; `summary` (from the live list) fills the page until the server answers. */
  open(taskId: string, summary: Task | undefined): void {
    if (this.taskId === taskId && this.element.open) return;
    this.stopLogs();
    this.taskId = taskId;
    this.shown = null;
    this.fetched = -1n;
    this.wanted = summary?.version ?? 0n;
    this.heading.textContent = summary ? summary.name : "Task";
    this.summary.replaceChildren();
    this.attempts.replaceChildren();
    this.history.replaceChildren();
    this.status.textContent = "Loading…";
    if (summary) this.live(summary);
    this.logs.clear();
    this.follower = new LogFollower(this.scheduler, taskId, {
      lines: (lines, dropped) => this.logs.add(lines, dropped),
      state: (state, detail) => this.logs.setState(state, detail),
    });
    this.follower.start();
    if (!this.element.open) this.element.showModal();
    void this.fetch();
  }

  close(): void {
    if (this.element.open) this.element.close();
  }

  /** The stream announced `task` (a summary): progress is shown at once; a move of status or attempt fetches the record. */
  changed(task: Task | undefined): void {
    if (!task || task.id !== this.taskId) return;
    const shown = this.shown;
    if (shown && task.version <= shown.version) return;
    this.live(task);
    const moved = !shown || task.status !== shown.status || task.attempt !== shown.attempt || task.waitReason !== shown.waitReason || task.deadLettered !== shown.deadLettered;
    if (moved && task.version > this.wanted) {
      this.wanted = task.version;
      void this.fetch();
    }
  }

  /** The stream said the task was deleted. */
  deleted(taskId: string): void {
    if (taskId !== this.taskId) return;
    this.status.textContent = "This task was deleted.";
    for (const b of Object.values(this.buttons)) b.disabled = true;
    this.stopLogs();
  }

  private stopLogs(): void {
    this.follower?.stop();
    this.follower = null;
  }

  private async run(action: TaskAction): Promise<void> {
    const task = this.shown;
    if (!task) return;
    this.buttons[action].disabled = true;
    try {
      await this.act(action, task);
      if (action === "delete") this.close();
    } finally {
      if (this.shown) this.enable(this.shown);
    }
  }

  private async load(taskId: string): Promise<Record_> {
    try {
      const reply: GetTaskHistoryResponse = await this.scheduler.getTaskHistory({ taskId }, { timeoutMs: 15_000 });
      if (!reply.task) throw new Error("the server sent no task");
      return { task: reply.task, attempts: reply.attempts, transitions: reply.transitions, truncated: reply.truncated };
    } catch (err) {
      // A server without the history call still shows the task itself.
      if (ConnectError.from(err).code !== Code.Unimplemented) throw err;
      const task = (await this.scheduler.getTask({ taskId }, { timeoutMs: 15_000 })).task;
      if (!task) throw new Error("the server sent no task");
      return { task, attempts: null, transitions: null, truncated: false };
    }
  }

  private async fetch(): Promise<void> {
    if (this.fetching) return; // the running fetch looks again when it ends
    this.fetching = true;
    const taskId = this.taskId;
    try {
      while (this.taskId === taskId && this.fetched < this.wanted) {
        const asked = this.wanted;
        try {
          const record = await this.load(taskId);
          if (this.taskId !== taskId) return;
          this.render(record);
          // The answer may be past the version asked for; never ask again for one older than it.
          this.fetched = record.task.version > asked ? record.task.version : asked;
          if (record.task.version > this.wanted) this.wanted = record.task.version;
        } catch (err) {
          if (this.taskId === taskId) this.status.textContent = `Could not load the task: ${this.describe(err)}`;
          return;
        }
      }
    } finally {
      this.fetching = false;
    }
  }

  /** The fields the live stream keeps current. */
  private live(task: Task): void {
    this.badge.textContent = STATUS_LABELS[task.status];
    this.badge.className = `badge badge-${statusName(task.status).toLowerCase()}`;
    this.element.dataset.status = statusName(task.status);
    const percent = Math.round(task.progress * 100);
    this.progressFill.style.width = `${percent}%`;
    this.progressBar.setAttribute("aria-valuenow", String(percent));
    this.progressBar.classList.toggle("live", isActive(task.status));
    this.progressText.textContent = `${percent}%`;
    if (this.shown) this.shown = { ...this.shown, status: task.status, progress: task.progress, version: task.version };
    this.enable(task);
  }

  private enable(task: Task): void {
    const s = task.status;
    this.buttons.cancel.disabled = !(s === TaskStatus.SCHEDULED || s === TaskStatus.QUEUED || s === TaskStatus.RUNNING);
    this.buttons.retry.disabled = !(s === TaskStatus.FAILED || s === TaskStatus.TIMED_OUT || s === TaskStatus.CANCELLED);
    this.buttons.delete.disabled = !isFinished(s);
  }

  private render(record: Record_): void {
    const task = record.task;
    this.shown = task;
    this.status.textContent = "";
    this.heading.textContent = task.replicaIndex > 0 || task.batchId ? `${task.name} #${task.replicaIndex + 1}` : task.name;
    this.live(task);
    const started = ms(task.startedAt);
    const finished = ms(task.finishedAt);
    const rows: [string, Node | string][] = [
      ["Status", STATUS_LABELS[task.status] + (task.deadLettered ? " (dead-lettered)" : "")],
      ["Kind", task.kind],
      ["Attempt", `${task.attempt} of ${task.maxAttempts}`],
      ["Worker", task.workerId || "—"],
    ];
    if (task.priority) rows.push(["Priority", String(task.priority)]);
    if (task.concurrencyKey) rows.push(["Concurrency key", `${task.concurrencyKey} (at most ${task.concurrencyLimit} at once)`]);
    if (task.waitReason !== WaitReason.UNSPECIFIED && task.status === TaskStatus.QUEUED) rows.push(["Waiting for", WAIT_REASONS[task.waitReason]]);
    if (ms(task.runAt) !== null) rows.push(["Starts at", when(ms(task.runAt))]);
    rows.push(
      ["Created", when(ms(task.createdAt))],
      ["Started", when(started)],
      ["Finished", finished === null ? "—" : `${when(finished)}${started === null ? "" : ` (ran ${duration(finished - started)})`}`],
      ["Task id", h("code", {}, task.id)],
      ["Batch id", h("code", {}, task.batchId || "—")],
    );
    if (task.scheduleId) rows.push(["Schedule id", h("code", {}, task.scheduleId)]);
    if (task.error) rows.push(["Error", h("pre", { class: "details-error" }, task.error)]);
    rows.push(["Payload", h("pre", { class: "details-json", "data-field": "payload" }, JSON.stringify(task.payload ?? {}, null, 2))]);
    const result = task.result ? JSON.stringify(toJson(ValueSchema, task.result), null, 2) : "—";
    rows.push(["Result", h("pre", { class: "details-json", "data-field": "result" }, result)]);
    this.summary.replaceChildren(h("dl", { class: "details-list" }, ...rows.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)])));
    this.attempts.replaceChildren(record.attempts === null ? h("p", { class: "muted" }, "Not available from this server.") : this.attemptTable(record.attempts));
    this.history.replaceChildren(record.transitions === null ? h("p", { class: "muted" }, "Not available from this server.") : this.historyTable(record.transitions, record.truncated));
  }

  private attemptTable(attempts: TaskAttempt[]): Node {
    if (!attempts.length) return h("p", { class: "muted" }, "Not started yet.");
    return h(
      "table",
      { class: "mini-table attempts" },
      h("thead", {}, h("tr", {}, ...["#", "Worker", "Started", "Ended", "Outcome", "Error"].map((c) => h("th", { scope: "col" }, c)))),
      h(
        "tbody",
        {},
        ...attempts.map((a) =>
          h(
            "tr",
            { "data-attempt": a.attempt },
            h("td", { class: "num" }, String(a.attempt)),
            h("td", { class: "worker-cell" }, a.workerId || "—"),
            h("td", { class: "num" }, when(ms(a.startedAt))),
            h("td", { class: "num" }, when(ms(a.finishedAt))),
            h("td", {}, h("span", { class: `badge badge-${statusName(a.outcome).toLowerCase()}` }, STATUS_LABELS[a.outcome])),
            h("td", { class: "attempt-error" }, a.error || "—"),
          ),
        ),
      ),
    );
  }

  private historyTable(transitions: TaskTransition[], truncated: boolean): Node {
    const label = (s: TaskStatus): string => (s === TaskStatus.UNSPECIFIED ? "submitted" : STATUS_LABELS[s]);
    const table = h(
      "table",
      { class: "mini-table transitions" },
      h("thead", {}, h("tr", {}, ...["Time", "Change", "Attempt", "Worker", "Detail"].map((c) => h("th", { scope: "col" }, c)))),
      h(
        "tbody",
        {},
        ...transitions.map((t) => {
          const at = ms(t.at);
          return h(
            "tr",
            { "data-to": statusName(t.toStatus) },
            h("td", { class: "num" }, at === null ? "—" : timeOfDay(at)),
            h("td", {}, t.fromStatus === TaskStatus.UNSPECIFIED ? label(t.toStatus) : `${label(t.fromStatus)} → ${label(t.toStatus)}`),
            h("td", { class: "num" }, t.attempt ? String(t.attempt) : "—"),
            h("td", { class: "worker-cell" }, t.workerId || "—"),
            h("td", {}, t.detail || ""),
          );
        }),
      ),
    );
    return truncated ? h("div", {}, h("p", { class: "muted" }, "Older changes are left out; the latest 1,000 are shown."), table) : table;
  }
}
