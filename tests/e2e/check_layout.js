// Run in the page by tests/e2e/test_dashboard_operator.py: every row's action buttons, the bulk bar's and the
// filter bar's controls, against their cell (or bar), the table's scrolling frame and the window; whether two
// buttons of a row overlap; whether the page scrolls sideways. Returns { problems, checked }.
() => {
  const problems = [];
  const inside = (a, b) => a.left >= b.left - 0.5 && a.right <= b.right + 0.5 && a.top >= b.top - 0.5 && a.bottom <= b.bottom + 0.5;
  const name = (el) => el.getAttribute('aria-label') || el.id || el.textContent.trim();
  const frame = document.querySelector('.viewport').getBoundingClientRect();
  const checked = [];
  for (const button of document.querySelectorAll('.tbody [role=row] button.btn')) {
    const box = button.getBoundingClientRect();
    const cell = button.closest('[role=cell]').getBoundingClientRect();
    if (box.width === 0) problems.push(`${name(button)}: not shown`);
    if (!inside(box, cell)) problems.push(`${name(button)}: outside its cell`);
    if (box.left < frame.left - 0.5 || box.right > frame.right + 0.5) problems.push(`${name(button)}: clipped by the table`);
    if (box.left < 0 || box.right > window.innerWidth) problems.push(`${name(button)}: outside the window`);
    checked.push(name(button));
  }
  for (const cell of document.querySelectorAll('.tbody .actions')) {
    const boxes = [...cell.querySelectorAll('button')].map((b) => b.getBoundingClientRect());
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i], b = boxes[j];
      if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) problems.push('two buttons of a row overlap');
    }
  }
  for (const [bar, selector] of [['.bulk-bar', 'button'], ['.filters', 'input, select, summary, button'], ['.toolbar', 'button']]) {
    const outer = document.querySelector(bar);
    if (!outer || outer.hidden) continue;
    for (const control of outer.querySelectorAll(selector)) {
      if (!control.checkVisibility({ visibilityProperty: true, contentVisibilityAuto: true })) continue;
      const box = control.getBoundingClientRect();
      const o = outer.getBoundingClientRect();
      if (!inside(box, o)) problems.push(`${bar} ${name(control)}: outside its bar (${JSON.stringify([box, o])})`);
      if (box.left < 0 || box.right > window.innerWidth) problems.push(`${bar} ${name(control)}: outside the window`);
    }
  }
  const overflow = document.documentElement.scrollWidth - window.innerWidth;
  if (overflow > 0) problems.push(`the page scrolls sideways by ${overflow}px`);
  return { problems, checked };

}
