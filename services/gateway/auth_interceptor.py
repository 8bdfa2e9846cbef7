"""Bearer-token enforcement for SchedulerService; the verified user id reaches handlers via a context variable.

(Filled in by the Auth issue: until then every SchedulerService call is refused.)
"""

from __future__ import annotations

from contextvars import ContextVar

from services.core.errors import Unauthenticated

_current_user: ContextVar[str | None] = ContextVar("rtask_current_user", default=None)


def current_user_id() -> str:
    """The id of the authenticated caller; handlers never take it from a request field."""
    user = _current_user.get()
    if user is None:
        raise Unauthenticated("missing or invalid bearer token")
    return user
