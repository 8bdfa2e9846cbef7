// Entry point: the login page or the dashboard, depending on whether this tab holds a token.

import { createApi } from "./api";
import { type Session, clearSession, loadSession, saveSession } from "./session";
import { type Dashboard, renderDashboard } from "./views/dashboard";
import { renderLogin } from "./views/login";

const app = document.getElementById("app") as HTMLElement;
let session: Session | null = loadSession();
let dashboard: Dashboard | null = null;

// Every call that comes back UNAUTHENTICATED drops the token and returns to the login page.
const api = createApi(
  () => session?.token ?? null,
  () => logout("Your session has ended. Please log in again."),
);

function showLogin(notice: string): void {
  dashboard?.dispose();
  dashboard = null;
  app.replaceChildren(
    renderLogin(api.auth, notice, (next) => {
      saveSession(next);
      session = next;
      showDashboard(next);
    }),
  );
  document.getElementById("email")?.focus();
}

function showDashboard(current: Session): void {
  dashboard?.dispose();
  dashboard = renderDashboard(api, current, logout);
  app.replaceChildren(dashboard.element);
  document.getElementById("task-name")?.focus();
}

function logout(notice: string): void {
  // Several calls may fail at once with an expired token; only the first one acts.
  if (!session) return;
  session = null;
  clearSession();
  showLogin(notice);
}

if (session) showDashboard(session);
else showLogin("");
