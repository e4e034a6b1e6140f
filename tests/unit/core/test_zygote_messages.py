"""The zygote's messages: every event parses, and a bad line is a ProtocolError naming it."""

from __future__ import annotations

import pytest

from harness.core.zygote_messages import ProtocolError, encode, parse_answer, parse_request


@pytest.mark.parametrize(
    "answer",
    [
        {"event": "ready", "pid": 7},
        {"event": "not_preloaded", "module": "mymodels", "reason": "it started a thread"},
        {"event": "started", "id": 1, "pid": 7},
        {"event": "ended", "id": 1, "returncode": -9},
        {"event": "failed", "id": 1, "error": "fork failed"},
        {"event": "stopping", "reason": "CUDA was initialised"},
    ],
)
def test_each_answer_round_trips(answer: dict[str, object]) -> None:
    assert parse_answer(encode(answer)) == answer  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("line", "named"),
    [
        (b"Segmentation fault\n", "is not JSON: 'Segmentation fault'"),
        (b"[1, 2]\n", "is not a JSON object"),
        (b'{"id": 1, "pid": 2}\n', "unknown event None"),
        (b'{"event": "exploded", "id": 1}\n', "unknown event 'exploded'"),
        (b'{"event": "ended", "id": 1}\n', "has returncode=None; expected a int"),
        (b'{"event": "started", "id": "1", "pid": 2}\n', "has id='1'"),
        (b'{"event": "started", "id": true, "pid": 2}\n', "has id=True"),
    ],
)
def test_a_bad_answer_is_a_protocol_error(line: bytes, named: str) -> None:
    with pytest.raises(ProtocolError, match="zygote") as caught:
        parse_answer(line)
    assert named in str(caught.value)


def test_requests_are_checked_too() -> None:
    request = {"id": 3, "args": ["spec.json"], "env": {"A": "1"}, "log": "/tmp/x.log"}
    assert parse_request(encode(request)) == request  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"has args='spec\.json'"):
        parse_request(b'{"id": 3, "args": "spec.json", "env": {}, "log": "x"}')
