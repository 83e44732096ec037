"""The wire format of docs/protocol.md: parsing client frames, building server frames.

Pure functions, no I/O: the consumer calls them, and tests call them directly.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

INVALID_REQUEST = "INVALID_REQUEST"
INVALID_PARAMETER = "INVALID_PARAMETER"
TOO_LARGE = "TOO_LARGE"
RATE_LIMITED = "RATE_LIMITED"
MISSED_MESSAGES = "MISSED_MESSAGES"

USER_JOINED = "USER_JOINED"
USER_LEFT = "USER_LEFT"
USER_DISCONNECTED = "USER_DISCONNECTED"
SERVER_NOTICE = "SERVER_NOTICE"

# Close codes.
CLOSE_SERVER_RESTART = 1012  # this process was taken for dead; reconnect
CLOSE_BY_SERVER = 4000  # an operator or site code ended the connection
CLOSE_REVOKED = 4001  # the login behind the socket is gone (logout, password, user)
CLOSE_FLOODING = 4008
CLOSE_TOO_FAR_BEHIND = 4009

# Channel-layer event types: the app's own, never taken from client input.
EVENT_FRAME = "skapi.frame"  # a server frame, already encoded, to deliver
EVENT_CLOSE = "skapi.close"  # close the socket with ``code``
EVENT_DRAINED = "skapi.drained"  # marker: a left group's queued events end here
EVENT_MISSED = "skapi.missed"  # the layer dropped ``count`` events for this channel
EVENT_RTC = "skapi.rtc"  # a call-signalling frame for the one connection ``cid``
EVENT_RTC_GONE = "skapi.rtc_gone"  # connection ``cid``, a signalling peer, has closed
EVENT_REVOKE = "skapi.revoke"  # the login of user ``uid`` changed (revocation.py)

ACTIONS = ("sendMessage", "broadcast", "joinRoom", "keepAlive", "rtc", "resume")
MAX_ID_LENGTH = 64
MAX_USER_ID_LENGTH = 150

FrameId = int | str | None


class FrameError(Exception):
    """A refused frame: becomes an error frame, never closes the socket."""

    def __init__(self, code: str, message: str, frame_id: FrameId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id


@dataclass(frozen=True, slots=True)
class Frame:
    action: str
    id: FrameId = None
    # sendMessage: recipient user_id; broadcast/joinRoom: group name (None leaves);
    # rtc: the callee's cid, bare.
    target: str | None = None
    content: Any = None
    # joinRoom, resume: replay the stream after this (offset, epoch) (section 11).
    since: tuple[int, str] | None = None
    # joinRoom: replay at most this many of the group's latest messages.
    last: int | None = None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes) -> Any:
    """Strict JSON: NaN and Infinity are refused, as JSON has neither."""
    return json.loads(text, parse_constant=_refuse_constant)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def not_joined_sentence(rid: str) -> str:
    return f"User has not joined to the recipient group. Run joinRealtime('{rid}')"


def utf8_length_over(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes of UTF-8, encoding only if unclear."""
    if len(text) <= limit // 4:
        return False
    if len(text) > limit:
        return True
    return len(text.encode("utf-8", "surrogatepass")) > limit


def group_name_problem(value: Any, max_length: int) -> str | None:
    """Why ``value`` is not a valid group name, or None when it is."""
    if not isinstance(value, str):
        return f"Group name must be a string, not {json_type(value)}."
    if not 1 <= len(value) <= max_length:
        return f"Group name must be 1 to {max_length} characters long; it has {len(value)}."
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc":
            return f"Group name must not contain control characters (found U+{ord(char):04X})."
        if category == "Cs":
            return f"Group name must be valid Unicode (found the lone surrogate U+{ord(char):04X})."
    return None


def storable(value: str) -> bool:
    """Whether a database can hold ``value``: no NUL, no lone surrogate."""
    return "\x00" not in value and not any(0xD800 <= ord(char) <= 0xDFFF for char in value)


