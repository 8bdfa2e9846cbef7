"""A real WorkerService server whose answers each test scripts, to check the worker's side of the protocol.

It is the peer, not a mock of a library: the worker talks to it over real gRPC (with real tokens) and
uses a real Valkey, exactly as it talks to the scheduler through the edge.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

from resilienttask.v1 import task_pb2
from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core.errors import Unauthenticated
from services.core.tokens import WORKER_AUDIENCE, mint_worker_token, verify_token
from services.core.worker_credentials import EnrolmentConfig, WorkerKeyConfig


@dataclass
class Script:
    """What the server answers, and everything the worker said."""

    tasks: dict[str, task_pb2.Task] = field(default_factory=dict)
    # task_id -> decisions to give in turn (the last one repeats); RUN when absent.
    decisions: dict[str, list[int]] = field(default_factory=dict)
    # task_id -> FinishResult reason to refuse with (accepted when absent).
    refuse_finish: dict[str, str] = field(default_factory=dict)
    fail_starts: int = 0
    fail_finishes: int = 0
    next_fence: int = 100
    hellos: list[worker_pb2.WorkerHello] = field(default_factory=list)
    heartbeats: list[worker_pb2.WorkerHeartbeat] = field(default_factory=list)
    progress: list[worker_pb2.ProgressReport] = field(default_factory=list)
    starts: list[worker_pb2.StartItem] = field(default_factory=list)
    start_calls: list[int] = field(default_factory=list)  # start items per work request
    finishes: list[worker_pb2.FinishItem] = field(default_factory=list)
    fences: dict[str, int] = field(default_factory=dict)
    subjects: set[str] = field(default_factory=set)
    enrolments: list[tuple[str, str]] = field(default_factory=list)  # (worker id, "enrol" or "renew")
    refused: int = 0  # calls refused for their token
    streams: list[asyncio.Queue[worker_pb2.ConnectResponse | None]] = field(default_factory=list)
    silent: bool = False  # stop answering heartbeats, as a stalled network path does


class ScriptedScheduler(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, auth: WorkerKeyConfig, script: Script) -> None:
        self.auth = auth
        self.script = script

    async def Enrol(
        self, request: worker_pb2.EnrolRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.EnrolResponse:
        """As the scheduler's: the enrolment secret, or a live token of the same id."""
        values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        presented = str(values[0]).removeprefix("Bearer ") if values else ""
        if self.auth.enrolment.matches(presented):
            self.script.enrolments.append((request.worker_id, "enrol"))
        else:
            try:
                if verify_token(self.auth, presented, WORKER_AUDIENCE) != request.worker_id:
                    raise Unauthenticated("another worker's token")
            except Unauthenticated:
                self.script.refused += 1
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad credential")
            self.script.enrolments.append((request.worker_id, "renew"))
        issued = mint_worker_token(self.auth, request.worker_id, self.auth.token_ttl_s)
        reply = worker_pb2.EnrolResponse(worker_id=request.worker_id, token=issued.token)
        reply.expires_at.FromSeconds(int(issued.expires_at))
        return reply

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        token = values[0].removeprefix("Bearer ") if values else ""
        try:
            self.script.subjects.add(verify_token(self.auth, str(token), WORKER_AUDIENCE))
        except Unauthenticated:
            self.script.refused += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")

    def _start(self, items: Sequence[worker_pb2.StartItem]) -> list[worker_pb2.StartResult]:
        self.script.start_calls.append(len(items))
        results = []
        for item in items:
            self.script.starts.append(item)
            queue = self.script.decisions.get(item.task_id, [worker_pb2.START_DECISION_RUN])
            decision = queue.pop(0) if len(queue) > 1 else queue[0]
            result = worker_pb2.StartResult(task_id=item.task_id, decision=decision)
            if decision == worker_pb2.START_DECISION_RUN:
                self.script.next_fence += 1
                self.script.fences[item.task_id] = self.script.next_fence
                result.fence = self.script.next_fence
                result.task.CopyFrom(self.script.tasks[item.task_id])
            results.append(result)
        return results

    def _finish(self, items: Sequence[worker_pb2.FinishItem]) -> list[worker_pb2.FinishResult]:
        results = []
        for item in items:
            self.script.finishes.append(item)
            reason = self.script.refuse_finish.get(item.task.task_id, "")
            verdict = worker_pb2.FINISH_VERDICT_ACCEPTED
            if reason:
                verdict = (
                    worker_pb2.FINISH_VERDICT_SUPERSEDED
                    if reason == "superseded"
                    else worker_pb2.FINISH_VERDICT_REFUSED
                )
            results.append(
                worker_pb2.FinishResult(task_id=item.task.task_id, accepted=not reason, reason=reason, verdict=verdict)
            )
        return results

    def _work(self, request: worker_pb2.WorkRequest) -> worker_pb2.WorkResponse:
        """Outcomes, then starts, as the scheduler records them; a scripted outage records nothing."""
        if request.finish and self.script.fail_finishes > 0:
            self.script.fail_finishes -= 1
            return worker_pb2.WorkResponse(request_id=request.request_id, error="scripted outage")
        if request.start and self.script.fail_starts > 0:
            self.script.fail_starts -= 1
            return worker_pb2.WorkResponse(request_id=request.request_id, error="scripted outage")
        response = worker_pb2.WorkResponse(request_id=request.request_id)
        if request.finish:
            response.finish.extend(self._finish(request.finish))
        if request.start:
            response.start.extend(self._start(request.start))
        return response

    async def Connect(
        self, request_iterator: AsyncIterator[worker_pb2.ConnectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.ConnectResponse]:
        await self._authorize(context)
        queue: asyncio.Queue[worker_pb2.ConnectResponse | None] = asyncio.Queue()
        self.script.streams.append(queue)

        async def read() -> None:
            async for message in request_iterator:
                if message.HasField("hello"):
                    self.script.hellos.append(message.hello)
                elif message.HasField("heartbeat"):
                    self.script.heartbeats.append(message.heartbeat)
                    if not self.script.silent:
                        await queue.put(
                            worker_pb2.ConnectResponse(heartbeat_acks=[{"sequence": message.heartbeat.sequence}])
                        )
                elif message.HasField("progress"):
                    self.script.progress.append(message.progress)
                elif message.HasField("work"):
                    await queue.put(worker_pb2.ConnectResponse(work=[self._work(message.work)]))
            await queue.put(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await queue.get()) is not None:
                yield response
        finally:
            reader.cancel()
            self.script.streams.remove(queue)

    async def push_cancel(self, task_id: str, fence: int, reason: str) -> None:
        stop = worker_pb2.STOP_REASON_SUPERSEDED if reason == "superseded" else worker_pb2.STOP_REASON_CANCELLED
        command = worker_pb2.CancelCommand(task=worker_pb2.HeldTask(task_id=task_id, fence=fence), reason=stop)
        for queue in self.script.streams:
            await queue.put(worker_pb2.ConnectResponse(cancels=[command]))

    async def break_streams(self) -> None:
        """End every open Connect stream, as a scheduler restart does."""
        for queue in list(self.script.streams):
            await queue.put(None)


async def serve(auth: WorkerKeyConfig, script: Script) -> tuple[grpc.aio.Server, ScriptedScheduler, int]:
    server = grpc.aio.server()
    servicer = ScriptedScheduler(auth, script)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, servicer, port


def make_auth() -> WorkerKeyConfig:
    """A worker key and an enrolment secret of their own (the worker gets only `.enrolment`)."""
    return WorkerKeyConfig(jwt_secret=os.urandom(48), enrolment=EnrolmentConfig(os.urandom(24).hex().encode()))
