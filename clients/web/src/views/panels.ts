// The small live panels: metric cards, the worker pool and the connection indicator.

import { h } from "../dom";
import { ago, ms } from "../format";
import type { TaskStats, Worker } from "../gen/resilienttask/v1/task_pb";
import type { Connection } from "../watch";

const CARDS: [keyof TaskStats & string, string][] = [
  ["scheduled", "Scheduled"],
  ["active", "Active"],
  ["succeeded", "Completed"],
  ["failed", "Failed"],
  ["cancelled", "Cancelled"],
  ["timedOut", "Timed out"],
];

export class MetricCards {
  readonly element: HTMLElement;
  private readonly values = new Map<string, HTMLElement>();

  constructor() {
    this.element = h("section", { class: "cards", "aria-label": "Task counts" });
    for (const [field, label] of CARDS) {
      const value = h("span", { class: "card-value", "data-metric": field }, "–");
      this.values.set(field, value);
      this.element.append(h("div", { class: `card card-${field}` }, h("span", { class: "card-label" }, label), value));
    }
  }

  update(stats: TaskStats | undefined): void {
    for (const [field] of CARDS) {
      const text = stats ? String(stats[field]) : "–";
      const el = this.values.get(field);
      if (el && el.textContent !== text) el.textContent = text;
    }
  }
}

export class WorkerPanel {
  readonly element: HTMLElement;
  private readonly summary: HTMLElement;
  private readonly list: HTMLUListElement;
  private workers: Worker[] = [];

  constructor() {
    this.summary = h("p", { class: "pool-summary" });
    this.list = h("ul", { class: "workers" });
    this.element = h(
      "section",
      { class: "panel", "aria-labelledby": "workers-heading" },
      h("h2", { id: "workers-heading" }, "Worker pool"),
      this.summary,
      this.list,
    );
  }

  update(workers: Worker[], now = Date.now()): void {
    this.workers = [...workers].sort((a, b) => (a.id < b.id ? -1 : 1));
    this.paint(now);
  }

  /** Also called every second, so "last heartbeat" ages without any request. */
  paint(now = Date.now()): void {
    const slots = this.workers.reduce((n, w) => n + w.slots, 0);
    const busy = this.workers.reduce((n, w) => n + w.busy, 0);
    const count = this.workers.length;
    this.summary.textContent = count
      ? `${count} worker${count === 1 ? "" : "s"} · ${busy} of ${slots} slots busy`
      : "No live workers: submitted tasks wait in the queue.";
    this.list.replaceChildren(
      ...this.workers.map((w) => {
        const beat = ms(w.lastHeartbeat);
        const share = w.slots ? Math.round((100 * w.busy) / w.slots) : 0;
        return h(
          "li",
          { class: "worker" },
          h("span", { class: "worker-id", title: w.id }, w.id),
          h(
            "span",
            { class: "bar small-bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": w.slots, "aria-valuenow": w.busy, "aria-label": `Busy slots of ${w.id}` },
            h("span", { class: "fill", style: `width: ${share}%` }),
          ),
          h("span", { class: "worker-busy" }, `${w.busy}/${w.slots} busy`),
          w.draining
            ? h("span", { class: "worker-draining", title: "Takes no new task; what still runs is handed back at its deadline" }, "draining")
            : null,
          h("span", { class: "worker-beat" }, beat === null ? "no heartbeat" : `heartbeat ${ago(beat, now)}`),
        );
      }),
    );
  }
}

const CONNECTION_TEXT: Record<Connection, string> = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

export class ConnectionIndicator {
  readonly element: HTMLElement;

  constructor() {
    this.element = h("span", { class: "connection", role: "status", "data-state": "connecting" }, CONNECTION_TEXT.connecting);
  }

  update(state: Connection): void {
    if (this.element.dataset.state === state) return;
    this.element.dataset.state = state;
    this.element.textContent = CONNECTION_TEXT[state];
    this.element.title =
      state === "live" ? "Receiving live updates" : state === "offline" ? "Cannot reach the server; still retrying" : "";
  }
}