def user_id_problem(value: Any, name: str = "uid") -> str | None:
    """Why ``value`` is not a possible user_id, or None."""
    if not isinstance(value, str):
        return f"{name} must be a string, not {json_type(value)}."
    if not 1 <= len(value) <= MAX_USER_ID_LENGTH:
        return f"{name} must be 1 to {MAX_USER_ID_LENGTH} characters long."
    if not storable(value):
        return f"{name} must be valid Unicode without NUL characters."
    return None


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def read_id(data: dict[str, Any]) -> FrameId:
    """The frame's id; a present id of the wrong type is refused with ``#id`` null."""
    if "id" not in data:
        return None
    frame_id = data["id"]
    if isinstance(frame_id, bool) or not isinstance(frame_id, (int, str)) or (
        isinstance(frame_id, str) and len(frame_id) > MAX_ID_LENGTH
    ):
        raise FrameError(
            INVALID_PARAMETER,
            f"id must be an integer or a string of at most {MAX_ID_LENGTH} characters.",
        )
    return frame_id


def read_since(data: dict[str, Any], frame_id: FrameId) -> tuple[int, str] | None:
    """The ``since`` position of a joinRoom or resume frame: ``(offset, epoch)``."""
    if "since" not in data:
        return None
    since = data["since"]
    if not isinstance(since, dict):
        raise FrameError(
            INVALID_PARAMETER,
            f'since must be an object {{"offset": <integer>, "epoch": <string>}}, '
            f"not {json_type(since)}.",
            frame_id,
        )
    offset, epoch = since.get("offset"), since.get("epoch")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        shown = f" {offset}" if isinstance(offset, int) and not isinstance(offset, bool) else ""
        raise FrameError(
            INVALID_PARAMETER,
            f"since.offset must be an integer of 0 or more, not {json_type(offset)}{shown}.",
            frame_id,
        )
    if not isinstance(epoch, str):
        raise FrameError(
            INVALID_PARAMETER, f"since.epoch must be a string, not {json_type(epoch)}.", frame_id
        )
    return offset, epoch


def read_last(data: dict[str, Any], frame_id: FrameId, history_size: int) -> int | None:
    """The ``last`` count of a joinRoom frame: 1 to ``history_size`` (any positive
    integer when history is off: nothing is kept to replay)."""
    if "last" not in data:
        return None
    last = data["last"]
    top = history_size if history_size > 0 else None
    if (
        isinstance(last, bool)
        or not isinstance(last, int)
        or last < 1
        or (top is not None and last > top)
    ):
        shown = f" {last}" if isinstance(last, int) and not isinstance(last, bool) else ""
        raise FrameError(
            INVALID_PARAMETER,
            f"last must be an integer from 1 to {top if top is not None else 'any'}, "
            f"not {json_type(last)}{shown}.",
            frame_id,
        )
    return last


def parse_frame(text: str, max_group_name_length: int, history_size: int = 0) -> Frame:
    """Parse and validate one text frame; raises FrameError with what was wrong."""
    try:
        data = loads(text)
    except RecursionError:
        raise FrameError(
            INVALID_REQUEST,
            "Frame is nested too deeply to be read.",
            top_level_id(text[:ID_SCAN_CHARS]),
        ) from None
    except ValueError:
        raise FrameError(INVALID_REQUEST, "Frame is not valid JSON.") from None
    if not isinstance(data, dict):
        raise FrameError(INVALID_REQUEST, f"Frame must be a JSON object, not {json_type(data)}.")
    frame_id = read_id(data)
    action = data.get("action")
    if action is None:
        raise FrameError(INVALID_REQUEST, "Frame has no action.", frame_id)
    if action not in ACTIONS:
        shown = action if isinstance(action, str) else json_type(action)
        raise FrameError(
            INVALID_REQUEST,
            f"Unknown action {str(shown)[:64]!r}; expected one of {', '.join(ACTIONS)}.",
            frame_id,
        )
    if action == "keepAlive":
        return Frame(action, frame_id)
    if action == "resume":
        return Frame(action, frame_id, since=read_since(data, frame_id))
    if action == "joinRoom":
        if "since" in data and "last" in data:
            raise FrameError(INVALID_PARAMETER, "joinRoom takes since or last, not both.", frame_id)
        since = read_since(data, frame_id)
        last = read_last(data, frame_id, history_size)
        rid = data.get("rid")
        if rid is None or rid == "":
            return Frame(action, frame_id, None)
        problem = group_name_problem(rid, max_group_name_length)
        if problem:
            raise FrameError(INVALID_PARAMETER, problem, frame_id)
        return Frame(action, frame_id, rid, since=since, last=last)
    if "content" not in data:
        raise FrameError(INVALID_PARAMETER, f"{action} needs a content field.", frame_id)
    if action == "broadcast":
        if "rid" not in data:
            raise FrameError(INVALID_PARAMETER, "broadcast needs a rid field.", frame_id)
        rid = data["rid"]
        if not isinstance(rid, str):
            raise FrameError(
                INVALID_PARAMETER, f"rid must be a string, not {json_type(rid)}.", frame_id
            )
        problem = group_name_problem(rid, max_group_name_length)
        if problem:
            raise FrameError(INVALID_PARAMETER, problem, frame_id)
        return Frame(action, frame_id, rid, data["content"])
    if "uid" not in data:
        raise FrameError(INVALID_PARAMETER, f"{action} needs a uid field.", frame_id)
    if action == "rtc":
        cid = connection_id(data["uid"])
        if cid is None:
            raise FrameError(
                INVALID_PARAMETER,
                "rtc needs uid: the callee's connection id, as 'cid:...'.",
                frame_id,
            )
        return Frame(action, frame_id, cid, data["content"])
    problem = user_id_problem(data["uid"])
    if problem:
        raise FrameError(INVALID_PARAMETER, problem, frame_id)
    return Frame(action, frame_id, data["uid"], data["content"])


