// The signed-in page: metric cards, the submit form, the worker pool and the live task table,
// all drawn from one WatchTasks stream. Renders are batched to one per animation frame. The table is
// narrowed by a query kept in the address (?q=…), pages of matching tasks come from ListTasks, and a
// task's own page opens at #/tasks/<id>.

import { type Api, type Refusal, UNARY_TIMEOUT_MS, isTransient, refusal } from "../api";
import { announce, h } from "../dom";
import { Feed, type Filter, type Row } from "../feed";
import { ListTasksRequestSchema, type WatchTasksResponse } from "../gen/resilienttask/v1/scheduler_pb";
import type { Task } from "../gen/resilienttask/v1/task_pb";
import { type TaskQuery, describe, fromSearch, isEmpty, matcher, sameQuery, toFilters, toSearch } from "../query";
import { valueRange } from "../limits";
import { taskHash, taskInHash } from "../route";
import type { Session } from "../session";
import type { SubmitInit } from "../validation";
import { busySlots } from "../pool";
import { Trend } from "../trend";
import { TaskWatch } from "../watch";
import { TrendCharts } from "./charts";
import { ConnectionIndicator, MetricCards, WorkerPanel } from "./panels";
import { SchedulesView } from "./schedules";
import { BulkActions } from "./bulk";
import { FilterBar } from "./filters";
import { SubmitForm } from "./submit";
import { type OperatorAccess, OperatorView } from "./operator";
import { type TaskAction, TaskPage } from "./task-page";
import { type Action, TaskTable } from "./table";

const SUBMIT_ATTEMPTS = 3;
const OLDER_PAGE_SIZE = valueRange(ListTasksRequestSchema, "page_size").max;
// setTimeout fires at once for delays beyond this (about 24.8 days).
const MAX_TIMER_MS = 2 ** 31 - 1;
const CHART_REDRAW_MS = 1_000;

export interface Dashboard {
  element: HTMLElement;
  dispose(): void;
}

