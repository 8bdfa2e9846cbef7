// The bounds of request fields, read from the contract's descriptors (proto/resilienttask/v1/limits.proto):
// the forms check what the server checks without a copy of any number.

import { type DescMessage, getOption, hasOption } from "@bufbuild/protobuf";
import { type FieldLimits, limits } from "./gen/resilienttask/v1/limits_pb";

/** The limits declared on `field` (its name in the proto) of `message`; throws when it declares none. */
export function fieldLimits(message: DescMessage, field: string): FieldLimits {
  const desc = message.fields.find((f) => f.name === field);
  if (!desc || !hasOption(desc, limits)) throw new Error(`${message.typeName}.${field} declares no limits`);
  return getOption(desc, limits);
}

function required(value: number | bigint | undefined, what: string): number {
  if (value === undefined) throw new Error(`no ${what} declared`);
  return Number(value);
}

/** An integer field's range. */
export function valueRange(message: DescMessage, field: string): { min: number; max: number } {
  const l = fieldLimits(message, field);
  return { min: required(l.minValue, "min_value"), max: required(l.maxValue, "max_value") };
}

/** A duration field's range in milliseconds (0 when no minimum is declared). */
export function durationRangeMs(message: DescMessage, field: string): { min: number; max: number } {
  const l = fieldLimits(message, field);
  return { min: Number(l.minDurationMs ?? 0n), max: required(l.maxDurationMs, "max_duration_ms") };
}

/** The most characters a string field takes. */
export function maxChars(message: DescMessage, field: string): number {
  return required(fieldLimits(message, field).maxChars, "max_chars");
}

/** The most items a repeated field takes. */
export function maxItems(message: DescMessage, field: string): number {
  return required(fieldLimits(message, field).maxItems, "max_items");
}

/** A bound as the server words it: "1s", "24h", "366 days" (with `space`, "1 s", "1 h"). */
export function durationText(ms: number, space = ""): string {
  const day = 86_400_000;
  if (ms > day && ms % day === 0) return `${ms / day} days`;
  for (const [unit, name] of [[3_600_000, "h"], [60_000, "min"], [1000, "s"]] as const) {
    if (ms >= unit && ms % unit === 0) return `${ms / unit}${space}${name}`;
  }
  return `${ms} ms`;
}
