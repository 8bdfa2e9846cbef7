import assert from "node:assert/strict";
import { test } from "node:test";
import { type MessageInitShape, create } from "@bufbuild/protobuf";
import { type TaskStats, TaskStatsSchema } from "../src/gen/resilienttask/v1/task_pb";
import { BIN_MS, Trend, WINDOW_BINS } from "../src/trend";
import { niceMax } from "../src/views/charts";

const T0 = 1_700_000_000_000; // a bin boundary

function stats(fields: MessageInitShape<typeof TaskStatsSchema>): TaskStats {
  return create(TaskStatsSchema, fields);
}

test("the first stats are a baseline; later finishes land in the second they were seen", () => {
  const trend = new Trend();
  trend.observe(stats({ succeeded: 40n, failed: 2n, queued: 5n }), T0 + 100);
  trend.observe(stats({ succeeded: 43n, failed: 2n, queued: 3n }), T0 + 900);
  trend.observe(stats({ succeeded: 44n, failed: 3n, queued: 1n }), T0 + 1_200);
  trend.observe(stats({ succeeded: 44n, failed: 3n, timedOut: 1n }), T0 + 3_500);
  const bins = trend.series(T0 + 4_000);
  assert.equal(bins.length, WINDOW_BINS);
  const last = bins.slice(-5);
  assert.deepEqual(
    last.map((b) => b.t),
    [0, 1, 2, 3, 4].map((i) => T0 + i * BIN_MS),
  );
  assert.deepEqual(last[0].finished, { succeeded: 3, failed: 0, cancelled: 0, timedOut: 0 });
  assert.deepEqual(last[1].finished, { succeeded: 1, failed: 1, cancelled: 0, timedOut: 0 });
  assert.deepEqual(last[3].finished, { succeeded: 0, failed: 0, cancelled: 0, timedOut: 1 });
  // The depth is the last seen in each second, carried through quiet seconds.
  assert.deepEqual(
    last.map((b) => b.queued),
    [3, 1, 1, 0, 0],
  );
});

test("a count that falls (history cleared, a retry) plots nothing, and later finishes count from there", () => {
  const trend = new Trend();
  trend.observe(stats({ succeeded: 10n, failed: 4n }), T0);
  trend.observe(stats({ succeeded: 0n, failed: 3n }), T0 + 10);
  trend.observe(stats({ succeeded: 2n, failed: 3n }), T0 + 20);
  const [bin] = trend.series(T0).slice(-1);
  assert.deepEqual(bin.finished, { succeeded: 2, failed: 0, cancelled: 0, timedOut: 0 });
});

test("bins older than the window are dropped, but the depth they held carries on", () => {
  const trend = new Trend();
  trend.observe(stats({ succeeded: 0n, queued: 7n }), T0);
  trend.observe(stats({ succeeded: 5n, queued: 7n }), T0 + 10);
  const later = T0 + (WINDOW_BINS + 20) * BIN_MS;
  const bins = trend.series(later);
  assert.equal(bins.length, WINDOW_BINS);
  assert.equal(bins[0].t, later - (WINDOW_BINS - 1) * BIN_MS);
  assert.ok(bins.every((b) => b.queued === 7));
  assert.equal(bins.reduce((n, b) => n + b.finished.succeeded, 0), 0);
});

test("the y axis ends on a round number", () => {
  assert.deepEqual([0, 1, 3, 7, 20, 21, 480].map(niceMax), [1, 1, 5, 10, 20, 50, 500]);
});
