// One task's whole record, on demand. The live stream carries summaries (no payload, no result, the error
// cut to its first KiB), so this dialog asks GetTask for the task when it opens, and again whenever the
// stream says the task changed while it is open: a running task's result appears as soon as it finishes.

import { toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { h } from "../dom";
import { STATUS_LABELS, ms, timeOfDay } from "../format";
import type { Task } from "../gen/resilienttask/v1/task_pb";

export class TaskDetails {
  readonly element: HTMLDialogElement;
  private readonly heading: HTMLElement;
  private readonly status: HTMLElement;
  private readonly body: HTMLElement;
  /** The task shown (or being fetched), and the newest version the stream announced for it. */
  private taskId = "";
  private wanted = -1n;
  private shown = -1n;
  private fetching = false;

  constructor(
    private readonly load: (taskId: string) => Promise<Task>,
    private readonly describe: (err: unknown) => string,
  ) {
    this.heading = h("h2", { id: "details-heading" });
    this.status = h("p", { class: "details-status", role: "status" });
    this.body = h("div", { class: "details-body" });
    this.element = h(
      "dialog",
      { class: "confirm details", "aria-labelledby": "details-heading" },
      this.heading,
      this.status,
      this.body,
      h("form", { method: "dialog", class: "buttons" }, h("button", { value: "close", class: "btn", autofocus: true }, "Close")),
    );
    this.element.addEventListener("close", () => {
      this.taskId = "";
    });
  }

  get openFor(): string {
    return this.taskId;
  }

  /** Show `task`'s whole record (the summary's fields until GetTask answers). */
  open(task: Task, title: string): void {
    this.taskId = task.id;
    this.shown = -1n;
    this.wanted = task.version;
    this.heading.textContent = title;
    this.body.replaceChildren();
    this.status.textContent = "Loading…";
    if (!this.element.open) this.element.showModal();
    void this.fetch();
  }

  /** The stream announced `task` (a summary); fetch the whole record again if it is newer than the one shown. */
  changed(task: Task | undefined): void {
    if (!task || task.id !== this.taskId || task.version <= this.wanted) return;
    this.wanted = task.version;
    void this.fetch();
  }

  close(): void {
    if (this.element.open) this.element.close();
  }

  private async fetch(): Promise<void> {
    if (this.fetching) return; // the running fetch looks again when it ends
    this.fetching = true;
    const taskId = this.taskId;
    try {
      while (this.taskId === taskId && this.shown < this.wanted) {
        const asked = this.wanted;
        try {
          const task = await this.load(taskId);
          if (this.taskId !== taskId) return;
          this.render(task);
          // GetTask may already be past the version asked for; never ask again for one older than it.
          this.shown = task.version > asked ? task.version : asked;
          if (task.version > this.wanted) this.wanted = task.version;
        } catch (err) {
          if (this.taskId === taskId) this.status.textContent = `Could not load the task: ${this.describe(err)}`;
          return;
        }
      }
    } finally {
      this.fetching = false;
    }
  }

  private render(task: Task): void {
    this.status.textContent = "";
    const started = ms(task.startedAt);
    const finished = ms(task.finishedAt);
    const rows: [string, Node | string][] = [
      ["Status", STATUS_LABELS[task.status]],
      ["Kind", task.kind],
      ["Attempt", `${task.attempt} of ${task.maxAttempts}`],
      ["Worker", task.workerId || "—"],
      ...(ms(task.runAt) === null ? [] : [["Starts at", timeOfDay(ms(task.runAt) ?? 0)] as [string, string]]),
      ["Started", started === null ? "—" : timeOfDay(started)],
      ["Finished", finished === null ? "—" : timeOfDay(finished)],
      ["Task id", task.id],
    ];
    if (task.scheduleId) rows.push(["Schedule id", task.scheduleId]);
    if (task.error) rows.push(["Error", h("pre", { class: "details-error" }, task.error)]);
    rows.push(["Payload", h("pre", { class: "details-json", "data-field": "payload" }, JSON.stringify(task.payload ?? {}, null, 2))]);
    const result = task.result ? JSON.stringify(toJson(ValueSchema, task.result), null, 2) : "—";
    rows.push(["Result", h("pre", { class: "details-json", "data-field": "result" }, result)]);
    this.body.replaceChildren(h("dl", { class: "details-list" }, ...rows.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)])));
  }
}
