// Busy slots per worker, from the same watch events as the task table.
//
// A worker's own figure (Worker.busy) is as old as the heartbeat that carried it, and the pool is announced only
// when that figure changes: on its own it showed "0 of 30 slots busy" while 50 tasks ran. The caller's tasks are
// known better from their events, so they are counted from those; the heartbeat is kept only for what the events
// cannot tell, the work of other users: its figure less the caller's tasks that were running on the worker at the
// time of that heartbeat.

import { ms } from "./format";
import { type Task, TaskStatus, type Worker } from "./gen/resilienttask/v1/task_pb";

/** A slot is held from the start until the worker let the task go (a cancelling task still holds it). */
function holdsSlot(task: Task): boolean {
  return task.status === TaskStatus.RUNNING || task.status === TaskStatus.CANCELLING;
}

/** Whether the task ran at `at` (epoch ms): started by then, and not finished before. */
function ranAt(task: Task, at: number): boolean {
  const started = ms(task.startedAt);
  if (started === null || started > at) return false;
  const finished = ms(task.finishedAt);
  return finished === null ? holdsSlot(task) : finished > at;
}

/** Slots in use per worker id: the caller's tasks holding one now, plus the others' work the heartbeat saw. */
export function busySlots(workers: readonly Worker[], tasks: Iterable<Task>): Map<string, number> {
  const mine = new Map<string, Task[]>();
  for (const task of tasks) {
    if (!task.workerId) continue;
    const held = mine.get(task.workerId);
    if (held) held.push(task);
    else mine.set(task.workerId, [task]);
  }
  const busy = new Map<string, number>();
  for (const worker of workers) {
    const own = mine.get(worker.id) ?? [];
    const now = own.filter(holdsSlot).length;
    const beat = ms(worker.lastHeartbeat);
    const atBeat = beat === null ? now : own.filter((task) => ranAt(task, beat)).length;
    const others = Math.max(0, worker.busy - atBeat);
    busy.set(worker.id, Math.min(worker.slots, now + others));
  }
  return busy;
}
