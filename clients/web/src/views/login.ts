// Log in or sign up: one form, two buttons. The server's answer is shown next to the field it names.

import { timestampMs } from "@bufbuild/protobuf/wkt";
import { type AuthClient, UNARY_TIMEOUT_MS, refusal } from "../api";
import { h } from "../dom";
import type { Session } from "../session";

// The server's password rule (services/core/passwords.py): 8 to 72 bytes of UTF-8.
const MIN_PASSWORD_BYTES = 8;
const MAX_PASSWORD_BYTES = 72;

export function passwordProblem(password: string): string | null {
  const bytes = new TextEncoder().encode(password).length;
  return bytes < MIN_PASSWORD_BYTES || bytes > MAX_PASSWORD_BYTES
    ? `must be ${MIN_PASSWORD_BYTES} to ${MAX_PASSWORD_BYTES} bytes long`
    : null;
}

export function renderLogin(auth: AuthClient, notice: string, onSession: (session: Session) => void): HTMLElement {
  const email = h("input", {
    id: "email",
    name: "email",
    type: "email",
    autocomplete: "username",
    required: true,
    "aria-describedby": "email-error",
  });
  const password = h("input", {
    id: "password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
    "aria-describedby": "password-hint password-error",
  });
  const emailError = h("p", { class: "field-error", id: "email-error" });
  const passwordError = h("p", { class: "field-error", id: "password-error" });
  const formError = h("p", { class: "form-error", role: "alert" });
  const buttons = [
    h("button", { type: "submit", class: "btn primary", value: "login" }, "Log in"),
    h("button", { type: "submit", class: "btn", value: "signup" }, "Sign up"),
  ];
  const form = h(
    "form",
    { class: "login panel", "aria-labelledby": "login-heading", novalidate: true },
    h("h1", { id: "login-heading" }, "ResilientTask"),
    h("p", { class: "lede" }, "Log in, or sign up with a new email, to watch your tasks live."),
    notice ? h("p", { class: "notice", role: "status" }, notice) : null,
    h("div", { class: "field" }, h("label", { for: "email" }, "Email"), email, emailError),
    h(
      "div",
      { class: "field" },
      h("label", { for: "password" }, "Password"),
      password,
      h("p", { class: "hint", id: "password-hint" }, "8 to 72 bytes."),
      passwordError,
    ),
    formError,
    h("div", { class: "buttons" }, ...buttons),
  );

  const show = (field: "email" | "password" | null, message: string): void => {
    emailError.textContent = field === "email" ? `Email ${message}` : "";
    passwordError.textContent = field === "password" ? `Password ${message}` : "";
    formError.textContent = field === null ? message : "";
    email.toggleAttribute("aria-invalid", field === "email");
    password.toggleAttribute("aria-invalid", field === "password");
    if (field) (field === "email" ? email : password).focus();
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const signup = (event.submitter as HTMLButtonElement | null)?.value === "signup";
    if (!email.value.trim()) return show("email", "is required");
    const problem = passwordProblem(password.value);
    if (problem) return show("password", problem);
    show(null, "");
    buttons.forEach((b) => (b.disabled = true));
    try {
      const request = { email: email.value, password: password.value };
      const options = { timeoutMs: UNARY_TIMEOUT_MS };
      const reply = signup ? await auth.signup(request, options) : await auth.login(request, options);
      onSession({
        token: reply.accessToken,
        email: reply.user?.email ?? email.value.trim(),
        expiresAtMs: reply.expiresAt ? timestampMs(reply.expiresAt) : 0,
      });
    } catch (err) {
      const refused = refusal(err);
      const field = refused.field === "email" || refused.field === "password" ? refused.field : null;
      show(field, field ? refused.reason : refused.reason.replace(/^./, (c) => c.toUpperCase()));
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  });
  return h("main", { class: "login-page" }, form);
}