/** True when a stream message carries a task some schedule submitted: that schedule's counts moved. */
function fromSchedule(message: WatchTasksResponse): boolean {
  const kind = message.kind;
  if (kind.case === "event") return Boolean(kind.value.task?.scheduleId);
  if (kind.case === "events") return kind.value.events.some((e) => Boolean(e.task?.scheduleId));
  return false;
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function renderDashboard(api: Api, session: Session, logout: (notice: string) => void): Dashboard {
  const s = api.scheduler;
  const call = { timeoutMs: UNARY_TIMEOUT_MS };
  const feed = new Feed();
  const cards = new MetricCards();
  const trend = new Trend();
  const charts = new TrendCharts();
  const workers = new WorkerPanel();
  const indicator = new ConnectionIndicator();
  const submissions = new Map<string, SubmitInit>();
  let query: TaskQuery = fromSearch(location.search);
  let filter: Filter = "all";
  // One page token per server filter of the query ("" to start, null when that filter has no more pages);
  // `generation` tells a page that arrives after the query changed that it is stale.
  let tokens: (string | null)[] = [""];
  let generation = 0;
  let loading = false;
  let kinds: Set<string> | null = null;
  let kindsAsked = false;
  let kindsCheckedFor: unknown = null;

  const notice = h("p", { class: "notice-line", role: "status", "aria-live": "polite" });
  const tell = (message: string, problem = false): void => {
    notice.textContent = message;
    notice.classList.toggle("problem", problem);
  };

  // -- submitting, with optimistic rows ----------------------------------------------------------
  async function send(request: SubmitInit): Promise<Refusal | null> {
    const requestId = request.requestId ?? "";
    for (let attempt = 1; ; attempt++) {
      try {
        const reply = await s.submitTask(request, call);
        feed.merge(reply.tasks);
        submissions.delete(requestId);
        announce(`Submitted ${reply.tasks.length} task${reply.tasks.length === 1 ? "" : "s"}`);
        return null;
      } catch (err) {
        // The same request_id makes a repeat safe: the server returns the first attempt's tasks.
        if (isTransient(err) && attempt < SUBMIT_ATTEMPTS) {
          await pause(300 * attempt);
          continue;
        }
        const refused = refusal(err);
        const reason = refused.field ? `${refused.field}: ${refused.reason}` : refused.reason;
        feed.failPending(requestId, reason, refused.field === null);
        return refused;
      }
    }
  }

  function submit(request: SubmitInit): Promise<Refusal | null> {
    submissions.set(request.requestId ?? "", request);
    feed.addPending(request.requestId ?? "", request.replicas ?? 1, request.name ?? "", request.kind ?? "");
    return send(request);
  }

  // -- the task page, at #/tasks/<id> ------------------------------------------------------------
  // True when this tab added the page's history entry: closing it goes back rather than adding another.
  let pushedPage = false;
  const page = new TaskPage(
    s,
    (action: TaskAction, task: Task) => act(action, { key: task.id, order: 0, replicaIndex: task.replicaIndex, task }),
    (err) => refusal(err).reason,
    () => {
      if (taskInHash(location.hash) === null) return;
      if (pushedPage) history.back();
      else history.replaceState(history.state, "", location.pathname + location.search);
      pushedPage = false;
    },
  );

  function openTask(taskId: string): void {
    if (taskInHash(location.hash) !== taskId) {
      history.pushState(history.state, "", location.pathname + location.search + taskHash(taskId));
      pushedPage = true;
    }
    page.open(taskId, feed.get(taskId)?.task);
  }

  /** The address changed (back, forward, a link): show the task it names, or none. */
  function followAddress(): void {
    const taskId = taskInHash(location.hash);
    if (taskId) page.open(taskId, feed.get(taskId)?.task);
    else {
      pushedPage = false;
      page.close();
    }
    const next = fromSearch(location.search);
    if (!sameQuery(next, query)) {
      filters.set(next);
      setQuery(next, false);
    }
  }

  // -- row actions ----------------------------------------------------------------------------
  async function act(action: Action, row: Row): Promise<void> {
    const task = row.task;
    const name = task?.name ?? row.pending?.name ?? "";
    try {
      if (action === "details" && task) {
        openTask(task.id);
      } else if (action === "dismiss" && row.pending) {
        feed.dismissPending(row.pending.requestId);
        submissions.delete(row.pending.requestId);
      } else if (action === "resubmit" && row.pending) {
        const request = submissions.get(row.pending.requestId);
        if (request) void submit(request);
      } else if (action === "cancel" && task) {
        feed.merge([(await s.cancelTask({ taskId: task.id }, call)).task].filter((t) => t !== undefined));
        tell(`Cancel requested for ${name}.`);
      } else if (action === "cancel-batch" && task) {
        feed.merge((await s.cancelBatch({ batchId: task.batchId }, call)).tasks);
        tell(`Cancel requested for the batch of ${name}.`);
      } else if (action === "retry" && task) {
        feed.merge([(await s.retryTask({ taskId: task.id }, call)).task].filter((t) => t !== undefined));
        tell(`${name} queued again.`);
      } else if (action === "delete" && task) {
        await s.deleteTask({ taskId: task.id }, call);
        tell(`${name} deleted.`);
      }
    } catch (err) {
      tell(`Could not ${action.replace("-", " ")} ${name}: ${refusal(err).reason}`, true);
    }
  }

  // -- layout ---------------------------------------------------------------------------------
  const form = new SubmitForm(submit);
  const schedules = new SchedulesView(api, (tasks) => feed.merge(tasks));
  const bulk: BulkActions = new BulkActions(s, {
    query: () => query,
    shownRows: (): readonly Row[] => table.shownRows,
    get: (key) => feed.get(key),
    repaint: () => table.paint(),
    tell,
    describe: (err) => refusal(err).reason,
  });
  const table: TaskTable = new TaskTable({
    action: (action, row) => void act(action, row),
    select: (row, selected, range) => bulk.toggle(row, selected, range),
    selectShown: (selected) => bulk.selectShown(selected),
    isSelected: (key): boolean => bulk.isSelected(key),
    anySelected: (): boolean => bulk.anySelected(),
  });
  const filters = new FilterBar((next) => setQuery(next, true));
  filters.set(query);
  const shown = h("span", { class: "shown-count" });
  const clearButton = h("button", { type: "button", class: "btn danger-outline" }, "Clear history");
  const olderButton = h("button", { type: "button", class: "btn ghost" }, "Load older tasks");

  const dialogText = h("p", { id: "clear-text" });
  const dialog = h(
    "dialog",
    { class: "confirm", "aria-labelledby": "clear-heading", "aria-describedby": "clear-text" },
    h("h2", { id: "clear-heading" }, "Clear history?"),
    dialogText,
    h(
      "form",
      { method: "dialog", class: "buttons" },
      h("button", { value: "cancel", class: "btn", autofocus: true }, "Keep them"),
      h("button", { value: "confirm", class: "btn danger" }, "Clear history"),
    ),
  );
  clearButton.addEventListener("click", () => {
    const st = feed.stats;
    const finished = st ? Number(st.succeeded + st.failed + st.cancelled + st.timedOut) : 0;
    dialogText.textContent = `This removes your ${finished} finished task${finished === 1 ? "" : "s"} for good. Active tasks are kept.`;
    dialog.returnValue = "";
    dialog.showModal();
  });
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "confirm") return;
    try {
      const reply = await s.clearHistory({}, call);
      tell(`Removed ${reply.deleted} finished task${reply.deleted === 1n ? "" : "s"}.`);
    } catch (err) {
      tell(`Could not clear history: ${refusal(err).reason}`, true);
    }
  });

  // -- the query and its pages -----------------------------------------------------------------
  /** The rows a query shows: server tasks that match (optimistic rows only while nothing narrows the view). */
  function viewFilter(q: TaskQuery): Filter {
    if (isEmpty(q)) return "all";
    const test = matcher(q);
    return (row: Row) => row.task !== undefined && test(row.task);
  }

  /** A new query: the address says it, the view narrows at once, and its first pages are asked for. */
  function setQuery(next: TaskQuery, remember: boolean): void {
    if (sameQuery(next, query)) return;
    query = next;
    filter = viewFilter(query);
    if (remember) history.replaceState(history.state, "", location.pathname + toSearch(query) + location.hash);
    generation++;
    loading = false;
    tokens = toFilters(query).map(() => "");
    bulk.clear();
    announce(`Showing ${describe(query)}`);
    // Everything already known that matches shows at once; the server's pages complete it.
    if (!isEmpty(query)) void loadMore();
    render();
  }

  /** The next page of every filter of the query that has more; the snapshot stands for the first when there is none. */
  async function loadMore(): Promise<void> {
    if (loading || tokens.every((t) => t === null)) return;
    loading = true;
    olderButton.disabled = true;
    const asked = generation;
    const filtersNow = toFilters(query);
    try {
      const replies = await Promise.all(
        tokens.map((token, i) =>
          token === null ? null : s.listTasks({ pageSize: OLDER_PAGE_SIZE, pageToken: token, filter: filtersNow[i] }, call),
        ),
      );
      if (asked !== generation) return;
      tokens = replies.map((reply) => (reply === null ? null : reply.nextPageToken || null));
      feed.merge(replies.flatMap((reply) => reply?.tasks ?? []));
      render();
    } catch (err) {
      if (asked === generation) tell(`Could not load tasks: ${refusal(err).reason}`, true);
    } finally {
      if (asked === generation) {
        loading = false;
        olderButton.disabled = false;
      }
    }
  }
  filter = viewFilter(query);

  olderButton.addEventListener("click", () => void loadMore());
  // Scrolling near the end of what is loaded asks for the next page: ten thousand tasks are reachable by scrolling.
  table.onScroll(() => {
    if (!olderButton.hidden && table.nearEnd()) void loadMore();
  });

  const logoutButton = h("button", { type: "button", class: "btn ghost" }, "Log out");
  logoutButton.addEventListener("click", () => logout("You are logged out."));

  const tasksView = h(
    "div",
    { class: "columns" },
    h("div", { class: "side" }, form.element, workers.element),
    h(
      "section",
      { class: "panel tasks", "aria-labelledby": "tasks-heading" },
      h(
        "div",
        { class: "toolbar" },
        h("h2", { id: "tasks-heading" }, "Tasks"),
        shown,
        h("span", { class: "spacer" }),
        clearButton,
      ),
      filters.element,
      bulk.bar,
      notice,
      table.element,
      h("div", { class: "table-foot" }, olderButton),
    ),
  );
  // Only the chosen view is in the page, so each form's labels stay unique.
  const views = h("div", { class: "view" }, tasksView);
  const tabs = (["Tasks", "Schedules", "Operator"] as const).map((label) =>
    h("button", { type: "button", class: "tab", "data-view": label.toLowerCase(), "aria-pressed": label === "Tasks" ? "true" : "false" }, label),
  );
  const operatorTab = tabs[2];
  // The operator's view is offered only once the server has answered this user as an operator.
  operatorTab.hidden = true;
  const nav = h("nav", { class: "tabs", "aria-label": "Views", "data-operator": "checking" }, ...tabs);
  const choose = (chosen: HTMLButtonElement): void => {
    for (const tab of tabs) tab.setAttribute("aria-pressed", String(tab === chosen));
    const view = chosen.dataset.view;
    if (view !== "schedules") schedules.hide();
    if (view !== "operator") operator.hide();
    if (view === "schedules") {
      views.replaceChildren(schedules.element);
      schedules.show();
    } else if (view === "operator") {
      views.replaceChildren(operator.element);
      operator.show();
    } else {
      views.replaceChildren(tasksView);
      render();
    }
  };
  nav.addEventListener("click", (event) => {
    const chosen = (event.target as Element).closest<HTMLButtonElement>("button[data-view]");
    if (chosen) choose(chosen);
  });
  const operator = new OperatorView(api.operator, (access: OperatorAccess) => {
    nav.dataset.operator = access;
    operatorTab.hidden = access !== "operator";
    if (operatorTab.hidden && operatorTab.getAttribute("aria-pressed") === "true") choose(tabs[0]);
  });
  operator.probe();

  const element = h(
    "div",
    { class: "dashboard" },
    h(
      "header",
      { class: "topbar" },
      h("span", { class: "brand" }, "ResilientTask"),
      indicator.element,
      h("span", { class: "spacer" }),
      h("span", { class: "who", title: "Signed in as" }, session.email),
      logoutButton,
    ),
    h(
      "main",
      { class: "content" },
      h("h1", { class: "visually-hidden" }, "Tasks dashboard"),
      cards.element,
      charts.element,
      nav,
      views,
    ),
    dialog,
    bulk.dialog,
    page.element,
  );

  // -- rendering ------------------------------------------------------------------------------
  let frame = 0;
  let painted = -1;
  let chartsDrawnAt = 0;
  function render(): void {
    frame = 0;
    painted = feed.revision;
    const { rows, batchSizes } = feed.view(filter);
    const empty = !feed.ready ? "Loading tasks…" : feed.size === 0 && isEmpty(query) ? "No tasks yet. Submit one and it appears here at once." : "No tasks match this filter.";
    table.update(rows, batchSizes, empty);
    bulk.prune(rows);
    cards.update(feed.stats);
    // The charts plot one-second bins: redrawn at most once a second (the ticker does it too), not every frame.
    const now = Date.now();
    if (now - chartsDrawnAt >= CHART_REDRAW_MS) {
      chartsDrawnAt = now;
      charts.update(trend.series(now));
    }
    workers.update(feed.workers, busySlots(feed.workers, feed.tasks()));
    shown.textContent = feed.ready ? `${rows.length} shown` : "";
    const st = feed.stats;
    clearButton.disabled = !st || st.succeeded + st.failed + st.cancelled + st.timedOut === 0n;
    // The snapshot holds only the most recent tasks; the counts say whether there are more.
    const total = st ? Number(st.scheduled + st.active + st.succeeded + st.failed + st.cancelled + st.timedOut) : 0;
    const more = tokens.some((t) => t !== null);
    olderButton.hidden = !feed.ready || !more || (isEmpty(query) && total <= feed.taskCount);
    olderButton.textContent = isEmpty(query) ? "Load older tasks" : "Load more matching tasks";
    refreshKinds();
    if (page.openFor) {
      if (feed.isDeleted(page.openFor)) page.deleted(page.openFor);
      else page.changed(feed.get(page.openFor)?.task);
    }
  }
  const schedule = (): void => {
    if (!frame && painted !== feed.revision) frame = requestAnimationFrame(render);
  };
  const unsubscribe = feed.subscribe(schedule);

  // The kinds are asked for once, and again only when a worker advertises one the list lacks: at most
  // once per change of the pool, never on a timer.
  function refreshKinds(): void {
    if (!feed.ready || kindsAsked || feed.workers === kindsCheckedFor) return;
    kindsCheckedFor = feed.workers;
    if (kinds !== null && feed.workers.every((w) => w.kinds.every((k) => kinds?.has(k)))) return;
    kindsAsked = true;
    s.listKinds({}, call)
      .then(
        (reply) => {
          kinds = new Set(reply.kinds);
          form.setKinds(reply.kinds);
          filters.setKinds(reply.kinds);
          schedules.setKinds(reply.kinds);
        },
        (err) => tell(`Could not load task kinds: ${refusal(err).reason}`, true),
      )
      .finally(() => (kindsAsked = false));
  }

  const watch = new TaskWatch(s, {
    message: (message) => {
      // A snapshot replaces everything older pages had added; they can be loaded again.
      if (message.kind.case === "snapshot" && isEmpty(query)) tokens = [""];
      feed.apply(message);
      if (fromSchedule(message)) schedules.changed();
      // Every snapshot and event carries the caller's counts: the charts' only source.
      const kind = message.kind.case;
      if (feed.stats && (kind === "snapshot" || kind === "event" || kind === "events")) trend.observe(feed.stats, Date.now());
    },
    state: (state) => indicator.update(state),
    unauthenticated: () => logout("Your session has ended. Please log in again."),
  });
  watch.start();

  // Durations and heartbeat ages move with the clock; no request is made for them.
  const ticker = setInterval(() => {
    if (document.hidden) return;
    const now = Date.now();
    table.paint(now);
    workers.paint(now);
    schedules.paint(now);
    charts.update(trend.series(now));
  }, 1000);
  const expiry = session.expiresAtMs
    ? setTimeout(() => logout("Your session has expired. Please log in again."), Math.min(MAX_TIMER_MS, Math.max(0, session.expiresAtMs - Date.now())))
    : undefined;

  window.addEventListener("popstate", followAddress);
  render();
  // A reload or a shared link: the query's pages, and the task page the address names.
  if (!isEmpty(query)) void loadMore();
  const initialTask = taskInHash(location.hash);
  if (initialTask) queueMicrotask(() => page.open(initialTask, feed.get(initialTask)?.task));
  return {
    element,
    dispose() {
      window.removeEventListener("popstate", followAddress);
      filters.dispose();
      watch.stop();
      schedules.dispose();
      operator.dispose();
      unsubscribe();
      clearInterval(ticker);
      clearTimeout(expiry);
      if (frame) cancelAnimationFrame(frame);
      if (dialog.open) dialog.close();
      page.close();
    },
  };
}
