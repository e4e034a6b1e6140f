"""The zygote's messages, one JSON object per line, typed and checked on both sides.

Requests, orchestrator → zygote (stdin): :class:`StartRequest`.
Answers, zygote → orchestrator (stdout), dispatched on ``event``:

- ``ready``: the zygote has imported what its children need (once, before any request);
- ``not_preloaded``: importing a user's model module ``module`` made forking unsafe
  (``reason``), so the zygote started afresh without it and each child imports it (before
  ``ready``, at most once per module);
- ``started``: a child exists for request ``id``; ``ended``: it has ended (``returncode``
  negative for a signal, as ``subprocess`` reports it);
- ``failed``: no child could be started for request ``id``;
- ``stopping``: the zygote refuses to fork any more and exits (a fork hazard, a bad request);
  children already started are still answered.

A line that does not parse as one of these is a :class:`ProtocolError`; whoever reads it treats
the other side as broken, at once, instead of waiting for answers that will not come.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypedDict


class ProtocolError(ValueError):
    """A line that is not a message of this protocol; the text says what was wrong with it."""


class StartRequest(TypedDict):
    id: int
    args: list[str]
    env: dict[str, str]
    log: str


class Ready(TypedDict):
    event: Literal["ready"]
    pid: int


class NotPreloaded(TypedDict):
    event: Literal["not_preloaded"]
    module: str
    reason: str


class Started(TypedDict):
    event: Literal["started"]
    id: int
    pid: int


class Ended(TypedDict):
    event: Literal["ended"]
    id: int
    returncode: int


class Failed(TypedDict):
    event: Literal["failed"]
    id: int
    error: str


class Stopping(TypedDict):
    event: Literal["stopping"]
    reason: str


Answer = Ready | NotPreloaded | Started | Ended | Failed | Stopping

# Each event's fields besides ``event`` and their types: what ``parse_answer`` checks.
ANSWER_FIELDS: dict[str, dict[str, type]] = {
    "ready": {"pid": int},
    "not_preloaded": {"module": str, "reason": str},
    "started": {"id": int, "pid": int},
    "ended": {"id": int, "returncode": int},
    "failed": {"id": int, "error": str},
    "stopping": {"reason": str},
}
REQUEST_FIELDS: dict[str, type] = {"id": int, "args": list, "env": dict, "log": str}


def encode(message: StartRequest | Answer) -> bytes:
    return json.dumps(message).encode() + b"\n"


def _object(line: bytes, what: str) -> dict[str, Any]:
    shown = line[:200].decode("utf-8", errors="replace").rstrip("\n")
    try:
        data = json.loads(line)
    except ValueError:
        raise ProtocolError(f"{what} is not JSON: {shown!r}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} is not a JSON object: {shown!r}")
    return data


def _check(data: dict[str, Any], fields: dict[str, type], what: str) -> None:
    for name, kind in fields.items():
        value = data.get(name)
        # bool is an int to isinstance; no field of this protocol is a bool
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProtocolError(
                f"{what} has {name}={value!r}; expected a {kind.__name__}: {data!r}"[:400]
            )


def parse_answer(line: bytes) -> Answer:
    data = _object(line, "an answer from the zygote")
    event = data.get("event")
    fields = ANSWER_FIELDS.get(event) if isinstance(event, str) else None
    if fields is None:
        raise ProtocolError(
            f"an answer from the zygote has an unknown event {event!r}; expected one of "
            f"{', '.join(ANSWER_FIELDS)}: {data!r}"[:400]
        )
    _check(data, fields, f"the zygote's {event!r} answer")
    return data  # type: ignore[return-value]  # checked field by field above


def parse_request(line: bytes) -> StartRequest:
    data = _object(line, "a request to the zygote")
    _check(data, REQUEST_FIELDS, "a request to the zygote")
    return data  # type: ignore[return-value]  # checked field by field above
