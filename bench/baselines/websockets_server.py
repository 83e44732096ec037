"""Baseline: the same trivial fan-out protocol as ``bare_channels.py``, served
directly on the ``websockets`` library (asyncio, one process): the Python ceiling.

``python bench/baselines/websockets_server.py --port PORT``; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve

groups: defaultdict[str, set[ServerConnection]] = defaultdict(set)
users: defaultdict[str, set[ServerConnection]] = defaultdict(set)


def _leave(table: defaultdict[str, set[Any]], name: str | None, ws: ServerConnection) -> None:
    if name and name in table:
        table[name].discard(ws)
        if not table[name]:
            del table[name]


async def handler(ws: ServerConnection) -> None:
    query = parse_qs(urlsplit(ws.request.path).query)
    user = query.get("user", ["anonymous"])[0]
    room = query.get("group", [None])[0]
    users[user].add(ws)
    if room:
        groups[room].add(ws)
    try:
        async for text in ws:
            data = json.loads(text)
            if "g" in data:
                broadcast(groups.get(data["g"], ()), text)
            elif "u" in data:
                broadcast(users.get(data["u"], ()), text)
            elif "join" in data:
                _leave(groups, room, ws)
                room = data["join"]
                if room:
                    groups[room].add(ws)
                await ws.send(json.dumps({"ok": data.get("id")}))
    finally:
        _leave(users, user, ws)
        _leave(groups, room, ws)


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, host, port, compression=None, max_queue=None, ping_interval=None):
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
