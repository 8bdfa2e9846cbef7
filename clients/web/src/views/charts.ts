// Two small live charts drawn as plain SVG: tasks finished per second by outcome (stacked bars, one per
// second) and the queue depth (a line), over the last few minutes. Every bar carries its bin and value as
// data attributes beside the geometry drawn from them, so tests read what a person sees.
// Plain SVG rather than a chart library: two charts of one shape need about as much code as a library's set-up.

import { BIN_MS, type Bin, OUTCOMES, type Outcome, WINDOW_BINS } from "../trend";

const SVG = "http://www.w3.org/2000/svg";
const WINDOW_MINUTES = Math.round((WINDOW_BINS * BIN_MS) / 60_000);
// The drawing's own units; the SVG scales to its box keeping this aspect ratio.
const WIDTH = 600;
const HEIGHT = 170;
const LEFT = 34; // room for the y labels
const TOP = 8;
const BOTTOM = 20; // room for the x labels
const PLOT_W = WIDTH - LEFT - 8;
const PLOT_H = HEIGHT - TOP - BOTTOM;

const OUTCOME_LABELS: Record<Outcome, string> = {
  succeeded: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
  timedOut: "Timed out",
};

function el<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

/** 1, 2, 5, 10, 20, 50 ...: the smallest at or above `value` (at least 1), so the axis reads in round steps. */
export function niceMax(value: number): number {
  let step = 1;
  for (;;) {
    for (const m of [1, 2, 5]) if (m * step >= value) return m * step;
    step *= 10;
  }
}

function clock(t: number): string {
  return new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** One chart: an SVG with axes, a legend under it, and a text summary for screen readers. */
class Chart {
  readonly element: HTMLElement;
  readonly svg: SVGSVGElement;
  private readonly plot: SVGGElement;
  private readonly axes: SVGGElement;

  constructor(id: string, title: string, legend: [string, string][]) {
    this.svg = el("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      class: "chart-svg",
      "data-chart": id,
      "data-bin-ms": BIN_MS,
      "data-plot-height": PLOT_H,
    });
    this.axes = el("g", { class: "chart-axes" });
    this.plot = el("g", { class: "chart-plot" });
    this.svg.append(this.axes, this.plot);
    const heading = document.createElement("h3");
    heading.id = `${id}-title`;
    heading.className = "chart-title";
    heading.textContent = title;
    const keys = document.createElement("ul");
    keys.className = "chart-legend";
    for (const [cls, label] of legend) {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = `swatch ${cls}`;
      item.append(swatch, label);
      keys.append(item);
    }
    this.element = document.createElement("figure");
    this.element.className = "chart";
    this.element.append(heading, this.svg, keys);
  }

  /** Grid lines and labels for a y range of 0..yMax and the bins' time span. */
  drawAxes(yMax: number, bins: Bin[], label: string): void {
    this.svg.dataset.yMax = String(yMax);
    this.svg.setAttribute("aria-label", label);
    const nodes: SVGElement[] = [];
    for (const fraction of [0, 0.5, 1]) {
      const y = TOP + PLOT_H - fraction * PLOT_H;
      nodes.push(el("line", { x1: LEFT, x2: LEFT + PLOT_W, y1: y, y2: y, class: fraction ? "grid" : "baseline" }));
      const text = el("text", { x: LEFT - 5, y: y + 4, "text-anchor": "end", class: "tick" });
      text.textContent = String(Math.round(yMax * fraction * 10) / 10);
      nodes.push(text);
    }
    const minutes = Math.round((bins.length * BIN_MS) / 60_000);
    for (let m = 0; m <= minutes; m++) {
      const x = LEFT + PLOT_W - (m * 60_000 * PLOT_W) / (bins.length * BIN_MS);
      const text = el("text", { x, y: HEIGHT - 5, "text-anchor": m === 0 ? "end" : m === minutes ? "start" : "middle", class: "tick" });
      text.textContent = m === 0 ? "now" : `−${m}m`;
      nodes.push(text);
    }
    this.axes.replaceChildren(...nodes);
  }

  draw(nodes: SVGElement[]): void {
    this.plot.replaceChildren(...nodes);
  }
}

export class TrendCharts {
  readonly element: HTMLElement;
  private readonly throughput: Chart;
  private readonly depth: Chart;

  constructor() {
    this.throughput = new Chart(
      "throughput",
      "Finished per second",
      OUTCOMES.map((o): [string, string] => [`outcome-${o}`, OUTCOME_LABELS[o]]),
    );
    this.depth = new Chart("queue", "Queue depth", [
      ["series-queued", "Queued"],
      ["series-running", "Running"],
    ]);
    const heading = document.createElement("h2");
    heading.id = "trends-heading";
    heading.textContent = `Last ${WINDOW_MINUTES} minutes`;
    const charts = document.createElement("div");
    charts.className = "charts";
    charts.append(this.throughput.element, this.depth.element);
    this.element = document.createElement("section");
    this.element.className = "panel trends";
    this.element.setAttribute("aria-labelledby", "trends-heading");
    this.element.append(heading, charts);
  }

  update(bins: Bin[]): void {
    this.drawThroughput(bins);
    this.drawDepth(bins);
  }

  private drawThroughput(bins: Bin[]): void {
    const totals = bins.map((b) => OUTCOMES.reduce((n, o) => n + b.finished[o], 0));
    const yMax = niceMax(Math.max(0, ...totals));
    const slot = PLOT_W / WINDOW_BINS;
    const bars: SVGElement[] = [];
    bins.forEach((bin, i) => {
      let stacked = 0;
      for (const outcome of OUTCOMES) {
        const value = bin.finished[outcome];
        if (!value) continue;
        const height = (value / yMax) * PLOT_H;
        const rect = el("rect", {
          x: LEFT + i * slot,
          y: TOP + PLOT_H - stacked - height,
          width: Math.max(slot - 0.3, 0.5),
          height,
          class: `bar outcome-${outcome}`,
          "data-t": bin.t,
          "data-outcome": outcome,
          "data-value": value,
        });
        const tip = el("title", {});
        tip.textContent = `${clock(bin.t)}: ${value} ${OUTCOME_LABELS[outcome].toLowerCase()}`;
        rect.append(tip);
        bars.push(rect);
        stacked += height;
      }
    });
    const total = totals.reduce((a, b) => a + b, 0);
    const peak = Math.max(0, ...totals);
    this.throughput.drawAxes(yMax, bins, `Tasks finished per second over the last ${WINDOW_MINUTES} minutes: ${total} in all, at most ${peak} in one second.`);
    this.throughput.draw(bars);
  }

  private drawDepth(bins: Bin[]): void {
    const yMax = niceMax(Math.max(0, ...bins.map((b) => Math.max(b.queued, b.running))));
    const slot = PLOT_W / WINDOW_BINS;
    const line = (pick: (b: Bin) => number, series: string): SVGElement => {
      const points = bins.map((b, i) => `${(LEFT + (i + 0.5) * slot).toFixed(1)},${(TOP + PLOT_H - (pick(b) / yMax) * PLOT_H).toFixed(1)}`);
      return el("polyline", { points: points.join(" "), class: `line series-${series}`, "data-series": series, "data-last": pick(bins[bins.length - 1]) });
    };
    const last = bins[bins.length - 1];
    this.depth.drawAxes(yMax, bins, `Queue depth over the last ${WINDOW_MINUTES} minutes: ${last.queued} queued and ${last.running} running now.`);
    this.depth.draw([line((b) => b.running, "running"), line((b) => b.queued, "queued")]);
  }
}
