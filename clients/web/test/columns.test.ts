import assert from "node:assert/strict";
import { test } from "node:test";
import { COLUMNS } from "../src/views/columns";
import { fit } from "../src/views/table";

const ids = (width: number): string[] => fit(COLUMNS, width).shown.map((c) => c.id);

test("every column fits a wide table", () => {
  assert.deepEqual(ids(1600), COLUMNS.map((c) => c.id));
  assert.equal(fit(COLUMNS, 1600).stacked, false);
});

test("columns give way from the least needed, and the essential ones never do", () => {
  const narrow = ids(900);
  for (const essential of ["select", "task", "status", "progress", "actions"]) assert.ok(narrow.includes(essential), essential);
  assert.ok(!narrow.includes("attempt"), "the attempt column goes first");
  let previous = COLUMNS.length;
  for (let width = 1600; width >= 700; width -= 20) {
    const { shown, stacked } = fit(COLUMNS, width);
    assert.ok(shown.length <= previous, `columns only leave as the table narrows (${width}px)`);
    previous = shown.length;
    assert.equal(stacked, false, `${width}px still fits one line per row`);
  }
});

test("below the width of the essential columns each row takes two lines", () => {
  const { shown, stacked } = fit(COLUMNS, 340);
  assert.equal(stacked, true);
  assert.deepEqual(shown.map((c) => c.id), ["select", "task", "status", "progress", "actions"]);
});
