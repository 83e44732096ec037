"""The group and user listings of docs/protocol.md sections 7 and 8.

``parse_*`` turn a request body into a query or raise ``InvalidParameter`` with a
sentence; ``list_*`` answer it. Every listing is a range of one index, paged by
keyset: the ``startKey`` holds the sort key of the last row, never an offset.
The endpoints and the Python API share this code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from skapi_channels.conf import conf
from skapi_channels.models import Connection, RealtimeGroup
from skapi_channels.protocol import group_name_problem, json_type, storable, user_id_problem

CONDITIONS = {
    "=": "eq", "eq": "eq",
    "!=": "ne", "ne": "ne",
    ">": "gt", "gt": "gt",
    ">=": "gte", "gte": "gte",
    "<": "lt", "lt": "lt",
    "<=": "lte", "lte": "lte",
}  # fmt: skip
MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
END = "end"
# number_of_users bounds outside this range match everything or nothing.
COUNT_FLOOR, COUNT_CEILING = -1, 2**31


class InvalidParameter(ValueError):
    """A listing parameter that is missing, mistyped or out of range."""


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    start_key: dict[str, Any] | str
    end_of_list: bool

    def as_json(self) -> dict[str, Any]:
        return {"list": self.items, "startKey": self.start_key, "endOfList": self.end_of_list}


@dataclass(frozen=True)
class GroupQuery:
    search_for: str = "group"
    value: str | int | float | None = None
    condition: str | None = None  # canonical: eq ne gt gte lt lte
    range: str | int | float | None = None
    limit: int = DEFAULT_LIMIT
    ascending: bool = True
    start_key: dict[str, Any] | str | None = None


@dataclass(frozen=True)
class UserQuery:
    group: str
    user_id: str | None = None
    limit: int = DEFAULT_LIMIT
    ascending: bool = True
    start_key: dict[str, Any] | str | None = None


# Parsing.


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)  # an int of any size is finite


def _count_bound(value: int | float) -> int | float:
    """``value`` moved into a range a float holds; beyond the counts' range every
    bound means the same (all rows or none), so nothing changes meaning."""
    return max(COUNT_FLOOR - 1, min(COUNT_CEILING + 1, value))


def _paging(body: dict[str, Any]) -> tuple[int, bool]:
    limit = body.get("limit", DEFAULT_LIMIT)
    if limit is None:
        limit = DEFAULT_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidParameter(f"limit must be an integer from 1 to {MAX_LIMIT}.")
    ascending = body.get("ascending", True)
    if ascending is None:
        ascending = True
    if not isinstance(ascending, bool):
        raise InvalidParameter(f"ascending must be a boolean, not {json_type(ascending)}.")
    return limit, ascending


def _start_key(value: Any, fields: dict[str, type]) -> dict[str, Any] | str | None:
    if value is None or value == END:
        return value
    if (
        not isinstance(value, dict)
        or set(value) != set(fields)
        or any(
            not isinstance(value[name], kind)
            or isinstance(value[name], bool)
            or (isinstance(value[name], str) and not storable(value[name]))
            or (isinstance(value[name], int) and not 0 <= value[name] <= COUNT_CEILING)
            for name, kind in fields.items()
        )
    ):
        raise InvalidParameter(
            "startKey cannot be decoded; pass the startKey of the previous answer unchanged."
        )
    return value


def parse_group_query(body: dict[str, Any]) -> GroupQuery:
    search_for = body.get("searchFor") or "group"
    if search_for not in ("group", "number_of_users"):
        raise InvalidParameter("searchFor must be 'group' or 'number_of_users'.")
    value = body.get("value")
    condition = body.get("condition")
    range_ = body.get("range")
    if value is None or value == "":
        if condition is not None or range_ is not None:
            raise InvalidParameter("condition and range need a value.")
        value = None
    elif search_for == "group":
        if not isinstance(value, str):
            raise InvalidParameter(f"value must be a string for 'group', not {json_type(value)}.")
        problem = group_name_problem(value, conf.MAX_GROUP_NAME_LENGTH)
        if problem:
            raise InvalidParameter("value: " + problem)
    elif not _is_number(value):
        raise InvalidParameter(
            f"value must be a number for 'number_of_users', not {json_type(value)}."
        )
    if condition is not None and range_ is not None:
        raise InvalidParameter("condition and range cannot be used together.")
    canonical = None
    if condition is not None:
        if not isinstance(condition, str) or condition not in CONDITIONS:
            raise InvalidParameter(
                "condition must be one of " + ", ".join(CONDITIONS) + "."
            )
        canonical = CONDITIONS[condition]
    elif value is not None and range_ is None:
        canonical = "eq"
    if range_ is not None:
        if search_for == "group":
            if not isinstance(range_, str):
                raise InvalidParameter("range must be a string, like value.")
            problem = group_name_problem(range_, conf.MAX_GROUP_NAME_LENGTH)
            if problem:
                raise InvalidParameter("range: " + problem)
        elif not _is_number(range_):
            raise InvalidParameter("range must be a number, like value.")
    if search_for == "number_of_users":
        value = None if value is None else _count_bound(value)
        range_ = None if range_ is None else _count_bound(range_)
    limit, ascending = _paging(body)
    start_key = _start_key(body.get("startKey"), {"group": str, "number_of_users": int})
    return GroupQuery(search_for, value, canonical, range_, limit, ascending, start_key)


def parse_user_query(body: dict[str, Any]) -> UserQuery:
    group = body.get("group")
    if group is None or group == "":
        raise InvalidParameter("group is required.")
    problem = group_name_problem(group, conf.MAX_GROUP_NAME_LENGTH)
    if problem:
        raise InvalidParameter("group: " + problem)
    user_id = body.get("user_id")
    if user_id == "":
        user_id = None
    if user_id is not None:
        problem = user_id_problem(user_id, "user_id")
        if problem:
            raise InvalidParameter(problem)
    limit, ascending = _paging(body)
    start_key = _start_key(body.get("startKey"), {"user_id": str, "cid": str})
    return UserQuery(group, user_id, limit, ascending, start_key)


# Answering.


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (None: no bound)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be stored
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _name_filter(query: GroupQuery) -> Q:
    value = query.value
    if query.range is not None:
        return Q(name__gte=value, name__lte=query.range)
    if query.condition == "gte":  # "starts with", as Skapi documents
        upper = prefix_upper_bound(str(value))
        return Q(name__gte=value) if upper is None else Q(name__gte=value, name__lt=upper)
    lookups = {"eq": "exact", "gt": "gt", "lt": "lt", "lte": "lte"}
    if query.condition == "ne":
        return ~Q(name=value)
    return Q(**{f"name__{lookups[query.condition or 'eq']}": value})


def _count_ranges(query: GroupQuery) -> list[Q]:
    """The number_of_users ranges to list, in ascending order, each one range of the
    size index. number_of_users is an integer: a fractional bound becomes the
    integer it implies; ``!=`` is the two ranges around the value, since filtering
    out a common size would scan most of the index."""
    value = float(query.value)  # type: ignore[arg-type]
    if query.range is not None:
        low, high = math.ceil(value), math.floor(float(query.range))
        return [_between(low, high)]
    integral = value.is_integer()
    condition = query.condition
    if condition == "eq":
        return [_between(int(value), int(value)) if integral else Q(pk__in=[])]
    if condition == "ne":
        if not integral:
            return [Q()]
        return [_between(None, int(value) - 1), _between(int(value) + 1, None)]
    if condition == "gt":
        return [_between(math.floor(value) + 1, None)]
    if condition == "gte":
        return [_between(math.ceil(value), None)]
    if condition == "lt":
        return [_between(None, math.ceil(value) - 1)]
    return [_between(None, math.floor(value))]


def _between(low: int | None, high: int | None) -> Q:
    if low is not None and high is not None and low > high:
        return Q(pk__in=[])
    q = Q()
    if low is not None and low > COUNT_FLOOR:
        if low > COUNT_CEILING:
            return Q(pk__in=[])
        q &= Q(number_of_users__gte=low)
    if high is not None and high < COUNT_CEILING:
        if high < COUNT_FLOOR:
            return Q(pk__in=[])
        q &= Q(number_of_users__lte=high)
    return q


def _after(fields: tuple[str, str], key: tuple[Any, Any], ascending: bool) -> Q:
    """Rows after ``key`` in (first, second) order; the first conjunct bounds the
    index range, the second skips the ties already shown."""
    first, second = fields
    direction = "gt" if ascending else "lt"
    inclusive = "gte" if ascending else "lte"
    return Q(**{f"{first}__{inclusive}": key[0]}) & (
        Q(**{f"{first}__{direction}": key[0]}) | Q(**{f"{second}__{direction}": key[1]})
    )


def _page(parts: list[QuerySet], limit: int, names: tuple[str, str]) -> Page:
    """One page of the rows (value tuples) of ``parts``, disjoint querysets in list
    order, as items named ``names``; the last item, which holds the sort key, is the
    startKey of the next page."""
    fetched: list[Any] = []
    for rows in parts:
        fetched.extend(rows[: limit + 1 - len(fetched)])
        if len(fetched) > limit:
            break
    items = [dict(zip(names, row, strict=True)) for row in fetched[:limit]]
    if len(fetched) > limit:
        return Page(items, dict(items[-1]), False)
    return Page(items, END, True)


def list_groups(query: GroupQuery) -> Page:
    if query.start_key == END:
        return Page([], END, True)
    rows = RealtimeGroup.objects.all()
    ranges = [Q()]
    if query.search_for == "group":
        if query.value is not None:
            rows = rows.filter(_name_filter(query))
        order = ["name"]
        if isinstance(query.start_key, dict):
            key = query.start_key["group"]
            rows = rows.filter(name__gt=key) if query.ascending else rows.filter(name__lt=key)
    else:
        if query.value is not None:
            ranges = _count_ranges(query)
        order = ["number_of_users", "name"]
        if isinstance(query.start_key, dict):
            key = (query.start_key["number_of_users"], query.start_key["group"])
            rows = rows.filter(_after(("number_of_users", "name"), key, query.ascending))
    if not query.ascending:
        order = ["-" + field for field in order]
        ranges.reverse()
    parts = [
        rows.filter(part).order_by(*order).values_list("name", "number_of_users")
        for part in ranges
    ]
    return _page(parts, query.limit, ("group", "number_of_users"))


def list_users(query: UserQuery) -> Page:
    if query.start_key == END:
        return Page([], END, True)
    rows = Connection.objects.filter(group_name=query.group)
    if query.user_id is not None:
        rows = rows.filter(user_id=query.user_id)
    if isinstance(query.start_key, dict):
        key = (query.start_key["user_id"], query.start_key["cid"])
        rows = rows.filter(_after(("user_id", "cid"), key, query.ascending))
    order = ["user_id", "cid"] if query.ascending else ["-user_id", "-cid"]
    rows = rows.order_by(*order).values_list("user_id", "cid")
    return _page([rows], query.limit, ("user_id", "cid"))
