import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { RateLimitSchema } from "../src/gen/resilienttask/v1/operator_pb";
import { periodSeconds, rateFieldOf, rateLimitText, validateRateLimit } from "../src/operator";

const errors = (starts: string, period: string) => {
  const result = validateRateLimit(starts, period);
  return "errors" in result ? result.errors : {};
};

test("a rate limit is 1 to 100,000 starts per 1 s to 1 h, as the server bounds it", () => {
  const ok = validateRateLimit("10", "1.5");
  assert.ok("limit" in ok);
  assert.deepEqual(ok.limit, { starts: 10, period: { seconds: 1n, nanos: 500_000_000 } });
  assert.deepEqual(errors("100000", "3600"), {});
  assert.deepEqual(errors("0", "1"), { starts: "must be a whole number from 1 to 100,000" });
  assert.deepEqual(errors("100001", "1"), { starts: "must be a whole number from 1 to 100,000" });
  assert.deepEqual(errors("2.5", "1"), { starts: "must be a whole number from 1 to 100,000" });
  assert.deepEqual(errors("5", "0.999"), { period: "must be from 1 s to 1 h (3600 s)" });
  assert.deepEqual(errors("5", "3600.001"), { period: "must be from 1 s to 1 h (3600 s)" });
  assert.deepEqual(errors("5", ""), { period: "must be from 1 s to 1 h (3600 s)" });
  assert.deepEqual(errors("5", "1.0005"), { period: "must be in whole milliseconds" });
  assert.deepEqual(errors("5", "1.005"), {});
});

test("limits read plainly and the server's field names map to the form's", () => {
  const limit = (starts: number, seconds: bigint, nanos = 0) => create(RateLimitSchema, { starts, period: { seconds, nanos } });
  assert.equal(rateLimitText(undefined), "none");
  assert.equal(rateLimitText(limit(10, 1n)), "10 per 1 s");
  assert.equal(rateLimitText(limit(600, 300n)), "600 per 5 min");
  assert.equal(rateLimitText(limit(1, 3600n)), "1 per 1 h");
  assert.equal(rateLimitText(limit(3, 0n, 500_000_000)), "3 per 0.5 s");
  assert.equal(periodSeconds(limit(3, 2n, 500_000_000)), "2.5");
  assert.equal(rateFieldOf("rate_limit.starts"), "starts");
  assert.equal(rateFieldOf("rate_limit.period"), "period");
  assert.equal(rateFieldOf("kind"), null);
  assert.equal(rateFieldOf(null), null);
});
