// The "New schedule" form: a cron expression and time zone, or a fixed interval; the task each firing submits;
// the overlap and catch-up policies. The server judges cron expressions, time zones and bounds: its refusal is
// shown next to the field it names.

import type { Refusal } from "../api";
import { h } from "../dom";
import {
  CATCHUP_CHOICES,
  type CreateInit,
  OVERLAP_CHOICES,
  type ScheduleErrors,
  type ScheduleField,
  type ScheduleForm,
  fieldFor,
  scheduleRequest,
} from "../schedules";
import { newRequestId } from "../validation";

const NOUNS: Record<ScheduleField, string> = {
  name: "Schedule name",
  cron: "Cron expression",
  time_zone: "Time zone",
  interval: "Interval",
  task_name: "Task name",
  kind: "Task kind",
  workload: "Task workload",
  max_runtime: "Task max runtime",
  replicas: "Task replicas",
  max_attempts: "Task max attempts",
  overlap: "Overlap policy",
  catchup: "Catch-up policy",
  catchup_limit: "Catch-up limit",
  jitter: "Jitter",
};

function input(id: string, value: string, attrs: Record<string, string> = {}): HTMLInputElement {
  return h("input", { id, name: id, value, autocomplete: "off", ...attrs });
}

function select(id: string, choices: [number | string, string][]): HTMLSelectElement {
  return h("select", { id, name: id }, ...choices.map(([value, label]) => h("option", { value: String(value) }, label)));
}

export class ScheduleCreateForm {
  readonly element: HTMLFormElement;
  private readonly controls: Record<ScheduleField, HTMLInputElement | HTMLSelectElement>;
  private readonly timing: HTMLSelectElement;
  private readonly paused: HTMLInputElement;
  private readonly errors = new Map<ScheduleField, HTMLElement>();
  private readonly formError: HTMLElement;
  private readonly cronFields: HTMLElement;
  private readonly intervalFields: HTMLElement;

