from google.protobuf import struct_pb2 as _struct_pb2
from resilienttask.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_DECISION_UNSPECIFIED: _ClassVar[StartDecision]
    START_DECISION_RUN: _ClassVar[StartDecision]
    START_DECISION_SKIP: _ClassVar[StartDecision]
    START_DECISION_DEFER: _ClassVar[StartDecision]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCEEDED: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]
    OUTCOME_CANCELLED: _ClassVar[Outcome]
    OUTCOME_TIMED_OUT: _ClassVar[Outcome]
START_DECISION_UNSPECIFIED: StartDecision
START_DECISION_RUN: StartDecision
START_DECISION_SKIP: StartDecision
START_DECISION_DEFER: StartDecision
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCEEDED: Outcome
OUTCOME_FAILED: Outcome
OUTCOME_CANCELLED: Outcome
OUTCOME_TIMED_OUT: Outcome

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
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[HeldTask]
    def __init__(self, tasks: _Optional[_Iterable[_Union[HeldTask, _Mapping]]] = ...) -> None: ...

class ProgressReport(_message.Message):
    __slots__ = ("task", "progress")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    progress: float
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ..., progress: _Optional[float] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "heartbeat", "progress")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerHello
    heartbeat: WorkerHeartbeat
    progress: ProgressReport
    def __init__(self, hello: _Optional[_Union[WorkerHello, _Mapping]] = ..., heartbeat: _Optional[_Union[WorkerHeartbeat, _Mapping]] = ..., progress: _Optional[_Union[ProgressReport, _Mapping]] = ...) -> None: ...

class CancelCommand(_message.Message):
    __slots__ = ("task", "reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    reason: str
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("cancel",)
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    cancel: CancelCommand
    def __init__(self, cancel: _Optional[_Union[CancelCommand, _Mapping]] = ...) -> None: ...

class StartItem(_message.Message):
    __slots__ = ("task_id", "dispatch_id", "entry_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    dispatch_id: str
    entry_id: str
    def __init__(self, task_id: _Optional[str] = ..., dispatch_id: _Optional[str] = ..., entry_id: _Optional[str] = ...) -> None: ...

class StartTasksRequest(_message.Message):
    __slots__ = ("worker_id", "items")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    items: _containers.RepeatedCompositeFieldContainer[StartItem]
    def __init__(self, worker_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[StartItem, _Mapping]]] = ...) -> None: ...

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

class StartTasksResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StartResult]
    def __init__(self, results: _Optional[_Iterable[_Union[StartResult, _Mapping]]] = ...) -> None: ...

class FinishItem(_message.Message):
    __slots__ = ("task", "outcome", "error", "result")
    TASK_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    task: HeldTask
    outcome: Outcome
    error: str
    result: _struct_pb2.Value
    def __init__(self, task: _Optional[_Union[HeldTask, _Mapping]] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., error: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class FinishTasksRequest(_message.Message):
    __slots__ = ("worker_id", "items")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    items: _containers.RepeatedCompositeFieldContainer[FinishItem]
    def __init__(self, worker_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[FinishItem, _Mapping]]] = ...) -> None: ...

class FinishResult(_message.Message):
    __slots__ = ("task_id", "accepted", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    accepted: bool
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class FinishTasksResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FinishResult]
    def __init__(self, results: _Optional[_Iterable[_Union[FinishResult, _Mapping]]] = ...) -> None: ...
