// Where the dashboard is, in its address: the task list's query in the search string (see query.ts) and
// the open task's page in the fragment, "#/tasks/<id>", so either can be reloaded, bookmarked or shared.

const TASK_HASH = /^#\/tasks\/([0-9a-f-]{36})$/;

/** The task whose page the fragment names, or null. */
export function taskInHash(hash: string): string | null {
  return TASK_HASH.exec(hash.toLowerCase())?.[1] ?? null;
}

export function taskHash(taskId: string): string {
  return `#/tasks/${taskId}`;
}
