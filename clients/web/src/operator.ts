// The operator's rate-limit form: checked here as the server checks it, and how a limit reads on screen.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { type RateLimit, RateLimitSchema } from "./gen/resilienttask/v1/operator_pb";
import { durationRangeMs, durationText, valueRange } from "./limits";
import { durationMs, parseSeconds } from "./validation";

// The bounds the contract declares (limits.ts reads them from the descriptors).
export const { min: MIN_RATE_STARTS, max: MAX_RATE_STARTS } = valueRange(RateLimitSchema, "starts");
export const { min: MIN_RATE_PERIOD_MS, max: MAX_RATE_PERIOD_MS } = durationRangeMs(RateLimitSchema, "period");
const PERIOD_RANGE = `must be from ${durationText(MIN_RATE_PERIOD_MS, " ")} to ${durationText(MAX_RATE_PERIOD_MS, " ")} (${MAX_RATE_PERIOD_MS / 1000} s)`;

export type RateField = "starts" | "period";
export type RateInit = MessageInitShape<typeof RateLimitSchema>;

/** The limit to send, or the errors to show next to each field. */
export function validateRateLimit(startsText: string, periodSText: string): { limit: RateInit } | { errors: Partial<Record<RateField, string>> } {
  const errors: Partial<Record<RateField, string>> = {};
  const starts = /^\s*\d{1,6}\s*$/.test(startsText) ? Number(startsText) : null;
  if (starts === null || starts < MIN_RATE_STARTS || starts > MAX_RATE_STARTS) {
    errors.starts = `must be a whole number from ${MIN_RATE_STARTS} to ${MAX_RATE_STARTS.toLocaleString("en")}`;
  }
  const period = parseSeconds(periodSText);
  const periodMs = period ? durationMs(period) : -1;
  if (!period || periodMs < MIN_RATE_PERIOD_MS || periodMs > MAX_RATE_PERIOD_MS) errors.period = PERIOD_RANGE;
  else if (period.nanos % 1_000_000 !== 0) errors.period = "must be in whole milliseconds";
  if (Object.keys(errors).length > 0 || starts === null || !period) return { errors };
  return { limit: { starts, period } };
}

/** Which of the form's fields a server refusal names ("rate_limit.starts" → starts), or null. */
export function rateFieldOf(field: string | null): RateField | null {
  if (field === "rate_limit.starts" || field === "starts") return "starts";
  if (field === "rate_limit.period" || field === "period" || field?.startsWith("rate_limit.period.")) return "period";
  return null;
}

/** The period in seconds as the form shows it ("1", "0.5"). */
export function periodSeconds(limit: RateLimit): string {
  const ms = limit.period ? durationMs(limit.period) : 0;
  return String(ms / 1000);
}

/** "10 per 1 s", "600 per 5 min", "none". */
export function rateLimitText(limit: RateLimit | undefined): string {
  if (!limit) return "none";
  const ms = limit.period ? durationMs(limit.period) : 0;
  const per = ms % 3_600_000 === 0 ? `${ms / 3_600_000} h` : ms % 60_000 === 0 ? `${ms / 60_000} min` : `${ms / 1000} s`;
  return `${limit.starts} per ${per}`;
}
