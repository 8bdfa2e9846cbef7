// The "New task" form: checked here exactly as the server checks it; a refusal the server still
// sends is shown next to the field it names.

import type { Refusal } from "../api";
import { announce, h } from "../dom";
import {
  DEFAULT_PRIORITY,
  type Field,
  type FieldErrors,
  MAX_ATTEMPTS,
  MAX_CONCURRENCY_KEY_CHARS,
  MAX_CONCURRENCY_LIMIT,
  MAX_PRIORITY,
  MAX_REPLICAS,
  MIN_PRIORITY,
  type SubmitInit,
  type TaskForm,
  newRequestId,
  validateTask,
} from "../validation";

// How each field is named in a sentence ("Replicas must be between 1 and 50").
const NOUNS: Record<Field, string> = {
  name: "Name",
  kind: "Kind",
  workload: "Workload",
  max_runtime: "Max runtime",
  replicas: "Replicas",
  max_attempts: "Max attempts",
  run_at: "Start time",
  delay: "Start delay",
  priority: "Priority",
  concurrency_key: "Concurrency key",
  concurrency_limit: "Concurrency limit",
};

const PRIORITY_WORDS: Record<number, string> = { [MIN_PRIORITY]: " (lowest)", [DEFAULT_PRIORITY]: " (default)", [MAX_PRIORITY]: " (most urgent)" };

function prioritySelect(): HTMLSelectElement {
  const levels = Array.from({ length: MAX_PRIORITY - MIN_PRIORITY + 1 }, (_, i) => MIN_PRIORITY + i);
  return h(
    "select",
    { id: "task-priority", name: "priority" },
    ...levels.map((p) => h("option", { value: String(p), selected: p === DEFAULT_PRIORITY }, `${p}${PRIORITY_WORDS[p] ?? ""}`)),
  );
}

interface FieldSpec {
  field: Field;
  label: string;
  hint?: string;
  control: HTMLInputElement | HTMLSelectElement;
}

function input(id: string, value: string, attrs: Record<string, string> = {}): HTMLInputElement {
  return h("input", { id, name: id, value, autocomplete: "off", ...attrs });
}

export class SubmitForm {
  readonly element: HTMLFormElement;
  private kinds: string[] = [];
  private readonly controls: Record<Field, HTMLInputElement | HTMLSelectElement>;
  private readonly errors = new Map<Field, HTMLElement>();
  private readonly formError: HTMLElement;
  private shown: FieldErrors = {};

