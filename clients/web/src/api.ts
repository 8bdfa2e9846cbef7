// The grpc-web clients (through Envoy, same origin) and the small vocabulary for their errors.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb";
import { AuthService } from "./gen/resilienttask/v1/auth_pb";
import { OperatorService } from "./gen/resilienttask/v1/operator_pb";
import { ScheduleService } from "./gen/resilienttask/v1/schedule_pb";
import { SchedulerService } from "./gen/resilienttask/v1/scheduler_pb";

/** Unary calls give up after this long; Envoy caps them at its own unary timeout anyway. */
export const UNARY_TIMEOUT_MS = 15_000;

export type SchedulerClient = Client<typeof SchedulerService>;
export type AuthClient = Client<typeof AuthService>;
export type ScheduleClient = Client<typeof ScheduleService>;
export type OperatorClient = Client<typeof OperatorService>;

export interface Api {
  auth: AuthClient;
  scheduler: SchedulerClient;
  schedules: ScheduleClient;
  operator: OperatorClient;
}

/**
 * Clients whose calls carry the current bearer token; any UNAUTHENTICATED answer calls
 * `onUnauthenticated` (the token expired or was refused), wherever the call was made.
 */
export function createApi(token: () => string | null, onUnauthenticated: () => void): Api {
  const bearer: Interceptor = (next) => async (req) => {
    const value = token();
    if (value) req.header.set("authorization", `Bearer ${value}`);
    try {
      return await next(req);
    } catch (err) {
      // OperatorService answers PERMISSION_DENIED to a signed-in user who is not an operator: not a session's end.
      const ended = req.service.typeName === OperatorService.typeName ? isExpired(err) : isUnauthenticated(err);
      if (value && ended) onUnauthenticated();
      throw err;
    }
  };
  const transport = createGrpcWebTransport({ baseUrl: location.origin, interceptors: [bearer] });
  return {
    auth: createClient(AuthService, transport),
    scheduler: createClient(SchedulerService, transport),
    schedules: createClient(ScheduleService, transport),
    operator: createClient(OperatorService, transport),
  };
}

export function isUnauthenticated(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return code === Code.Unauthenticated || code === Code.PermissionDenied;
}

function isExpired(err: unknown): boolean {
  return ConnectError.from(err).code === Code.Unauthenticated;
}

/** The operator calls' answer to a user without the operator role. */
export function isNotOperator(err: unknown): boolean {
  return ConnectError.from(err).code === Code.PermissionDenied;
}

export interface Refusal {
  code: Code;
  /** The request field the server named, by its path ("spec.cron.expression"), if any. */
  field: string | null;
  reason: string;
}

/** What the server refused: the field and reason of a google.rpc.BadRequest in the status details when it named
 * one (the message text is for people, never parsed); network failures get a plain-language reason. */
export function refusal(err: unknown): Refusal {
  const error = ConnectError.from(err);
  const message = error.rawMessage;
  const violation = error.findDetails(BadRequestSchema).flatMap((details) => details.fieldViolations)[0];
  if (violation && violation.field) {
    return { code: error.code, field: violation.field, reason: violation.description || message };
  }
  if (error.code === Code.Unavailable || error.code === Code.Unknown || error.code === Code.Internal) {
    return { code: error.code, field: null, reason: "the server could not be reached; try again" };
  }
  if (error.code === Code.DeadlineExceeded) {
    return { code: error.code, field: null, reason: "the server did not answer in time; try again" };
  }
  return { code: error.code, field: null, reason: message || Code[error.code] };
}

/** Failures worth one more try with the same idempotency key. */
export function isTransient(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return code === Code.Unavailable || code === Code.Unknown || code === Code.Internal;
}