CID_PREFIX = "cid:"
MAX_CID_LENGTH = 32  # the cids this server makes are 22 characters


def connection_id(value: Any) -> str | None:
    """The bare cid in ``value`` ("cid:<cid>" or bare), or None when it cannot be one."""
    if not isinstance(value, str):
        return None
    cid = value[len(CID_PREFIX) :] if value.startswith(CID_PREFIX) else value
    if not 1 <= len(cid) <= MAX_CID_LENGTH or not all(
        char.isascii() and (char.isalnum() or char in "-_") for char in cid
    ):
        return None
    return cid


def not_open_sentence(cid: str) -> str:
    return f"Connection '{CID_PREFIX}{cid}' is not open."


# A frame refused before it is parsed (too large, rate-limited, nested too deeply)
# is read for its id in its first ID_SCAN_CHARS characters only: refusing costs a
# small, bounded amount however large or deep the frame is.
ID_SCAN_CHARS = 1024


# An id that is the last member of the frame's object (where clients that add it
# after building the frame put it): the closing brace must end the text. Any string
# or number is matched, so that a last "id" of the wrong type is seen (and decides).
_TRAILING_ID = re.compile(r'[,{]\s*"id"\s*:\s*(-?[\d.eE+-]{1,40}|"(?:[^"\\]|\\.)*")\s*\}\s*$')
_TAIL_CHARS = MAX_ID_LENGTH * 6 + 32  # a 64-character id, escaped, with its key


def trailing_id(text: str) -> tuple[bool, FrameId]:
    """Whether the frame's object ends with an ``id`` member, and its value when
    that is a valid id (None when it is not), read from the last characters."""
    match = _TRAILING_ID.search(text[-_TAIL_CHARS:])
    if match is None:
        return False, None
    try:
        return True, read_id({"id": _SCALAR.decode(match.group(1))})
    except (ValueError, FrameError):
        return True, None


def id_of_unparsed(text: str) -> FrameId:
    """Best effort: the id of a frame refused before parsing (too large, rate limited),
    found in its first ``ID_SCAN_CHARS`` characters or at its very end."""
    if len(text) > ID_SCAN_CHARS:
        # A repeated key takes its last value (as JSON parsers do): an id that ends
        # the object decides, else the last one in the scanned prefix.
        ends_with_id, last = trailing_id(text)
        return last if ends_with_id else top_level_id(text[:ID_SCAN_CHARS])
    try:
        data = loads(text)
        return read_id(data) if isinstance(data, dict) else None
    except RecursionError:
        return top_level_id(text)
    except (ValueError, FrameError):
        return None


_SCALAR = json.JSONDecoder(parse_constant=_refuse_constant)


