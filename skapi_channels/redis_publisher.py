"""The scale-out layer's connection for its scripts, one per process and event loop
(``skapi-pub-<process>`` in CLIENT LIST): pipelined, answered in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

from redis import asyncio as aioredis
from redis.exceptions import NoScriptError

from skapi_channels.redis_scripts import PUBLISH_LUA, pack, script_sha

if TYPE_CHECKING:
    from skapi_channels.redis_fanout import RedisFanoutLayer


class Publisher:
    """This process's connection for the scripts (publishing, reading history), in
    one event loop.

    Commands are written as they come, those of one turn of the loop in one write,
    and one reader answers them in order: none of a pool's per-command checkout,
    health check and retry machinery on the path of every message. Per-sender order
    holds as through a pool: a sender awaits each publish. A lost connection fails
    what awaits an answer (``redis.ConnectionError``: the sender retries) and the
    next command connects again."""

    def __init__(self, layer: RedisFanoutLayer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop
        self.connection: Any = None
        self.lock = asyncio.Lock()
        self.reader: asyncio.Task[None] | None = None
        self.unsent: list[bytes] = []  # packed commands to write
        self.writing: Any = None  # the connection a writer task is writing to
        self.waiting: deque[asyncio.Future[Any]] = deque()  # in the order written

    async def publish(self, keys: list[bytes], args: list[Any]) -> Any:
        return await self.script(PUBLISH_LUA, keys, args)

    async def script(self, source: str, keys: list[bytes], args: list[Any]) -> Any:
        """Runs the Lua script ``source``. A burst of history reads at connect (a
        reconnect storm) shares this connection too, rather than opening one each."""
        sha = script_sha(source)
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted, or its script cache was flushed
            return await self.call("EVAL", source, len(keys), *keys, *args)

    async def call(self, *command: Any) -> Any:
        connection = self.connection or await self._connect()
        future = self.loop.create_future()
        self.unsent.append(pack(command))
        self.waiting.append(future)
        if self.writing is not connection:
            self.writing = connection
            self.loop.create_task(self._write(connection))
        return await future

    async def _connect(self) -> Any:
        async with self.lock:
            if self.connection is None:
                connection = self.layer.pool.make_connection()
                await connection.connect()
                await connection.send_command("CLIENT", "SETNAME", self.layer.publisher_name)
                await connection.read_response()
                self.connection = connection
                self.reader = self.loop.create_task(self._read(connection))
            return self.connection

    async def _write(self, connection: Any) -> None:
        try:
            while self.unsent and self.connection is connection:
                chunks, self.unsent = self.unsent, []
                await connection.send_packed_command(chunks, False)
        except Exception as error:
            self._fail(connection, error)
        finally:
            if self.writing is connection:
                self.writing = None

    async def _read(self, connection: Any) -> None:
        try:
            while True:
                try:
                    reply = await connection.read_response()
                except aioredis.ResponseError as error:
                    reply = error
                if not self.waiting:
                    continue
                future = self.waiting.popleft()
                if future.done():
                    continue  # its sender was cancelled
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._fail(connection, error)

    def _fail(self, connection: Any, error: BaseException) -> None:
        if self.connection is not connection:
            return
        self.connection = None
        self.unsent = []
        waiting, self.waiting = self.waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(aioredis.ConnectionError(f"Redis connection lost: {error}"))
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()
        self.loop.create_task(connection.disconnect(nowait=True))

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)
