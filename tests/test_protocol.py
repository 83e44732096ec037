"""The pure parts: frame parsing, frame building, name rules, prefix bounds."""

from __future__ import annotations

import json

import pytest

from skapi_channels.addressing import group_address, user_address
from skapi_channels.limits import TokenBucket
from skapi_channels.protocol import (
    Frame,
    FrameError,
    error_frame,
    notice_frame,
    parse_frame,
    private_frame,
    utf8_length_over,
)
from skapi_channels.queries import prefix_upper_bound


def parse(frame: dict) -> Frame:
    return parse_frame(json.dumps(frame), 128)


def test_parses_each_action():
    assert parse({"action": "keepAlive"}) == Frame("keepAlive")
    assert parse({"action": "joinRoom", "rid": "G", "id": 1}) == Frame("joinRoom", 1, "G")
    assert parse({"action": "joinRoom", "rid": None}) == Frame("joinRoom", None, None)
    assert parse({"action": "joinRoom"}) == Frame("joinRoom")
    assert parse({"action": "broadcast", "rid": "G", "content": None}) == Frame("broadcast", None, "G", None)
    assert parse({"action": "sendMessage", "uid": "7", "content": [1], "id": "a"}) == Frame(
        "sendMessage", "a", "7", [1]
    )


def test_ids_of_64_characters_and_big_integers_pass():
    assert parse({"action": "keepAlive", "id": "x" * 64}).id == "x" * 64
    assert parse({"action": "keepAlive", "id": 2**70}).id == 2**70


def test_errors_carry_the_id_when_it_was_readable():
    with pytest.raises(FrameError) as caught:
        parse({"action": "sendMessage", "uid": "", "content": 1, "id": 4})
    assert (caught.value.code, caught.value.frame_id) == ("INVALID_PARAMETER", 4)


def test_utf8_length():
    assert not utf8_length_over("a" * 100, 100)
    assert utf8_length_over("a" * 101, 100)
    assert utf8_length_over("é" * 51, 100)
    assert not utf8_length_over("é" * 50, 100)


def test_server_frames_have_the_wire_keys():
    assert json.loads(private_frame("x", "7", "c")) == {
        "#private": "x", "#user_id": "7", "#scid": "c", "#srid": None,
    }  # fmt: skip
    assert json.loads(notice_frame("USER_LEFT", "7", "c", "G")) == {
        "#notice": "7 has left the message group.",
        "#code": "USER_LEFT", "#user_id": "7", "#scid": "c", "#srid": "G",
    }  # fmt: skip
    assert json.loads(error_frame("TOO_LARGE", "big")) == {"#error": "big", "#code": "TOO_LARGE", "#id": None}


def test_addresses_are_valid_layer_group_names_and_distinct():
    import re

    names = {group_address("x" * 128), group_address("G"), user_address("G"), group_address("\U0010ffff")}
    assert len(names) == 4
    assert all(re.fullmatch(r"[a-zA-Z0-9_.-]{1,99}", name) for name in names)


@pytest.mark.parametrize(
    "prefix,bound",
    [("Hello", "Hellp"), ("a\U0010ffff", "b"), ("\U0010ffff", None), ("a\ud7ff", "a\ue000"), ("", None)],
)
def test_prefix_upper_bound(prefix, bound):
    assert prefix_upper_bound(prefix) == bound


def test_token_bucket_allows_the_burst_then_the_rate(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("skapi_channels.limits.time.monotonic", lambda: clock[0])
    bucket = TokenBucket(rate=20, burst=40)
    assert sum(bucket.take() for _ in range(50)) == 40
    clock[0] += 0.5
    assert sum(bucket.take() for _ in range(50)) == 10


# Refusals read a bounded amount of the frame for its id.


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"id": 9, "content": "' + "x" * 40_000 + '"}', 9),
        ('{"action": "broadcast", "content": "' + "x" * 40_000 + '", "id": "last"}', "last"),
        ('{"content": {"id": 5}}' + " " * 2_000, None),  # not top-level
        ('{"content": "' + "x" * 3_000 + ', \\"id\\": 5}"}', None),  # inside a string
        ('{"content": [' + "[" * 5_000 + "]" * 5_000 + '], "id": 12 }', 12),
        ('{"id": 1.5, "content": "' + "x" * 2_000 + '"}', None),
        ('{"content": "' + "x" * 2_000 + '", "id": "' + "y" * 65 + '"}', None),
        ("[" * 1_048_576, None),
        ('{"content": ' + "[" * 1_048_576, None),
        ('{"id": 3, "content": ' + "[" * 1_048_576, 3),
        # A repeated id takes its last value, as a JSON parser reads it.
        ('{"id": "", "id": "' + "y" * 70 + '", "content": "' + "x" * 40_000 + '"}', None),
        ('{"id": [1], "id": 5, "content": "' + "x" * 40_000 + '"}', 5),
        ('{"id": 3, "content": "' + "x" * 40_000 + '", "id": "' + "z" * 70 + '"}', None),
        ('{"id": 3, "content": "' + "x" * 40_000 + '", "id": 4}', 4),
    ],
)
def test_the_id_of_a_large_frame_is_read_from_its_ends(text, expected):
    from skapi_channels.protocol import id_of_unparsed

    assert id_of_unparsed(text) == expected


def test_refusing_a_large_deep_frame_reads_a_bounded_prefix(monkeypatch):
    from skapi_channels import protocol

    seen: list[int] = []
    original = protocol.top_level_id

    def recording(text: str):
        seen.append(len(text))
        return original(text)

    monkeypatch.setattr(protocol, "top_level_id", recording)
    assert protocol.id_of_unparsed('{"content": ' + "[" * 1_048_576) is None
    with pytest.raises(protocol.FrameError):
        protocol.parse_frame('{"id": 4, "content": ' + "[" * 30_000 + "]" * 30_000 + "}", 128)
    assert seen and max(seen) <= protocol.ID_SCAN_CHARS