def top_level_id(text: str) -> FrameId:
    """The ``id`` of a JSON object too deeply nested (or too large) to parse, found
    without recursion: nested values are skipped by counting brackets outside
    strings. A repeated ``id`` key takes its last value, as JSON parsers do; None
    when there is none or that value is not a valid id."""
    depth, index, length = 0, 0, len(text)
    expect_key = False
    found: FrameId = None
    if not text.lstrip().startswith("{"):
        return None  # not an object: no id
    while index < length:
        if depth > length - index:
            return found  # too deep to come back to the top level before the end
        char = text[index]
        if char == '"':
            try:
                string, end = _SCALAR.raw_decode(text, index)
            except ValueError:
                return found
            if depth == 1 and expect_key and string == "id":
                colon = text.find(":", end)
                if colon < 0 or text[end:colon].strip():
                    return found
                start = colon + 1
                while start < length and text[start] in " \t\r\n":
                    start += 1
                try:
                    value, _ = _SCALAR.raw_decode(text, start)
                    found = read_id({"id": value})
                except (ValueError, RecursionError, FrameError):
                    found = None
                # The value itself is skipped by the scan that goes on from here.
            expect_key = False
            index = end
            continue
        if char in "[{":
            depth += 1
            expect_key = char == "{" and depth == 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 1:
            expect_key = True
        index += 1
    return found


# Channel-layer events.


# Keys of a frame event for the history of its stream (history.py): set by the
# sender to have the layer keep it, and by the layer on what receivers get.
KEEP = "keep"
OFFSET = "offset"
EPOCH = "epoch"


def frame_event(
    text: str,
    *,
    rid: str | None = None,
    uid: str | None = None,
    skip: str | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """The event delivering the encoded server frame ``text`` to the members of
    group ``rid`` or the connections of user ``uid`` (receivers compare the name,
    so a layer-address collision delivers nothing); ``skip`` names a channel that
    must not get it; ``keep`` asks the layer to keep it in the stream's history."""
    event: dict[str, Any] = {"type": EVENT_FRAME, "text": text}
    if rid is not None:
        event["rid"] = rid
    if uid is not None:
        event["uid"] = uid
    if skip is not None:
        event["skip"] = skip
    if keep:
        event[KEEP] = True
    return event


def rtc_event(text: str, cid: str, sender_cid: str, reply_to: str, user_id: str) -> dict[str, Any]:
    """The event relaying the encoded ``#rtc`` frame ``text`` to connection ``cid``;
    it tells the callee where the caller is (``reply_to``), so answers need no lookup."""
    return {
        "type": EVENT_RTC,
        "text": text,
        "cid": cid,
        "from": sender_cid,
        "reply_to": reply_to,
        "user_id": user_id,
    }


def rtc_gone_event(cid: str) -> dict[str, Any]:
    return {"type": EVENT_RTC_GONE, "cid": cid}


def close_event(code: int, **extra: Any) -> dict[str, Any]:
    return {"type": EVENT_CLOSE, "code": code, **extra}


# Server frames.


def ack_frame(frame_id: FrameId, **extra: Any) -> str:
    return dumps({"#ack": frame_id, **extra})


def error_frame(code: str, message: str, frame_id: FrameId = None, **extra: Any) -> str:
    frame = {"#error": message, "#code": code, "#id": frame_id}
    frame.update(extra)
    return dumps(frame)


def message_frame(content: Any, user_id: str, cid: str, rid: str) -> str:
    return dumps({"#message": content, "#user_id": user_id, "#scid": cid, "#srid": rid})


def private_frame(content: Any, user_id: str, cid: str) -> str:
    return dumps({"#private": content, "#user_id": user_id, "#scid": cid, "#srid": None})


def rtc_frame(content: Any, user_id: str, cid: str) -> str:
    return dumps({"#rtc": content, "#user_id": user_id, "#scid": cid, "#srid": None})


NOTICE_SENTENCES = {
    USER_JOINED: "{} has joined the message group.",
    USER_LEFT: "{} has left the message group.",
    USER_DISCONNECTED: "{} has been disconnected.",
}


def notice_frame(code: str, user_id: str, cid: str, rid: str) -> str:
    return dumps(
        {
            "#notice": NOTICE_SENTENCES[code].format(user_id),
            "#code": code,
            "#user_id": user_id,
            "#scid": cid,
            "#srid": rid,
        }
    )


# Frames the server sends on its own (api.py): ``#scid`` null, ``#user_id`` null or
# the user the site speaks for.


def server_private_frame(content: Any, sender: str | None = None) -> str:
    return dumps({"#private": content, "#user_id": sender, "#scid": None, "#srid": None})


def server_message_frame(content: Any, group: str, sender: str | None = None) -> str:
    return dumps({"#message": content, "#user_id": sender, "#scid": None, "#srid": group})


def server_notice_frame(sentence: str, group: str, code: str = SERVER_NOTICE) -> str:
    return dumps(
        {"#notice": sentence, "#code": code, "#user_id": None, "#scid": None, "#srid": group}
    )
