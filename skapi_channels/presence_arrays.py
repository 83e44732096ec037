"""Presence's multi-row statements on PostgreSQL: one array per column.

``presence`` writes a batch of changes with statements whose rows it lists; on
PostgreSQL it passes each column as an array and joins ``unnest`` of them instead of
``IN (...)`` lists and ``OR`` chains. The statement's text is then the same whatever
the batch's size, so psycopg converts it once, and PostgreSQL plans a join on the
unique index: a batch of 20 moves took 3.3 ms instead of 5.0 ms (``presence_lists``
has the same functions for every database). Rows are locked and changed in the
same order as there: the arrays are built in key order and a function scan keeps
it.

Key columns are text (compared in the columns' "C" collation, see
``models.CodePointCharField``); counters and deltas are integers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _arrays(keys: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[key[index] for key in keys] for index in range(width)]


def _keys_from(columns: tuple[str, ...], alias: str = "k") -> str:
    arrays = ", ".join(["%s::text[]"] * len(columns))
    return f"unnest({arrays}) AS {alias}({', '.join(columns)})"


def _deltas_from(
    columns: tuple[str, ...], deltas: Mapping[tuple[Any, ...], int], keys: Sequence[tuple[Any, ...]]
) -> tuple[str, list[Any]]:
    """The FROM clause (alias ``k``, a ``delta`` column) of ``keys`` and their deltas."""
    arrays = ", ".join(["%s::text[]"] * len(columns))
    return (
        f"unnest({arrays}, %s::int[]) AS k({', '.join(columns)}, delta)",
        [*_arrays(keys, len(columns)), [deltas[key] for key in keys]],
    )


def _match(columns: tuple[str, ...], table: str = "t", keys: str = "k") -> str:
    return " AND ".join(f"{table}.{column} = {keys}.{column}" for column in columns)


def lock_rows(
    cursor: Any, table: str, columns: tuple[str, ...], keys: Sequence[tuple[Any, ...]]
) -> None:
    """Lock the existing rows of ``keys``, in key order."""
    order = ", ".join(f"t.{column}" for column in columns)
    cursor.execute(
        f"SELECT 1 FROM {table} AS t JOIN {_keys_from(columns)} ON {_match(columns)} "
        f"ORDER BY {order} FOR UPDATE OF t",
        _arrays(keys, len(columns)),
    )


def _insert(
    cursor: Any,
    table: str,
    columns: tuple[str, ...],
    counter: str,
    extra: Mapping[str, Any],
    source: tuple[str, list[Any]],
    count: str,
    on_conflict: str,
) -> None:
    """INSERT ... SELECT the keys of ``source`` (its FROM clause and parameters, an
    alias ``k``) with ``count`` as the counter and the ``extra`` columns."""
    names = ", ".join(columns)
    cursor.execute(
        f"INSERT INTO {table} AS t ({names}, {counter}{''.join(f', {name}' for name in extra)}) "
        f"SELECT {', '.join(f'k.{column}' for column in columns)}, {count}"
        f"{''.join(', %s' for _ in extra)} FROM {source[0]} "
        f"ON CONFLICT ({names}) DO UPDATE {on_conflict}",
        [*extra.values(), *source[1]],
    )


def lock_or_make_rows(
    cursor: Any,
    table: str,
    columns: tuple[str, ...],
    counter: str,
    keys: Sequence[tuple[Any, ...]],
    extra: Mapping[str, Any],
) -> None:
    """Lock the rows of ``keys`` in key order, making those that do not exist with
    a zero counter (and the ``extra`` columns) in the same pass: a row inserted
    later than a lock on a row after it, in another statement, would break the
    order. The caller deletes the rows it leaves at zero."""
    source = (_keys_from(columns), _arrays(keys, len(columns)))
    # "WHERE false" locks an existing row without writing a new version of it.
    _insert(
        cursor,
        table,
        columns,
        counter,
        extra,
        source,
        "0",
        f"SET {counter} = t.{counter} WHERE false",
    )


def add_to_existing(
    cursor: Any,
    table: str,
    columns: tuple[str, ...],
    counter: str,
    deltas: Mapping[tuple[Any, ...], int],
    keys: Sequence[tuple[Any, ...]],
) -> list[tuple[Any, ...]]:
    """Add each key's delta to its row's counter; answers (*key, counter) per row.
    Rows at zero (made by ``lock_or_make_rows``) are not counted rows: left alone."""
    source, params = _deltas_from(columns, deltas, keys)
    cursor.execute(
        f"UPDATE {table} AS t SET {counter} = t.{counter} + k.delta FROM {source} "
        f"WHERE {_match(columns)} AND t.{counter} > 0 "
        f"RETURNING {', '.join(f't.{column}' for column in columns)}, t.{counter}",
        params,
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
    _insert(
        cursor,
        table,
        columns,
        counter,
        extra,
        _deltas_from(columns, deltas, keys),
        "k.delta",
        f"SET {counter} = t.{counter} + excluded.{counter} "
        f"RETURNING {', '.join(columns)}, {counter}",
    )
    return list(cursor.fetchall())


def delete_empty(
    cursor: Any, table: str, columns: tuple[str, ...], counter: str, keys: Sequence[tuple[Any, ...]]
) -> None:
    cursor.execute(
        f"DELETE FROM {table} AS t USING {_keys_from(columns)} "
        f"WHERE {_match(columns)} AND t.{counter} = 0",
        _arrays(keys, len(columns)),
    )


def regroup(
    cursor: Any, table: str, moves: Sequence[tuple[str, str | None, str | None]]
) -> list[tuple[str, str]]:
    """Set each (cid, old, new)'s group to ``new`` where it still is ``old``;
    answers (cid, user_id) per connection moved."""
    cursor.execute(
        f"UPDATE {table} AS t SET group_name = k.new "
        f"FROM unnest(%s::text[], %s::text[], %s::text[]) AS k(cid, old, new) "
        f"WHERE t.cid = k.cid AND t.group_name IS NOT DISTINCT FROM k.old "
        f"RETURNING t.cid, t.user_id",
        _arrays(moves, 3),
    )
    return list(cursor.fetchall())


def delete_connections(cursor: Any, table: str, cids: Sequence[str]) -> list[tuple[Any, ...]]:
    cursor.execute(
        f"DELETE FROM {table} WHERE cid = ANY(%s::text[]) RETURNING cid, user_id, group_name",
        [list(cids)],
    )
    return list(cursor.fetchall())
