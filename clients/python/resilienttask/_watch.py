"""The watch's plain state: resume tokens, stale-update filtering, reconnect pacing, what wait() holds.

The I/O lives in aio.py (and client.py, generated from it); everything here is plain state.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator

import grpc

from resilienttask._convert import watch_events_from_proto
from resilienttask._retry import Reconnect, RetryPolicy
from resilienttask.errors import DeadlineExceeded, NotFound
from resilienttask.limits import field_limits
from resilienttask.models import Snapshot, Task, TaskUpdate, WatchEvent
from resilienttask.v1 import scheduler_pb2

# Versions remembered for dropping repeats: repeats follow a reconnect and concern recent changes, so the
# least recently changed tasks can be forgotten and a long watch of a busy account stays small.
MAX_REMEMBERED_TASKS = 100_000
# ListTasks page size when wait() fetches a batch's whole tasks: one page holds a batch (at most 50 replicas).
BATCH_PAGE_SIZE = field_limits(scheduler_pb2.ListTasksRequest, "page_size").max_value or 1
# GetTask calls the asyncio wait() has in flight at once when it fetches whole tasks one by one.
FETCH_CONCURRENCY = 32


class WatchState:
    """The resume token and newest version seen per task, and when to reconnect or give up (Reconnect).

    Events carry the task as it now is; after a reconnect the service may repeat a change the
    client already has, so an update whose version is not newer than the one held is dropped.
    """

    def __init__(self, resume_token: str, policy: RetryPolicy, deadline: float | None) -> None:
        self.resume_token = resume_token
        self.deadline = deadline
        self.versions: OrderedDict[str, int] = OrderedDict()
        self.reconnect = Reconnect(policy, "watch", deadline)

    @property
    def reconnects(self) -> int:
        return self.reconnect.reconnects

    def request(self) -> scheduler_pb2.WatchTasksRequest:
        return scheduler_pb2.WatchTasksRequest(resume_token=self.resume_token, accept_batches=True)

    def call_timeout(self) -> float | None:
        """Seconds left for the next stream call (None: no deadline); raises once the deadline passed."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the watch reached its deadline")
        return left

    def accept(self, message: scheduler_pb2.WatchTasksResponse) -> Iterator[WatchEvent]:
        """Record a stream message; iterate the result for the events to hand out (a batch holds several).

        Heartbeats and stale updates yield nothing. The resume token moves to each event as it is handed
        out, so a caller that stops in the middle of a batch resumes right after the last event it saw.
        """
        self.reconnect.heard()
        return self._hand_out(watch_events_from_proto(message), message.resume_token)

    def _hand_out(self, events: list[WatchEvent], message_token: str) -> Iterator[WatchEvent]:
        for event in events:
            if event.resume_token:
                self.resume_token = event.resume_token
            if isinstance(event, Snapshot):
                for task in event.tasks:
                    self._remember(task)
            elif isinstance(event, TaskUpdate):
                known = self.versions.get(event.task.id)
                if known is not None and event.task.version <= known and not event.deleted:
                    continue
                self._remember(event.task)
            yield event
        if message_token:
            self.resume_token = message_token

    def _remember(self, task: Task) -> None:
        self.versions[task.id] = max(task.version, self.versions.get(task.id, task.version))
        self.versions.move_to_end(task.id)
        if len(self.versions) > MAX_REMEMBERED_TASKS:
            self.versions.popitem(last=False)

    def pause_after(self, error: grpc.RpcError | None) -> float:
        """How long to wait before reopening the stream after it ended (error None: it ended cleanly); raises
        the SDK error instead when a reconnect would not cure the failure or the watch failed for too long."""
        return self.reconnect.pause_after(error)


class WaitTracker:
    """The newest known state of the tasks a wait() is for.

    Watch events carry summaries (no result or payload), so once every task is done the whole tasks are
    fetched (batches_to_list, summarized, complete); a task found changed again meanwhile (retried) is waited for again.
    """

    def __init__(self, task_ids: Iterable[str]) -> None:
        self.order = list(dict.fromkeys(task_ids))
        if not self.order:
            raise ValueError("wait() needs at least one task id")
        self.latest: dict[str, Task] = {}

    def apply(self, task: Task) -> bool:
        """Keep task if it is one waited for and newer than what is held; True when it was kept."""
        held = self.latest.get(task.id)
        if task.id not in self.order or (held is not None and task.version <= held.version):
            return False
        self.latest[task.id] = task
        return True

    def apply_event(self, event: WatchEvent) -> list[Task]:
        """Take what the event says about the waited tasks; returns those that changed."""
        if isinstance(event, Snapshot):
            return [task for task in event.tasks if self.apply(task)]
        if isinstance(event, TaskUpdate):
            if event.deleted and event.task.id in self.order:
                raise NotFound(f"task {event.task.id} was deleted while waiting for it")
            return [event.task] if self.apply(event.task) else []
        return []

    def missing(self) -> list[str]:
        """Ids the snapshot did not include (older tasks): fetched once, events keep them current."""
        return [task_id for task_id in self.order if task_id not in self.latest]

    def done(self) -> bool:
        return len(self.latest) == len(self.order) and all(t.done for t in self.latest.values())

    def summarized(self) -> list[str]:
        """Ids of the tasks held as watch summaries, whose whole tasks (result, payload, full error) are fetched."""
        return [task_id for task_id in self.order if task_id in self.latest and self.latest[task_id].summary]

    def batches_to_list(self) -> list[str]:
        """Batches holding several summarized tasks: one ListTasks call fetches them all. The rest (and any a
        listing missed) are fetched one by one with GetTask."""
        per_batch = Counter(self.latest[task_id].batch_id for task_id in self.summarized())
        return [batch for batch, count in per_batch.items() if count > 1 and batch]

    def complete(self, task: Task) -> None:
        """Hold a whole task fetched for a summary: the same state (version) or a newer one."""
        held = self.latest.get(task.id)
        if held is not None and task.version >= held.version:
            self.latest[task.id] = task

    def results(self) -> list[Task]:
        return [self.latest[task_id] for task_id in self.order]

    def timeout_error(self, timeout_s: float) -> DeadlineExceeded:
        pending = [task_id for task_id in self.order if task_id not in self.latest or not self.latest[task_id].done]
        return DeadlineExceeded(f"{len(pending)} of {len(self.order)} tasks not finished after {timeout_s:g}s")


def task_ids(tasks: str | Task | Iterable[str | Task]) -> list[str]:
    """Ids from one id, one Task, or a mix of both."""
    if isinstance(tasks, str | Task):
        tasks = [tasks]
    return [t.id if isinstance(t, Task) else t for t in tasks]
