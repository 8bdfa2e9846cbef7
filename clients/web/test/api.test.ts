import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "../src/gen/google/rpc/error_details_pb";
import { refusal } from "../src/api";

function refused(code: Code, message: string, field?: string, description?: string): ConnectError {
  const details =
    field === undefined
      ? []
      : [{ desc: BadRequestSchema, value: create(BadRequestSchema, { fieldViolations: [{ field, description }] }) }];
  return new ConnectError(message, code, undefined, details);
}

test("the field comes from the status details", () => {
  const error = refused(Code.InvalidArgument, "spec.cron.expression: bad", "spec.cron.expression", "bad");
  assert.deepEqual(refusal(error), { code: Code.InvalidArgument, field: "spec.cron.expression", reason: "bad" });
  const taken = refused(Code.AlreadyExists, "email: is already registered", "email", "is already registered");
  assert.equal(refusal(taken).field, "email");
});

test("a message that only looks like 'field: reason' names no field", () => {
  const error = refused(Code.InvalidArgument, "replicas: must be between 1 and 50");
  assert.deepEqual(refusal(error), {
    code: Code.InvalidArgument,
    field: null,
    reason: "replicas: must be between 1 and 50",
  });
});

test("transport failures read as such", () => {
  assert.equal(refusal(refused(Code.Unavailable, "upstream connect error")).field, null);
  assert.match(refusal(refused(Code.Unavailable, "x")).reason, /could not be reached/);
});
