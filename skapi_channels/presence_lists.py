"""Presence's multi-row statements on any database: rows listed in the statement.

The same functions as ``presence_arrays`` (PostgreSQL's), written with ``IN (...)``
lists, ``OR`` chains and multi-row ``VALUES``, which every database ``presence``
runs on takes (SQLite included). The statement's text grows with the batch, so
``presence`` keeps batches under each database's parameter limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _where_keys(columns: tuple[str, ...], keys: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """A condition matching the rows of ``keys``, and its parameters."""
    if len(columns) == 1:
        return f"{columns[0]} IN ({', '.join(['%s'] * len(keys))})", [key[0] for key in keys]
    one = "(" + " AND ".join(f"{column} = %s" for column in columns) + ")"
    return " OR ".join([one] * len(keys)), [value for key in keys for value in key]


def add_to_existing(
    cursor: Any,
    table: str,
    columns: tuple[str, ...],
    counter: str,
    deltas: Mapping[tuple[Any, ...], int],
    keys: Sequence[tuple[Any, ...]],
) -> list[tuple[Any, ...]]:
    """Add each key's delta to its row's counter; answers (*key, counter) per row."""
    where, params = _where_keys(columns, keys)
    match_one = " AND ".join(f"{column} = %s" for column in columns)
    cases = " ".join([f"WHEN {match_one} THEN %s"] * len(keys))
    cursor.execute(
        f"UPDATE {table} SET {counter} = {counter} + CASE {cases} END "
        f"WHERE {where} RETURNING {', '.join(columns)}, {counter}",
        [value for key in keys for value in (*key, deltas[key])] + params,
    )
    return list(cursor.fetchall())


def add_or_insert(
    cursor: Any,
    table: str,
    columns: tuple[str, ...],
    counter: str,
    deltas: Mapping[tuple[Any, ...], int],
    keys: Sequence[tuple[Any, ...]],
    extra: Mapping[str, Any],
) -> list[tuple[Any, ...]]:
    """Add each key's (positive) delta, making the rows that do not exist with the
    ``extra`` columns; answers (*key, counter) per row."""
    names = ", ".join(columns)
    width = len(columns) + 1 + len(extra)
    rows = ", ".join(["(" + ", ".join(["%s"] * width) + ")"] * len(keys))
    cursor.execute(
        f"INSERT INTO {table} ({names}, {counter}{''.join(f', {name}' for name in extra)}) "
        f"VALUES {rows} ON CONFLICT ({names}) "
        f"DO UPDATE SET {counter} = {table}.{counter} + excluded.{counter} "
        f"RETURNING {names}, {counter}",
        [value for key in keys for value in (*key, deltas[key], *extra.values())],
    )
    return list(cursor.fetchall())


def delete_empty(
    cursor: Any, table: str, columns: tuple[str, ...], counter: str, keys: Sequence[tuple[Any, ...]]
) -> None:
    where, params = _where_keys(columns, keys)
    cursor.execute(f"DELETE FROM {table} WHERE {counter} = 0 AND ({where})", params)


def regroup(
    cursor: Any, table: str, moves: Sequence[tuple[str, str | None, str | None]]
) -> list[tuple[str, str]]:
    """Set each (cid, old, new)'s group to ``new`` where it still is ``old``;
    answers (cid, user_id) per connection moved."""
    cases = " ".join(["WHEN %s THEN %s"] * len(moves))
    where = " OR ".join(
        "(cid = %s AND group_name IS NULL)" if old is None else "(cid = %s AND group_name = %s)"
        for _, old, _ in moves
    )
    params: list[Any] = [value for cid, _, new in moves for value in (cid, new)]
    for cid, old, _ in moves:
        params.extend((cid,) if old is None else (cid, old))
    cursor.execute(
        f"UPDATE {table} SET group_name = CASE cid {cases} END "
        f"WHERE {where} RETURNING cid, user_id",
        params,
    )
    return list(cursor.fetchall())


def delete_connections(cursor: Any, table: str, cids: Sequence[str]) -> list[tuple[Any, ...]]:
    cursor.execute(
        f"DELETE FROM {table} WHERE cid IN ({', '.join(['%s'] * len(cids))}) "
        f"RETURNING cid, user_id, group_name",
        list(cids),
    )
    return list(cursor.fetchall())