  constructor(private readonly onCreate: (form: ScheduleCreateForm, request: CreateInit) => Promise<Refusal | null>) {
    this.timing = select("schedule-timing", [
      ["cron", "Cron expression"],
      ["interval", "Fixed interval"],
    ]);
    this.paused = h("input", { id: "schedule-paused", type: "checkbox" });
    const zones = h("datalist", { id: "time-zones" });
    const known = (Intl as unknown as { supportedValuesOf?: (key: string) => string[] }).supportedValuesOf?.("timeZone") ?? [];
    zones.append(...known.map((zone) => h("option", { value: zone })));
    this.controls = {
      name: input("schedule-name", "", { required: "true", spellcheck: "false" }),
      cron: input("schedule-cron", "*/5 * * * *", { spellcheck: "false" }),
      time_zone: input("schedule-tz", "", { list: "time-zones", placeholder: "UTC", spellcheck: "false" }),
      interval: input("schedule-interval", "60", { inputmode: "decimal" }),
      task_name: input("schedule-task-name", "", { placeholder: "the schedule's name", spellcheck: "false" }),
      kind: h("select", { id: "schedule-kind", name: "schedule-kind" }),
      workload: input("schedule-workload", "5", { inputmode: "decimal" }),
      max_runtime: input("schedule-max-runtime", "", { inputmode: "decimal", placeholder: "default" }),
      replicas: input("schedule-replicas", "1", { inputmode: "numeric" }),
      max_attempts: input("schedule-max-attempts", "", { inputmode: "numeric", placeholder: "3" }),
      overlap: select("schedule-overlap", OVERLAP_CHOICES),
      catchup: select("schedule-catchup", CATCHUP_CHOICES),
      catchup_limit: input("schedule-catchup-limit", "", { inputmode: "numeric", placeholder: "10" }),
      jitter: input("schedule-jitter", "", { inputmode: "decimal", placeholder: "0" }),
    };
    const field = (name: ScheduleField, label: string, hint?: string): HTMLElement => {
      const control = this.controls[name];
      const error = h("p", { class: "field-error", id: `${control.id}-error`, "data-error-for": `schedule-${name}` });
      this.errors.set(name, error);
      const hintEl = hint ? h("p", { class: "hint", id: `${control.id}-hint` }, hint) : null;
      control.setAttribute("aria-describedby", [hintEl ? `${control.id}-hint` : "", `${control.id}-error`].join(" ").trim());
      return h("div", { class: `field field-${name}` }, h("label", { for: control.id }, label), control, hintEl, error);
    };
    this.cronFields = h(
      "div",
      { class: "fields" },
      field("cron", "Cron expression", "Minute hour day month weekday."),
      field("time_zone", "Time zone", "IANA name; empty is UTC."),
    );
    this.intervalFields = h("div", { class: "fields" }, field("interval", "Every (s)", "At least 1 s."));
    this.formError = h("p", { class: "form-error", role: "alert", id: "schedule-form-error" });
    this.element = h(
      "form",
      { class: "panel submit-form schedule-form", "aria-labelledby": "schedule-form-heading", novalidate: true },
      h("h2", { id: "schedule-form-heading" }, "New schedule"),
      h("div", { class: "fields" }, field("name", "Schedule name"), h("div", { class: "field field-timing" }, h("label", { for: "schedule-timing" }, "Timing"), this.timing)),
      this.cronFields,
      this.intervalFields,
      zones,
      h("h3", { class: "form-section" }, "Task it submits"),
      h(
        "div",
        { class: "fields" },
        field("task_name", "Task name"),
        field("kind", "Task kind"),
        field("workload", "Task workload (s)"),
        field("max_runtime", "Task max runtime (s)"),
        field("replicas", "Task replicas"),
        field("max_attempts", "Task max attempts"),
      ),
      h("h3", { class: "form-section" }, "Policies"),
      h(
        "div",
        { class: "fields" },
        field("overlap", "If still running"),
        field("catchup", "After downtime"),
        field("catchup_limit", "Catch-up limit"),
        field("jitter", "Jitter (s)"),
      ),
      h("label", { class: "check", for: "schedule-paused" }, this.paused, " Start paused"),
      this.formError,
      h("button", { type: "submit", class: "btn primary" }, "Create schedule"),
    );
    this.timing.addEventListener("change", () => this.showTiming());
    this.showTiming();
    this.element.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.send();
    });
  }

  setKinds(kinds: string[]): void {
    const select = this.controls.kind as HTMLSelectElement;
    const chosen = select.value || (kinds.includes("sleep") ? "sleep" : kinds[0]);
    select.replaceChildren(...kinds.map((k) => h("option", { value: k, selected: k === chosen }, k)));
  }

  private showTiming(): void {
    const cron = this.timing.value === "cron";
    this.cronFields.hidden = !cron;
    this.intervalFields.hidden = cron;
  }

  private values(): ScheduleForm {
    const c = this.controls;
    return {
      name: c.name.value,
      timing: this.timing.value === "interval" ? "interval" : "cron",
      cron: c.cron.value,
      timeZone: c.time_zone.value,
      intervalS: c.interval.value,
      taskName: c.task_name.value,
      kind: c.kind.value,
      workloadS: c.workload.value,
      maxRuntimeS: c.max_runtime.value,
      replicas: c.replicas.value,
      maxAttempts: c.max_attempts.value,
      overlap: c.overlap.value,
      catchup: c.catchup.value,
      catchupLimit: c.catchup_limit.value,
      jitterS: c.jitter.value,
      paused: this.paused.checked,
    };
  }

  show(errors: ScheduleErrors): void {
    for (const [field, el] of this.errors) {
      const message = errors[field] ?? "";
      el.textContent = message ? `${NOUNS[field]} ${message}` : "";
      this.controls[field].toggleAttribute("aria-invalid", Boolean(message));
    }
    const first = (Object.keys(this.controls) as ScheduleField[]).find((f) => errors[f]);
    if (first) this.controls[first].focus();
  }

  /** The server's refusal: next to the field it names, or above the button. */
  refused(refused: Refusal): void {
    const field = fieldFor(refused.field);
    if (field) this.show({ [field]: refused.reason });
    else this.formError.textContent = `Not created: ${refused.field ? `${refused.field}: ` : ""}${refused.reason}`;
  }

  reset(): void {
    this.controls.name.value = "";
    this.paused.checked = false;
  }

  private async send(): Promise<void> {
    this.formError.textContent = "";
    const result = scheduleRequest(this.values(), newRequestId());
    if ("errors" in result) {
      this.show(result.errors);
      return;
    }
    this.show({});
    const refused = await this.onCreate(this, result.request);
    if (refused) this.refused(refused);
  }
}
