"""Traces across the mesh: the real gateway, scheduler and worker processes (behind Envoy) export spans of one
task to a local OTLP receiver, all in the trace the client's traceparent started; with tracing off, nothing.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from opentelemetry import trace

from resilienttask.aio import AsyncClient
from resilienttask.v1 import scheduler_pb2, task_pb2
from services.stack.stack import Stack, StackConfig
from tests.conftest import TEST_BCRYPT_COST, Stores, unique_email
from tests.helpers import eventually
from tests.integration.accounts import PASSWORD, signup
from tests.integration.otlp_receiver import ReceivedSpan, Receiver, otlp_receiver
from tests.integration.tasks import UserTasks, duration
from tests.limits import OPEN_AUTH_LIMITS, OPEN_LOGIN_ENV

S = task_pb2
SUBMIT = "/resilienttask.v1.SchedulerService/SubmitTask"
GATEWAY, SCHEDULER, WORKER = "resilienttask-gateway", "resilienttask-scheduler", "resilienttask-worker"
EDGE = "resilienttask-edge"


@dataclass(frozen=True)
class TracedStack:
    stack: Stack
    receiver: Receiver


@pytest.fixture(scope="module")
async def traced(stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TracedStack]:
    """1 gateway, 1 scheduler, 1 worker and Envoy, tracing to the receiver; their own database and Valkey, so no
    other stack's untraced worker takes their tasks."""
    name = f"tracing_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stores.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        async with otlp_receiver() as receiver:
            config = StackConfig(
                data_dir=tmp_path_factory.mktemp("traced-stack"),
                edge_port=0,
                edge_tls_port=0,
                admin_port=0,
                gateways=1,
                schedulers=1,
                workers=1,
                database_url=stores.database_url.rsplit("/", 1)[0] + f"/{name}",
                bcrypt_cost=TEST_BCRYPT_COST,
                dashboard_dir=None,
                extra_env={
                    "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                    "OTEL_TRACES_SAMPLER": "parentbased_always_on",
                    "OTEL_BSP_SCHEDULE_DELAY": "100",
                    "RTASK_RETRY_BASE_MS": "50",
                    **OPEN_LOGIN_ENV,
                },
                auth_limits=OPEN_AUTH_LIMITS,
            )
            stack = Stack(config)
            await asyncio.to_thread(stack.start)  # the receiver answers meanwhile, on this loop
            try:
                yield TracedStack(stack, receiver)
            finally:
                await asyncio.to_thread(stack.stop)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def user(traced: TracedStack) -> AsyncIterator[UserTasks]:
    async with grpc.aio.insecure_channel(traced.stack.edge_address) as channel:
        yield UserTasks(channel, await signup(channel, "tracing"))


def client_parent(sampled: bool = True) -> tuple[str, str, str]:
    """(traceparent, trace id, span id) of a client span, sampled unless told."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


async def submit_traced(user: UserTasks, traceparent: str, kind: str = "sleep", max_attempts: int = 0) -> task_pb2.Task:
    """SubmitTask of one short task, with the client's traceparent beside the token."""
    request = scheduler_pb2.SubmitTaskRequest(
        name="traced", kind=kind, workload=duration(0.05), max_attempts=max_attempts, request_id=str(uuid.uuid4())
    )
    metadata = (*user.account.metadata, ("traceparent", traceparent))
    (task,) = (await user.stub.SubmitTask(request, metadata=metadata)).tasks
    return task


async def _edge_spans(receiver: Receiver, trace_id: str) -> list[ReceivedSpan]:
    return [s for s in receiver.of_trace(trace_id) if s.service == EDGE]


def named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


async def spans_of(receiver: Receiver, trace_id: str, wanted: dict[str, int]) -> list[ReceivedSpan]:
    """The trace's spans, once it has at least `wanted[name]` spans of each name."""

    async def complete() -> list[ReceivedSpan] | None:
        spans = receiver.of_trace(trace_id)
        return spans if all(len(named(spans, n)) >= count for n, count in wanted.items()) else None

    return await eventually(complete, timeout_s=20, message=f"spans {wanted} of trace {trace_id}")


