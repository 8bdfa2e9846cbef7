import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from resilienttask.v1 import scheduler_pb2 as _scheduler_pb2
from resilienttask.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCEEDED: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]
    OUTCOME_CANCELLED: _ClassVar[Outcome]
    OUTCOME_TIMED_OUT: _ClassVar[Outcome]
    OUTCOME_HANDED_BACK: _ClassVar[Outcome]

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_CANCELLED: _ClassVar[StopReason]
    STOP_REASON_SUPERSEDED: _ClassVar[StopReason]

class StartDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_DECISION_UNSPECIFIED: _ClassVar[StartDecision]
    START_DECISION_RUN: _ClassVar[StartDecision]
    START_DECISION_SKIP: _ClassVar[StartDecision]
    START_DECISION_DEFER: _ClassVar[StartDecision]

class FinishVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_VERDICT_UNSPECIFIED: _ClassVar[FinishVerdict]
    FINISH_VERDICT_ACCEPTED: _ClassVar[FinishVerdict]
    FINISH_VERDICT_SUPERSEDED: _ClassVar[FinishVerdict]
    FINISH_VERDICT_REFUSED: _ClassVar[FinishVerdict]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCEEDED: Outcome
OUTCOME_FAILED: Outcome
OUTCOME_CANCELLED: Outcome
OUTCOME_TIMED_OUT: Outcome
OUTCOME_HANDED_BACK: Outcome
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_CANCELLED: StopReason
STOP_REASON_SUPERSEDED: StopReason
START_DECISION_UNSPECIFIED: StartDecision
START_DECISION_RUN: StartDecision
START_DECISION_SKIP: StartDecision
START_DECISION_DEFER: StartDecision
FINISH_VERDICT_UNSPECIFIED: FinishVerdict
FINISH_VERDICT_ACCEPTED: FinishVerdict
FINISH_VERDICT_SUPERSEDED: FinishVerdict
FINISH_VERDICT_REFUSED: FinishVerdict

class EnrolRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class EnrolResponse(_message.Message):
    __slots__ = ("worker_id", "token", "expires_at")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    token: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, worker_id: _Optional[str] = ..., token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HeldTask(_message.Message):
    __slots__ = ("task_id", "fence")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    fence: int
    def __init__(self, task_id: _Optional[str] = ..., fence: _Optional[int] = ...) -> None: ...

class WorkerHello(_message.Message):
    __slots__ = ("worker_id", "slots", "kinds")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    slots: int
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., slots: _Optional[int] = ..., kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkerHeartbeat(_message.Message):
    __slots__ = ("tasks", "sequence", "draining", "drain_remaining")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    DRAIN_REMAINING_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[HeldTask]
    sequence: int
    draining: bool
    drain_remaining: _duration_pb2.Duration
    def __init__(self, tasks: _Optional[_Iterable[_Union[HeldTask, _Mapping]]] = ..., sequence: _Optional[int] = ..., draining: _Optional[bool] = ..., drain_remaining: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ProgressReport(_message.Message):
    __slots__ = ("task", "progress")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    progress: float
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ..., progress: _Optional[float] = ...) -> None: ...

class StartItem(_message.Message):
    __slots__ = ("task_id", "dispatch_id", "entry_id", "trace_parent")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_PARENT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    dispatch_id: str
    entry_id: str
    trace_parent: str
    def __init__(self, task_id: _Optional[str] = ..., dispatch_id: _Optional[str] = ..., entry_id: _Optional[str] = ..., trace_parent: _Optional[str] = ...) -> None: ...

class FinishItem(_message.Message):
    __slots__ = ("task", "outcome", "error", "result", "trace_parent")
    TASK_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TRACE_PARENT_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    outcome: Outcome
    error: str
    result: _struct_pb2.Value
    trace_parent: str
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., error: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., trace_parent: _Optional[str] = ...) -> None: ...

class WorkRequest(_message.Message):
    __slots__ = ("request_id", "finish", "start")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    finish: _containers.RepeatedCompositeFieldContainer[FinishItem]
    start: _containers.RepeatedCompositeFieldContainer[StartItem]
    def __init__(self, request_id: _Optional[int] = ..., finish: _Optional[_Iterable[_Union[FinishItem, _Mapping]]] = ..., start: _Optional[_Iterable[_Union[StartItem, _Mapping]]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "heartbeat", "progress", "work", "logs")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    WORK_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerHello
    heartbeat: WorkerHeartbeat
    progress: ProgressReport
    work: WorkRequest
    logs: TaskLogs
    def __init__(self, hello: _Optional[_Union[WorkerHello, _Mapping]] = ..., heartbeat: _Optional[_Union[WorkerHeartbeat, _Mapping]] = ..., progress: _Optional[_Union[ProgressReport, _Mapping]] = ..., work: _Optional[_Union[WorkRequest, _Mapping]] = ..., logs: _Optional[_Union[TaskLogs, _Mapping]] = ...) -> None: ...

class TaskLogLine(_message.Message):
    __slots__ = ("at", "stream", "level", "text", "dropped_before")
    AT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    stream: _scheduler_pb2.LogStream
    level: str
    text: str
    dropped_before: int
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stream: _Optional[_Union[_scheduler_pb2.LogStream, str]] = ..., level: _Optional[str] = ..., text: _Optional[str] = ..., dropped_before: _Optional[int] = ...) -> None: ...

