"""CPU time of tracing one task, in one process, away from the noise of a shared machine.

    .venv/bin/python -m bench.tracing_cpu [--tasks 20000] [--batch 20]

What the worker and the scheduler do for one traced task, in the order they do it, in this process with the tracer
provider the services install (the OTLP exporter on its batch thread, 100 % sampling): the worker's delivery (queue wait
spans), its start request's traceparent, the scheduler's task.start spans, the handler span made current, the finish
item's traceparent and the scheduler's task.finish spans; then every span flushed to an OTLP receiver in a child process
(its CPU is not counted). Printed: the user+system CPU seconds of this process (event-loop side and export thread
together) per task, with tracing on, and the same loop with tracing off, and how much of it ran on other threads than
the caller's (the export thread: what an event loop may wait for the GIL behind). The gateway's spans (one server span
and one task.publish per SubmitTask of up to 50 tasks) are not in it.

The drain's CPU per task (docs/observability-cost.md, all our processes, tracing off) is what to divide by.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

from bench.observability_sides import Receiver
from resilienttask.v1 import task_pb2
from resilienttask.worker.v1 import worker_pb2
from services.core import tracing
from services.core.dispatch import DispatchEntry
from services.core.settings import load
from services.scheduler.tracing import BatchTimes, record_work
from services.worker.consumer import Delivery
from services.worker.tracing import handler_run, handler_span, queue_waits, sampled_parent


def one_batch(first: int, batch: int) -> None:
    """`batch` tasks through the worker's and the scheduler's tracing calls (started and finished together, as the
    scheduler records them)."""
    now_ms = time.time_ns() // 1_000_000
    traceparent = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"  # the batch's tasks: replicas of a submission
    deliveries = [
        Delivery(f"sleep:{now_ms}-{first + i}", DispatchEntry(str(uuid.UUID(int=first + i)), "d", "sleep", traceparent))
        for i in range(batch)
    ]
    queue_waits(deliveries)
    starts = [worker_pb2.StartItem(task_id=d.entry.task_id, trace_parent=sampled_parent(d)) for d in deliveries]
    results = [
        worker_pb2.StartResult(
            task_id=d.entry.task_id, decision=worker_pb2.START_DECISION_RUN, task=task_pb2.Task(attempt=1), fence=7
        )
        for d in deliveries
    ]
    began = time.time_ns()
    record_work("w", [], [], starts, results, BatchTimes(began, began + 1000, began + 2000))
    finishes = []
    for delivery, result in zip(deliveries, results, strict=True):
        span = handler_span(delivery, result)
        with handler_run(span, str):
            pass
        item = worker_pb2.FinishItem(outcome=worker_pb2.OUTCOME_SUCCEEDED, trace_parent=sampled_parent(delivery))
        item.task.task_id = delivery.entry.task_id
        item.task.fence = result.fence
        finishes.append(item)
    verdicts = [worker_pb2.FinishResult(accepted=True) for _ in finishes]
    began = time.time_ns()
    record_work("w", finishes, verdicts, [], [], BatchTimes(began, began + 1000, began + 2000))


def cpu_per_task(tasks: int, batch: int) -> tuple[float, float]:
    """CPU seconds per task: all of this process's threads, and this (the event loop's) thread alone."""
    started, own_started = time.process_time(), time.thread_time()
    for first in range(0, tasks, batch):
        one_batch(first, batch)
    own = time.thread_time() - own_started
    if tracing.enabled():  # the export thread's encoding and sending of these spans, counted too
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    return (time.process_time() - started) / tasks, own / tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=20, help="tasks a start or finish batch records at once")
    args = parser.parse_args()
    with Receiver() as receiver:
        off, _ = cpu_per_task(args.tasks, args.batch)
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{receiver.port}"
        # Room for every span: this loop never yields to the export thread as an event loop does, and a dropped
        # span would not count the cost of its export.
        os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(6 * args.tasks))
        tracing.configure(tracing.TracingConfig.for_process("worker", load(tracing.OtelConfig, os.environ), "w"))
        on, on_loop = cpu_per_task(args.tasks, args.batch)
        tracing.shutdown()
        spans = receiver.received().spans
    print(f"{args.tasks:,} tasks in batches of {args.batch}: {spans:,} spans received")
    print(f"  CPU per task, tracing on:  {on * 1e6:8.1f} µs")
    print(f"  CPU per task, tracing off: {off * 1e6:8.1f} µs")
    print(f"  tracing's share:           {(on - off) * 1e6:8.1f} µs")
    print(f"    of which other threads:  {(on - on_loop) * 1e6:8.1f} µs (the export thread, which holds the GIL")
    print("                                       while it runs Python, and gRPC's own)")


if __name__ == "__main__":
    main()