async def test_one_trace_follows_a_task_from_the_clients_traceparent_through_every_process(
    traced: TracedStack, user: UserTasks
) -> None:
    traceparent, trace_id, client_span = client_parent()
    task = await submit_traced(user, traceparent)
    done = await user.wait_for(task.id)
    assert done.status == S.TASK_STATUS_SUCCEEDED
    wanted = {
        SUBMIT: 1,
        "task.publish": 1,
        "task.queue_wait": 1,
        "task.start": 1,
        "task.handler": 1,
        "task.finish": 1,
    }
    spans = await spans_of(traced.receiver, trace_id, wanted)
    by_id = {s.span_id: s for s in spans}
    (submit,) = named(spans, SUBMIT)
    # The root is the client's span: Envoy's span continues it, and the gateway's server span continues Envoy's.
    (edge,) = await eventually(lambda: _edge_spans(traced.receiver, trace_id), timeout_s=20, message="Envoy's span")
    assert edge.parent_span_id == client_span, edge
    assert submit.parent_span_id == edge.span_id and submit.service == GATEWAY
    assert submit.span.kind == submit.span.SPAN_KIND_SERVER and submit.attribute("rpc.method") == "SubmitTask"
    assert submit.attribute("rpc.grpc.status_code") == 0 and submit.attribute("rpc.system") == "grpc"
    (publish,) = named(spans, "task.publish")
    assert publish.parent_span_id == submit.span_id and publish.service == GATEWAY
    # Every step of the task is a child of the submission, in the order: queue wait (worker), start
    # (scheduler), handler (worker), finish (scheduler), each transition up to its change event's push.
    (wait,) = named(spans, "task.queue_wait")
    (start,) = named(spans, "task.start")
    (handler,) = named(spans, "task.handler")
    (finish,) = named(spans, "task.finish")
    assert {wait.service, handler.service} == {WORKER} and {start.service, finish.service} == {SCHEDULER}
    steps = (wait, start, handler, finish)
    assert all(step.parent_span_id == submit.span_id for step in steps), steps
    assert [step.attribute("task.id") for step in steps] == [task.id] * 4
    assert wait.attribute("task.kind") == handler.attribute("task.kind") == "sleep"
    # One attempt: the handler says which, and the scheduler's start and finish name the same fence.
    assert handler.attribute("task.attempt") == 1 and handler.attribute("task.reclaimed") is None
    assert start.attribute("task.fence") == handler.attribute("task.fence") == finish.attribute("task.fence")
    fence = handler.attribute("task.fence")
    assert isinstance(fence, int) and fence > 0
    assert start.attribute("task.decision") == "run" and finish.attribute("task.accepted") is True
    assert finish.attribute("task.outcome") == "succeeded"
    assert start.attribute("worker.id") == finish.attribute("worker.id") == done.worker_id
    for transition in (start, finish):
        (committed,) = [e for e in transition.span.events if e.name == "committed"]
        assert transition.span.start_time_unix_nano <= committed.time_unix_nano <= transition.span.end_time_unix_nano
    ordered = [(s.span.start_time_unix_nano, s.span.end_time_unix_nano) for s in steps]
    assert all(begin <= end for begin, end in ordered)
    assert all(ordered[i][1] <= ordered[i + 1][0] for i in range(len(ordered) - 1)), ordered
    # Every span is in the client's trace and hangs from a span of it.
    assert all(s.parent_span_id in by_id or s is submit or s.service == EDGE for s in spans)
    assert all(s.instance for s in spans if s.service != EDGE)
    assert {s.instance for s in spans if s.service == WORKER} == {done.worker_id}


async def test_every_step_of_each_attempt_of_a_retried_task_is_a_child_of_its_submission(
    traced: TracedStack, user: UserTasks
) -> None:
    traceparent, trace_id, _ = client_parent()
    task = await submit_traced(user, traceparent, "fail", max_attempts=2)
    done = await user.wait_for(task.id)
    assert done.status == S.TASK_STATUS_FAILED and done.attempt == 2
    wanted = {"task.queue_wait": 2, "task.start": 2, "task.handler": 2, "task.finish": 2}
    spans = await spans_of(traced.receiver, trace_id, wanted)
    (submit,) = named(spans, SUBMIT)
    assert {s.parent_span_id for n in wanted for s in named(spans, n)} == {submit.span_id}
    handlers = named(spans, "task.handler")
    assert sorted(str(h.attribute("task.attempt")) for h in handlers) == ["1", "2"]
    # Each attempt's start and finish name its fence; the second attempt's is another.
    fences = {h.attribute("task.fence") for h in handlers}
    assert len(fences) == 2
    for name in ("task.start", "task.finish"):
        assert {s.attribute("task.fence") for s in named(spans, name)} == fences, name
    assert {f.attribute("task.outcome") for f in named(spans, "task.finish")} == {"failed"}


async def test_a_task_whose_caller_did_not_sample_its_trace_gets_no_span_in_any_process(
    traced: TracedStack, user: UserTasks
) -> None:
    """The caller's sampling decision holds for every span of the task, the worker's and the scheduler's too."""
    unsampled, unsampled_trace, _ = client_parent(sampled=False)
    first = await submit_traced(user, unsampled)
    assert (await user.wait_for(first.id)).status == S.TASK_STATUS_SUCCEEDED
    traceparent, trace_id, _ = client_parent()
    second = await submit_traced(user, traceparent)
    assert (await user.wait_for(second.id)).status == S.TASK_STATUS_SUCCEEDED
    # Each process exports its spans in the order they ended: the later task's all in, the earlier's would be.
    wanted = {SUBMIT: 1, "task.queue_wait": 1, "task.handler": 1, "task.start": 1, "task.finish": 1}
    await spans_of(traced.receiver, trace_id, wanted)
    assert [s.name for s in traced.receiver.of_trace(unsampled_trace) if s.service != EDGE] == []


