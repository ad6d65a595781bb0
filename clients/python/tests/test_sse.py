"""The SSE decoder on the framing the spec allows but the server rarely sends."""

from __future__ import annotations

from sandpit._api import SSEDecoder


def feed_all(lines: list[str]) -> list[tuple[str, dict[str, object]]]:
    d = SSEDecoder()
    out = [got for line in lines if (got := d.feed(line)) is not None]
    last = d.flush()
    return out + ([last] if last else [])


def test_events_comments_and_multiline_data() -> None:
    lines = [
        ": keep-alive",
        "event: stdout",
        'data: {"data": "a"}',
        "",
        "",
        "event:stderr",
        'data:{"data":',
        'data: "b"}',
        "",
        'data: {"x": 1}',
        "",
        "event: exit",
        'data: {"exit_code": 0}',
    ]
    assert feed_all(lines) == [
        ("stdout", {"data": "a"}),
        ("stderr", {"data": "b"}),
        ("message", {"x": 1}),
        ("exit", {"exit_code": 0}),
    ]


def test_data_that_is_not_a_json_object_is_wrapped() -> None:
    assert feed_all(["event: note", "data: plain text", ""]) == [("note", {"data": "plain text"})]
    assert feed_all(["data: [1, 2]", ""]) == [("message", {"data": [1, 2]})]
