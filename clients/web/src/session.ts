// The signed-in user, kept for this tab only (sessionStorage): closing the tab signs out.

const KEY = "resilienttask.session";

export interface Session {
  token: string;
  email: string;
  /** Milliseconds since the epoch; 0 when the server did not say. */
  expiresAtMs: number;
}

export function loadSession(): Session | null {
  try {
    const raw = sessionStorage.getItem(KEY);
    if (!raw) return null;
    const session = JSON.parse(raw) as Session;
    if (typeof session.token !== "string" || !session.token) return null;
    if (session.expiresAtMs && session.expiresAtMs <= Date.now()) {
      clearSession();
      return null;
    }
    return session;
  } catch {
    return null;
  }
}

export function saveSession(session: Session): void {
  sessionStorage.setItem(KEY, JSON.stringify(session));
}

export function clearSession(): void {
  sessionStorage.removeItem(KEY);
}