async def test_a_delayed_tasks_steps_are_children_of_its_submission(traced: TracedStack, user: UserTasks) -> None:
    """The due publisher's dispatch entry carries the submission's traceparent, as the gateway's would have."""
    traceparent, trace_id, _ = client_parent()
    request = scheduler_pb2.SubmitTaskRequest(
        name="traced later", kind="sleep", workload=duration(0.05), delay=duration(0.3), request_id=str(uuid.uuid4())
    )
    metadata = (*user.account.metadata, ("traceparent", traceparent))
    (task,) = (await user.stub.SubmitTask(request, metadata=metadata)).tasks
    assert task.status == S.TASK_STATUS_SCHEDULED
    assert (await user.wait_for(task.id)).status == S.TASK_STATUS_SUCCEEDED
    wanted = {SUBMIT: 1, "task.queue_wait": 1, "task.start": 1, "task.handler": 1, "task.finish": 1}
    spans = await spans_of(traced.receiver, trace_id, wanted)
    (submit,) = named(spans, SUBMIT)
    assert {s.parent_span_id for n in wanted if n != SUBMIT for s in named(spans, n)} == {submit.span_id}


@pytest.mark.parametrize(
    "traceparent",
    [
        "not a traceparent",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",  # an all-zero trace id is invalid
        "00-" + "a" * 32 + "-" + "b" * 16 + "-01-" + "x" * 6000,  # oversized
    ],
    ids=["malformed", "zero-trace-id", "oversized"],
)
async def test_a_bad_traceparent_is_ignored_and_the_call_gets_a_trace_of_its_own(
    traced: TracedStack, user: UserTasks, traceparent: str
) -> None:
    task = await submit_traced(user, traceparent)
    assert (await user.wait_for(task.id)).status == S.TASK_STATUS_SUCCEEDED

    async def queue_wait() -> ReceivedSpan | None:
        found = [s for s in named(traced.receiver.spans, "task.queue_wait") if s.attribute("task.id") == task.id]
        return found[0] if found else None

    wait = await eventually(queue_wait, timeout_s=20, message="the task's spans")
    (submit,) = named(await spans_of(traced.receiver, wait.trace_id, {SUBMIT: 1}), SUBMIT)
    assert submit.parent_span_id == "" and submit.span_id == wait.parent_span_id, "a new root, and continued"
    assert wait.trace_id not in traceparent


async def test_the_sdk_sends_the_callers_trace_context_when_a_span_is_current(traced: TracedStack) -> None:
    _, trace_id, span_id = client_parent()
    current = trace.NonRecordingSpan(
        trace.SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False, trace_flags=trace.TraceFlags(1))
    )
    async with AsyncClient(traced.stack.edge_address) as sdk:
        await sdk.signup(unique_email("tracing-sdk"), PASSWORD)
        with trace.use_span(current):
            (task,) = await sdk.submit("sdk traced")
        (untraced,) = await sdk.submit("sdk untraced")
    (submit,) = named(await spans_of(traced.receiver, trace_id, {SUBMIT: 1, "task.handler": 1}), SUBMIT)
    (edge,) = await eventually(lambda: _edge_spans(traced.receiver, trace_id), timeout_s=20, message="Envoy's span")
    assert edge.parent_span_id == span_id and submit.parent_span_id == edge.span_id
    assert {s.attribute("task.id") for s in named(traced.receiver.of_trace(trace_id), "task.handler")} == {task.id}
    assert untraced.id != task.id


# What each service's entry point does about tracing, after importing all three (so a stray import of the SDK
# anywhere in the services would show).
TRACING_OFF_PROBE = """
import asyncio, os, sys, threading
import services.gateway.main, services.scheduler.main, services.worker.main
from services.core import tracing
from services.core.config import ServerConfig
from services.core.server import create_grpc_server
from services.core.settings import load
from services.core.tracing import OtelConfig, TracingConfig

async def main():
    tracing.configure(TracingConfig.for_process("gateway", load(OtelConfig, os.environ)))
    server, _, _ = create_grpc_server(ServerConfig(), service_names=())
    await server.start()
    await server.stop(0)
    # redis-py imports the metrics half of the SDK by itself when it is installed: not ours, and inert.
    modules = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter",
                                                            "opentelemetry.instrumentation")))
    threads = [t.name for t in threading.enumerate() if t.name.startswith("Otel")]
    print(tracing.enabled(), len(tracing.server_interceptors()), modules, threads)
    tracing.shutdown()

asyncio.run(main())
"""


def test_with_tracing_off_no_sdk_is_loaded_and_no_exporter_thread_runs() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", TRACING_OFF_PROBE], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "False 0 [] []", out
    # The same probe with an endpoint set: the SDK and its export thread are there (so the probe can tell).
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
    on = subprocess.run(
        [sys.executable, "-c", TRACING_OFF_PROBE], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert on.startswith("True 1 ") and "opentelemetry.sdk.trace" in on and "OtelBatchSpanRecordProcessor" in on, on
