"""The request_ids of schedules' firings: kept from users' own submissions, and within the tasks' bound."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from resilienttask.v1 import schedule_pb2, scheduler_pb2
from services.core import validation
from services.core.errors import InvalidArgument
from services.core.schedule_validation import template_submission
from services.core.schedules import firing

SCHEDULE_ID = str(uuid.uuid4())


def test_a_user_submission_cannot_take_a_slot_key() -> None:
    slot = firing.slot_key(SCHEDULE_ID, datetime(2026, 12, 6, 12, 0, tzinfo=UTC))
    request = scheduler_pb2.SubmitTaskRequest(name="n", request_id=slot)
    with pytest.raises(InvalidArgument) as refused:
        validation.submission(request, ["sleep"])
    assert refused.value.field == "request_id"


def test_a_firing_keeps_its_slot_key() -> None:
    slot = firing.slot_key(SCHEDULE_ID, datetime(2026, 12, 6, 12, 0, tzinfo=UTC))
    submission = template_submission(schedule_pb2.TaskTemplate(name="n"), slot, SCHEDULE_ID, ["sleep"])
    assert submission.request_id == slot and submission.schedule_id == SCHEDULE_ID


@pytest.mark.parametrize("length", [1, validation.MAX_REQUEST_ID_CHARS])
def test_every_trigger_request_id_within_its_bound_makes_a_valid_key(length: int) -> None:
    key = firing.trigger_key(SCHEDULE_ID, "r" * length)
    assert len(key) <= validation.MAX_REQUEST_ID_CHARS
    submission = template_submission(schedule_pb2.TaskTemplate(name="n"), key, SCHEDULE_ID, ["sleep"])
    assert submission.request_id == key
    assert firing.trigger_key(SCHEDULE_ID, "r" * length) == key  # the same request_id, the same firing