  constructor(private readonly onSubmit: (request: SubmitInit) => Promise<Refusal | null>) {
    const kind = h("select", { id: "task-kind", name: "kind" });
    const specs: FieldSpec[] = [
      { field: "name", label: "Name", control: input("task-name", "", { required: "true", spellcheck: "false" }) },
      { field: "kind", label: "Kind", control: kind },
      {
        field: "workload",
        label: "Workload (s)",
        hint: "How long the task works, up to 24 h.",
        control: input("task-workload", "5", { inputmode: "decimal" }),
      },
      {
        field: "max_runtime",
        label: "Max runtime (s)",
        hint: "Hard limit, 1 s to 24 h; empty uses the server default.",
        control: input("task-max-runtime", "", { inputmode: "decimal", placeholder: "default" }),
      },
      {
        field: "replicas",
        label: "Replicas",
        hint: `1 to ${MAX_REPLICAS}.`,
        control: input("task-replicas", "1", { inputmode: "numeric" }),
      },
      {
        field: "max_attempts",
        label: "Max attempts",
        hint: `1 to ${MAX_ATTEMPTS}.`,
        control: input("task-max-attempts", "3", { inputmode: "numeric" }),
      },
      {
        field: "priority",
        label: "Priority",
        hint: "When workers are busy, higher priorities start first; waiting work gains priority with age.",
        control: prioritySelect(),
      },
      {
        field: "concurrency_key",
        label: "Concurrency key",
        hint: `Optional, up to ${MAX_CONCURRENCY_KEY_CHARS} characters.`,
        control: input("task-concurrency-key", "", { spellcheck: "false", placeholder: "none" }),
      },
      {
        field: "concurrency_limit",
        label: "Concurrency limit",
        hint: `Running at once per key, 1 to ${MAX_CONCURRENCY_LIMIT}.`,
        control: input("task-concurrency-limit", "", { inputmode: "numeric" }),
      },
      {
        field: "run_at",
        label: "Start at",
        hint: "Optional, your local time.",
        control: input("task-start-at", "", { type: "datetime-local", step: "1" }),
      },
      {
        field: "delay",
        label: "Start after (s)",
        hint: "Optional delay; it waits as Scheduled.",
        control: input("task-start-after", "", { inputmode: "decimal", placeholder: "now" }),
      },
    ];
    this.controls = Object.fromEntries(specs.map((s) => [s.field, s.control])) as SubmitForm["controls"];
    this.formError = h("p", { class: "form-error", role: "alert" });
    this.element = h(
      "form",
      { class: "panel submit-form", "aria-labelledby": "submit-heading", novalidate: true },
      h("h2", { id: "submit-heading" }, "New task"),
      h("div", { class: "fields" }, ...specs.map((s) => this.renderField(s))),
      this.formError,
      h("button", { type: "submit", class: "btn primary" }, "Submit"),
    );
    this.element.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.send();
    });
    // Once a field shows an error, it is re-checked as the user types, so the message goes away.
    this.element.addEventListener("input", () => {
      if (Object.keys(this.shown).length === 0) return;
      const result = validateTask(this.values(), this.kinds, "x");
      const current = "errors" in result ? result.errors : {};
      const still: FieldErrors = {};
      for (const field of Object.keys(this.shown) as Field[]) if (current[field]) still[field] = current[field];
      this.show(still);
    });
  }

  setKinds(kinds: string[]): void {
    const select = this.controls.kind as HTMLSelectElement;
    const chosen = select.value || (kinds.includes("sleep") ? "sleep" : kinds[0]);
    this.kinds = kinds;
    select.replaceChildren(...kinds.map((k) => h("option", { value: k, selected: k === chosen }, k)));
  }

  private renderField(spec: FieldSpec): HTMLElement {
    const id = spec.control.id;
    const error = h("p", { class: "field-error", id: `${id}-error`, "data-error-for": spec.field });
    this.errors.set(spec.field, error);
    const hint = spec.hint ? h("p", { class: "hint", id: `${id}-hint` }, spec.hint) : null;
    spec.control.setAttribute("aria-describedby", [hint ? `${id}-hint` : "", `${id}-error`].join(" ").trim());
    return h("div", { class: `field field-${spec.field}` }, h("label", { for: id }, spec.label), spec.control, hint, error);
  }

  private values(): TaskForm {
    const c = this.controls;
    return {
      name: c.name.value,
      kind: c.kind.value,
      workloadS: c.workload.value,
      maxRuntimeS: c.max_runtime.value,
      replicas: c.replicas.value,
      maxAttempts: c.max_attempts.value,
      startAt: c.run_at.value,
      startAfterS: c.delay.value,
      priority: c.priority.value,
      concurrencyKey: c.concurrency_key.value,
      concurrencyLimit: c.concurrency_limit.value,
    };
  }

  private show(errors: FieldErrors): void {
    this.shown = errors;
    for (const [field, el] of this.errors) {
      const message = errors[field] ?? "";
      el.textContent = message ? `${NOUNS[field]} ${message}` : "";
      this.controls[field].toggleAttribute("aria-invalid", Boolean(message));
    }
  }

  private async send(): Promise<void> {
    this.formError.textContent = "";
    const result = validateTask(this.values(), this.kinds, newRequestId());
    if ("errors" in result) {
      this.show(result.errors);
      const first = (Object.keys(this.controls) as Field[]).find((f) => result.errors[f]);
      if (first) this.controls[first].focus();
      return;
    }
    this.show({});
    const count = result.request.replicas ?? 1;
    announce(`Submitting ${count} task${count === 1 ? "" : "s"}`);
    const refusal = await this.onSubmit(result.request);
    if (!refusal) return;
    if (refusal.field && refusal.field in this.controls) {
      this.show({ [refusal.field]: refusal.reason });
      this.controls[refusal.field as Field].focus();
    } else {
      this.formError.textContent = `Not submitted: ${refusal.field ? `${refusal.field}: ` : ""}${refusal.reason}`;
    }
  }
}
