// A task's live log, as a bounded, self-scrolling list. Lines arriving together are added in one
// animation frame; the list follows the newest line unless the reader scrolled up (then a button offers
// to jump back); only the latest MAX_LINES_SHOWN lines stay in the page, so a chatty handler cannot
// make it heavy.

import { h } from "../dom";
import { ms, timeOfDay } from "../format";
import { type LogLine, LogStream } from "../gen/resilienttask/v1/scheduler_pb";
import type { LogState } from "../logs";

export const MAX_LINES_SHOWN = 1_000;
// Within this many pixels of the bottom counts as "at the bottom": the list keeps following.
const STICK_PX = 24;

const STREAM_LABELS: Record<LogStream, string> = {
  [LogStream.UNSPECIFIED]: "",
  [LogStream.LOGGER]: "log",
  [LogStream.STDOUT]: "stdout",
  [LogStream.STDERR]: "stderr",
};

const STATE_TEXT: Record<LogState, string> = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  finished: "The task finished; this is its whole log.",
  unavailable: "Logs are not available",
};

export class LogView {
  readonly element: HTMLElement;
  private readonly list: HTMLElement;
  private readonly state: HTMLElement;
  private readonly trimmedNote: HTMLElement;
  private readonly jump: HTMLButtonElement;
  private queued: Node[] = [];
  private frame = 0;
  private shown = 0;
  private trimmed = 0;
  private following = true;

  constructor() {
    this.state = h("span", { class: "log-state", "data-state": "connecting" });
    this.trimmedNote = h("p", { class: "log-trimmed", hidden: true });
    // role=log is a polite live region by nature; a fast log would talk over everything, so it is kept quiet.
    this.list = h("div", { class: "log", role: "log", "aria-live": "off", tabindex: 0, "aria-label": "Handler log" });
    this.jump = h("button", { type: "button", class: "btn small log-jump", hidden: true }, "Jump to the newest line");
    this.list.addEventListener("scroll", () => {
      this.following = this.atBottom();
      if (this.following) this.jump.hidden = true;
    }, { passive: true });
    this.jump.addEventListener("click", () => {
      this.following = true;
      this.jump.hidden = true;
      this.list.scrollTop = this.list.scrollHeight;
    });
    this.element = h(
      "section",
      { class: "log-section", "aria-labelledby": "log-heading" },
      h("div", { class: "section-head" }, h("h3", { id: "log-heading" }, "Logs"), this.state, h("span", { class: "spacer" }), this.jump),
      this.trimmedNote,
      this.list,
    );
    this.clear();
  }

  clear(): void {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.queued = [];
    this.shown = 0;
    this.trimmed = 0;
    this.following = true;
    this.jump.hidden = true;
    this.trimmedNote.hidden = true;
    this.list.replaceChildren(h("p", { class: "log-empty" }, "Nothing logged yet."));
    this.list.dataset.lines = "0";
  }

  setState(state: LogState, detail?: string): void {
    this.state.dataset.state = state;
    this.state.textContent = detail ? `${STATE_TEXT[state]}: ${detail}` : STATE_TEXT[state];
  }

  add(lines: LogLine[], dropped: number): void {
    if (dropped > 0) this.queued.push(h("div", { class: "log-line log-dropped" }, `… ${dropped} line${dropped === 1 ? "" : "s"} dropped (log bounds)`));
    for (const line of lines) this.queued.push(this.lineElement(line));
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  private lineElement(line: LogLine): HTMLElement {
    const at = ms(line.at);
    const source = line.level || STREAM_LABELS[line.stream];
    return h(
      "div",
      { class: `log-line stream-${STREAM_LABELS[line.stream] || "other"}`, "data-sequence": String(line.sequence) },
      h("span", { class: "log-time" }, at === null ? "" : timeOfDay(at)),
      h("span", { class: "log-source" }, `${source}${line.attempt > 1 ? ` #${line.attempt}` : ""}`),
      h("span", { class: "log-text" }, line.text),
    );
  }

  private atBottom(): boolean {
    return this.list.scrollTop + this.list.clientHeight >= this.list.scrollHeight - STICK_PX;
  }

  private flush(): void {
    this.frame = 0;
    if (!this.queued.length) return;
    const follow = this.following;
    if (this.shown === 0) this.list.replaceChildren();
    const batch = this.queued.length > MAX_LINES_SHOWN ? this.queued.slice(-MAX_LINES_SHOWN) : this.queued;
    this.trimmed += this.queued.length - batch.length;
    this.queued = [];
    this.list.append(...batch);
    this.shown += batch.length;
    // Keep the page light: the oldest lines leave once there are too many.
    while (this.shown > MAX_LINES_SHOWN && this.list.firstChild) {
      this.list.firstChild.remove();
      this.shown--;
      this.trimmed++;
    }
    this.list.dataset.lines = String(this.shown);
    if (this.trimmed) {
      this.trimmedNote.hidden = false;
      this.trimmedNote.textContent = `${this.trimmed} earlier line${this.trimmed === 1 ? "" : "s"} not shown here (only the latest ${MAX_LINES_SHOWN} are kept on screen).`;
    }
    if (follow) this.list.scrollTop = this.list.scrollHeight;
    else this.jump.hidden = false;
  }
}