class TaskLogBatch(_message.Message):
    __slots__ = ("task", "lines", "dropped_after")
    TASK_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_AFTER_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    lines: _containers.RepeatedCompositeFieldContainer[TaskLogLine]
    dropped_after: int
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ..., lines: _Optional[_Iterable[_Union[TaskLogLine, _Mapping]]] = ..., dropped_after: _Optional[int] = ...) -> None: ...

class TaskLogs(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[TaskLogBatch]
    def __init__(self, batches: _Optional[_Iterable[_Union[TaskLogBatch, _Mapping]]] = ...) -> None: ...

class CancelCommand(_message.Message):
    __slots__ = ("task", "reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    reason: StopReason
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ..., reason: _Optional[_Union[StopReason, str]] = ...) -> None: ...

class SchedulerCommand(_message.Message):
    __slots__ = ("stop", "replaced", "drain")
    STOP_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    stop: StopTaskCommand
    replaced: StreamReplaced
    drain: DrainWorkerCommand
    def __init__(self, stop: _Optional[_Union[StopTaskCommand, _Mapping]] = ..., replaced: _Optional[_Union[StreamReplaced, _Mapping]] = ..., drain: _Optional[_Union[DrainWorkerCommand, _Mapping]] = ...) -> None: ...

class DrainWorkerCommand(_message.Message):
    __slots__ = ("worker_id", "deadline", "reply")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    deadline: _timestamp_pb2.Timestamp
    reply: str
    def __init__(self, worker_id: _Optional[str] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reply: _Optional[str] = ...) -> None: ...

class StopTaskCommand(_message.Message):
    __slots__ = ("worker_id", "task", "reason")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    task: HeldTask
    reason: StopReason
    def __init__(self, worker_id: _Optional[str] = ..., task: _Optional[_Union[HeldTask, _Mapping]] = ..., reason: _Optional[_Union[StopReason, str]] = ...) -> None: ...

class StreamReplaced(_message.Message):
    __slots__ = ("worker_id", "stream_id")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    stream_id: str
    def __init__(self, worker_id: _Optional[str] = ..., stream_id: _Optional[str] = ...) -> None: ...

class StartResult(_message.Message):
    __slots__ = ("task_id", "decision", "task", "fence", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    decision: StartDecision
    task: _task_pb2.Task
    fence: int
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., decision: _Optional[_Union[StartDecision, str]] = ..., task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., fence: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class FinishResult(_message.Message):
    __slots__ = ("task_id", "accepted", "reason", "verdict")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    accepted: bool
    reason: str
    verdict: FinishVerdict
    def __init__(self, task_id: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., verdict: _Optional[_Union[FinishVerdict, str]] = ...) -> None: ...

class WorkResponse(_message.Message):
    __slots__ = ("request_id", "finish", "start", "error", "permanent")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    finish: _containers.RepeatedCompositeFieldContainer[FinishResult]
    start: _containers.RepeatedCompositeFieldContainer[StartResult]
    error: str
    permanent: bool
    def __init__(self, request_id: _Optional[int] = ..., finish: _Optional[_Iterable[_Union[FinishResult, _Mapping]]] = ..., start: _Optional[_Iterable[_Union[StartResult, _Mapping]]] = ..., error: _Optional[str] = ..., permanent: _Optional[bool] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("cancels", "work", "heartbeat_acks", "drain")
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    WORK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACKS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    cancels: _containers.RepeatedCompositeFieldContainer[CancelCommand]
    work: _containers.RepeatedCompositeFieldContainer[WorkResponse]
    heartbeat_acks: _containers.RepeatedCompositeFieldContainer[HeartbeatAck]
    drain: DrainCommand
    def __init__(self, cancels: _Optional[_Iterable[_Union[CancelCommand, _Mapping]]] = ..., work: _Optional[_Iterable[_Union[WorkResponse, _Mapping]]] = ..., heartbeat_acks: _Optional[_Iterable[_Union[HeartbeatAck, _Mapping]]] = ..., drain: _Optional[_Union[DrainCommand, _Mapping]] = ...) -> None: ...

class DrainCommand(_message.Message):
    __slots__ = ("grace",)
    GRACE_FIELD_NUMBER: _ClassVar[int]
    grace: _duration_pb2.Duration
    def __init__(self, grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
