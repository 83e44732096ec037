"""The load generator: one process of asyncio WebSocket clients (and, for the
listing scenario, a keep-alive HTTP client), driven by a JSON spec.

``python bench/loadgen.py SPEC.json`` prints one JSON object with the results.
Every wait is bounded, so a run always ends.

The WebSocket client is a minimal RFC 6455 client on ``asyncio.Protocol``: the
``websockets`` client costs several times more CPU per frame, and on a 2-core
machine the load generator would otherwise bound what it measures. It sends
masked text frames (zero mask key) and reads unmasked, unfragmented-or-fragmented
text frames, answering pings.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

Handler = Callable[[Any], None]
perf = time.perf_counter


class WSProtocol(asyncio.Protocol):
    def __init__(self, on_text: Callable[[bytes], None]) -> None:
        self.on_text = on_text
        self.buf = bytearray()
        self.fragments: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.handshaken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshaken.done():
            self.handshaken.set_exception(ConnectionError("connection lost in handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.handshaken.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            status = head.split(b" ", 2)[1]
            if status != b"101":
                self.handshaken.set_exception(ConnectionError(f"handshake status {status!r}"))
                assert self.transport is not None
                self.transport.close()
                return
            self.handshaken.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf = self.buf
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):
                if not b0 & 0x80:
                    self.fragments.append(payload)
                    continue
                if self.fragments:
                    payload = b"".join(self.fragments) + payload
                    self.fragments.clear()
                self.on_text(payload)
            elif opcode == 9:
                self._send(0xA, payload)
            elif opcode == 8:
                self._send(0x8, payload[:2])
                assert self.transport is not None
                self.transport.close()
        del buf[:pos]

    def _send(self, opcode: int, data: bytes) -> None:
        length = len(data)
        if length < 126:
            head = bytes((0x80 | opcode, 0x80 | length))
        elif length < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
        assert self.transport is not None
        # A zero mask key: masking is then the identity (valid, if not for browsers).
        self.transport.write(head + b"\0\0\0\0" + data)

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send(0x8, (1000).to_bytes(2, "big"))


class Client:
    """One socket speaking the app's protocol ("app") or the baselines' ("bare")."""

    def __init__(self, kind: str, stats: dict[str, int]) -> None:
        self.kind = kind
        self.stats = stats
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.next_id = 0
        self.on_content: Handler = lambda content: None
        self.on_notice: Handler = lambda frame: None
        self.protocol: WSProtocol | None = None

    async def connect(self, host: str, port: int, path: str) -> None:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: WSProtocol(self._text), host, port)
        self.protocol = protocol
        key = base64.b64encode(os.urandom(16)).decode()
        protocol.transport.write(  # type: ignore[union-attr]
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await asyncio.wait_for(protocol.handshaken, 30)

    def _text(self, payload: bytes) -> None:
        self.stats["frames"] += 1
        frame = json.loads(payload)
        if self.kind == "app":
            if "#ack" in frame:
                self._resolve(frame["#ack"], None)
            elif "#message" in frame:
                self.on_content(frame["#message"])
            elif "#private" in frame:
                self.on_content(frame["#private"])
            elif "#error" in frame:
                self.stats["errors"] += 1
                if self.stats["errors"] <= 3:
                    print("server error:", frame, file=sys.stderr)
                self._resolve(frame.get("#id"), RuntimeError(frame["#error"]))
            else:
                self.stats["notices"] += 1
                self.on_notice(frame)
        elif "ok" in frame:
            self._resolve(frame["ok"], None)
        else:
            self.on_content(frame["c"])

    def _resolve(self, frame_id: Any, error: Exception | None) -> None:
        future = self.pending.pop(frame_id, None)
        if future is not None and not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def send(self, frame: dict[str, Any]) -> None:
        assert self.protocol is not None
        self.protocol.send_text(json.dumps(frame, separators=(",", ":")))

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    async def join(self, group: str | None) -> None:
        frame_id = self._id()
        future = asyncio.get_running_loop().create_future()
        self.pending[frame_id] = future
        if self.kind == "app":
            self.send({"action": "joinRoom", "rid": group, "id": frame_id})
        else:
            self.send({"join": group, "id": frame_id})
        await asyncio.wait_for(future, 30)

    def broadcast(self, group: str, content: Any) -> None:
        if self.kind == "app":
            self.send({"action": "broadcast", "rid": group, "content": content, "id": self._id()})
        else:
            self.send({"g": group, "c": content})

    def private(self, user_id: str, content: Any) -> None:
        if self.kind == "app":
            self.send(
                {"action": "sendMessage", "uid": user_id, "content": content, "id": self._id()}
            )
        else:
            self.send({"u": user_id, "c": content})

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.close()


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.50) * 1000, 3), "p99_ms": round(pick(0.99) * 1000, 3)}


class Run:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.kind = spec["proto"]
        self.host = spec.get("host", "127.0.0.1")
        self.ports: list[int] = spec["ports"]
        self.path: str = spec["path"]
        self.users: list[dict[str, str]] = spec.get("users", [])
        self.stats = {"frames": 0, "errors": 0, "notices": 0}
        self.clients: list[Client] = []

    def url(self, index: int, group: str | None = None) -> tuple[int, str, str]:
        """Port, path and user_id of client ``index`` (users are reused round-robin)."""
        port = self.ports[index % len(self.ports)]
        if self.kind == "app":
            user = self.users[index % len(self.users)]
            return port, f"{self.path}?token={user['token']}", user["user_id"]
        user_id = f"b{index}"
        query = f"?user={user_id}" + (f"&group={group}" if group else "")
        return port, self.path + query, user_id

    async def open(self, indices: list[int], group: str | None = None) -> list[tuple[Client, str]]:
        limit = asyncio.Semaphore(50)

        async def one(index: int) -> tuple[Client, str]:
            port, path, user_id = self.url(index, group)
            client = Client(self.kind, self.stats)
            async with limit:
                await client.connect(self.host, port, path)
            self.clients.append(client)
            return client, user_id

        return list(await asyncio.gather(*(one(i) for i in indices)))

    async def quiet(self, period: float = 0.5, limit: float = 120) -> None:
        """Wait until no frame has arrived for ``period`` seconds."""
        deadline = perf() + limit
        last = -1
        while perf() < deadline:
            if self.stats["frames"] == last:
                return
            last = self.stats["frames"]
            await asyncio.sleep(period)

    async def close_all(self) -> None:
        for client in self.clients:
            client.close()
        waits = [c.protocol.closed for c in self.clients if c.protocol is not None]
        if waits:
            await asyncio.wait(waits, timeout=10)

    # Scenarios.

    async def fanout(self) -> dict[str, Any]:
        n, m, window = self.spec["n"], self.spec["messages"], self.spec.get("window", 10)
        bare_group = "fan" if self.kind == "bare" else None
        # Senders are not receivers; with several, each keeps ``window`` in flight.
        count = self.spec.get("senders", 1)
        senders = [c for c, _ in await self.open(list(range(-count, 0)), bare_group)]
        receivers = await self.open(list(range(1, n + 1)), bare_group)
        t_setup = perf()
        if self.kind == "app":
            for sender in senders:
                await sender.join("fan")
            limit = asyncio.Semaphore(20)

            async def join(client: Client) -> None:
                async with limit:
                    await client.join("fan")

            await asyncio.gather(*(join(c) for c, _ in receivers))
        await self.quiet()
        setup = perf() - t_setup
        if self.spec.get("ready_file"):  # lets a profiler start after the set-up
            open(self.spec["ready_file"], "w").close()  # noqa: ASYNC230 - once, tiny
        # Message k of sender j is number j * m + k.
        counts = [0] * (m * count)
        latencies: list[float] = []
        lows = [j * m for j in range(count)]
        state = {"last": 0.0}
        progress = [asyncio.Event() for _ in range(count)]

        def on_content(content: Any) -> None:
            now = perf()
            seq = content["s"]
            latencies.append(now - content["t"])
            counts[seq] += 1
            state["last"] = now
            j = seq // m
            if counts[seq] == n and seq == lows[j]:
                while lows[j] < (j + 1) * m and counts[lows[j]] >= n:
                    lows[j] += 1
                progress[j].set()

        for client, _ in receivers:
            client.on_content = on_content
        for client in senders:
            client.on_content = lambda content: None
        pids: list[int] = self.spec.get("pids", [])
        cpu_before = [cpu_seconds(pid) for pid in pids]
        start = perf()

        async def pump(j: int) -> None:
            for seq in range(j * m, (j + 1) * m):
                while seq - lows[j] >= window:
                    progress[j].clear()
                    try:
                        await asyncio.wait_for(progress[j].wait(), 2)
                    except TimeoutError:
                        lows[j] += 1  # give up on the oldest: counted as lost below
                senders[j].broadcast("fan", {"s": seq, "t": perf()})

        await asyncio.gather(*(pump(j) for j in range(count)))
        await self._drain(lambda: sum(counts) >= n * m * count, state)
        elapsed = max(state["last"], start + 1e-9) - start
        cpu = [round(cpu_seconds(pid) - b, 2) for pid, b in zip(pids, cpu_before, strict=True)]
        delivered = sum(counts)
        result = {
            "n": n,
            "senders": count,
            "messages": m * count,
            "setup_s": round(setup, 2),
            "deliveries": delivered,
            "deliveries_per_s": round(delivered / elapsed, 1),
            "lost": n * m * count - delivered,
            **percentiles(latencies),
        }
        if pids and delivered:
            # Each process delivers to its share of the receivers (round robin).
            shares = [len(range(i, n + 1, len(self.ports))) - (i == 0) for i in range(len(pids))]
            result["server_cpu_s"] = cpu
            result["cpu_s_per_1000"] = [
                round(c / (delivered * share / n / 1000), 4) if share else None
                for c, share in zip(cpu, shares, strict=True)
            ]
        return result

    async def _drain(self, done: Callable[[], bool], state: dict[str, Any]) -> None:
        """Wait for the last deliveries: until ``done`` or 3 s without progress."""
        last_frames, idle_since = -1, perf()
        while not done():
            await asyncio.sleep(0.05)
            if self.stats["frames"] != last_frames:
                last_frames, idle_since = self.stats["frames"], perf()
            elif perf() - idle_since > 3:
                break

    async def private(self) -> dict[str, Any]:
        pairs, m, window = self.spec["pairs"], self.spec["messages"], self.spec.get("window", 5)
        # Sender i and receiver i sit on different server processes when there are two.
        senders = await self.open([2 * i for i in range(pairs)])
        receivers = await self.open([2 * i + 1 for i in range(pairs)])
        latencies: list[float] = []
        received = [0] * pairs
        events = [asyncio.Event() for _ in range(pairs)]
        state = {"last": 0.0}

        def handler(pair: int) -> Handler:
            def on_content(content: Any) -> None:
                now = perf()
                latencies.append(now - content["t"])
                received[pair] += 1
                state["last"] = now
                events[pair].set()

            return on_content

        for pair, (client, _) in enumerate(receivers):
            client.on_content = handler(pair)

        async def pump(pair: int) -> None:
            sender, target = senders[pair][0], receivers[pair][1]
            for seq in range(m):
                while seq - received[pair] >= window:
                    events[pair].clear()
                    try:
                        await asyncio.wait_for(events[pair].wait(), 2)
                    except TimeoutError:
                        return
                sender.private(target, {"s": seq, "t": perf()})

        start = perf()
        await asyncio.gather(*(pump(p) for p in range(pairs)))
        await self._drain(lambda: sum(received) >= pairs * m, state)
        elapsed = max(state["last"], start + 1e-9) - start
        delivered = sum(received)
        return {
            "pairs": pairs,
            "messages": m,
            "deliveries": delivered,
            "deliveries_per_s": round(delivered / elapsed, 1),
            "lost": pairs * m - delivered,
            **percentiles(latencies),
        }

    async def churn(self) -> dict[str, Any]:
        count, groups, duration = self.spec["clients"], self.spec["groups"], self.spec["seconds"]
        # Two connections per user, so that distinct-user counting is exercised.
        if self.kind == "app":
            self.users = self.users[: max(1, count // 2)]
        clients = await self.open(list(range(count)))
        latencies: list[float] = []
        ops = [0]
        failures = [0]
        deadline = perf() + duration

        async def loop(index: int, client: Client) -> None:
            step = index
            while perf() < deadline:
                a, b = f"churn{step % groups}", f"churn{(step + 1) % groups}"
                for target in (a, b, None):
                    began = perf()
                    try:
                        await client.join(target)
                    except (RuntimeError, TimeoutError):
                        failures[0] += 1
                        continue
                    latencies.append(perf() - began)
                    ops[0] += 1
                step += 1
            # End in a group for half of the clients, so the check sees members.
            if index % 2:
                await client.join(f"churn{index % groups}")

        start = perf()
        cpu0 = total_cpu_seconds(self.spec.get("pids", []))
        await asyncio.gather(*(loop(i, c) for i, (c, _) in enumerate(clients)))
        elapsed = perf() - start
        cpu = server_cpu(self.spec, cpu0, ops[0])
        await self.quiet(0.3, 10)
        result: dict[str, Any] = {
            "clients": count,
            "groups": groups,
            "ops": ops[0],
            "ops_per_s": round(ops[0] / elapsed, 1),
            "failures": failures[0],
            **percentiles(latencies),
            **cpu,
        }
        if self.spec.get("check_cmd"):
            process = await asyncio.create_subprocess_exec(
                *self.spec["check_cmd"], stdout=asyncio.subprocess.PIPE, env=self.spec["check_env"]
            )
            out, _ = await asyncio.wait_for(process.communicate(), 120)
            result["presence_check"] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    async def storm(self) -> dict[str, Any]:
        """Every client connects and joins its group at once, as after a restart."""
        count, groups = self.spec["clients"], self.spec["groups"]
        # Every handshake at once unless the run caps how many are in flight.
        in_flight = asyncio.Semaphore(self.spec.get("in_flight") or count)
        handshakes: list[float] = []
        joins: list[float] = []
        failures = [0]
        reasons: Counter[str] = Counter()  # why each failed client failed
        start = perf()
        last = [start]

        async def one(index: int) -> None:
            port, path, _ = self.url(index)
            client = Client(self.kind, self.stats)
            async with in_flight:
                began = perf()
                try:
                    await client.connect(self.host, port, path)
                except (OSError, TimeoutError) as error:
                    failures[0] += 1
                    reasons[failure_reason("handshake", error)] += 1
                    return
                handshakes.append(perf() - began)
            self.clients.append(client)
            # A user's connections spread over several groups.
            user = index % max(1, len(self.users))
            group = f"storm{(user + index // max(1, len(self.users))) % groups}"
            began = perf()
            try:
                await client.join(group)
            except (RuntimeError, TimeoutError) as error:
                failures[0] += 1
                reasons[failure_reason("join", error)] += 1
                return
            now = perf()
            joins.append(now - began)
            last[0] = max(last[0], now)

        cpu0 = total_cpu_seconds(self.spec.get("pids", []))
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = last[0] - start
        cpu = server_cpu(self.spec, cpu0, count)  # per client: handshake and join
        hs, jn = percentiles(handshakes), percentiles(joins)
        result: dict[str, Any] = {
            "clients": count,
            "groups": groups,
            "processes": len(self.ports),
            "joined": len(joins),
            "failures": failures[0],
            "failure_reasons": dict(reasons),
            "all_joined_s": round(elapsed, 3),
            "handshake_p50_ms": hs["p50_ms"],
            "handshake_p99_ms": hs["p99_ms"],
            "join_p50_ms": jn["p50_ms"],
            "join_p99_ms": jn["p99_ms"],
            **cpu,
        }
        if self.spec.get("check_cmd"):
            process = await asyncio.create_subprocess_exec(
                *self.spec["check_cmd"], stdout=asyncio.subprocess.PIPE, env=self.spec["check_env"]
            )
            out, _ = await asyncio.wait_for(process.communicate(), 120)
            check = json.loads(out.decode().strip().splitlines()[-1])
            check["all_connected"] = check["connections"] == count
            result["presence_check"] = check
        return result

    async def reap(self) -> dict[str, Any]:
        """Clients on the first process, one observer per group on the second; the
        first is killed (SIGKILL): how long until the second has reaped it and every
        observer has the notices of its group."""
        count, groups = self.spec["clients"], self.spec["groups"]
        victim, survivor = self.ports
        observers: list[Client] = []
        for group in range(groups):
            client = Client(self.kind, self.stats)
            await client.connect(self.host, survivor, f"{self.path}?token={self.users[0]['token']}")
            await client.join(f"reap{group}")
            observers.append(client)
            self.clients.append(client)
        in_flight = asyncio.Semaphore(50)
        users = self.users[1:] or self.users

        async def one(index: int) -> None:
            # The set-up, not the measure: a handshake the loaded server dropped is retried.
            for attempt in range(5):
                client = Client(self.kind, self.stats)
                async with in_flight:
                    try:
                        await client.connect(
                            self.host,
                            victim,
                            f"{self.path}?token={users[index % len(users)]['token']}",
                        )
                    except (OSError, TimeoutError):
                        if attempt == 4:
                            raise
                        continue
                    self.clients.append(client)
                    await client.join(f"reap{index % groups}")
                    return

        await asyncio.gather(*(one(i) for i in range(count)))
        notices = [0]
        last = [0.0]
        done = asyncio.Event()

        def on_notice(frame: Any) -> None:
            if frame.get("#code") == "USER_DISCONNECTED":
                notices[0] += 1
                last[0] = perf()
                if notices[0] >= count:
                    done.set()

        for observer in observers:
            observer.on_notice = on_notice
        await asyncio.sleep(1.0)  # let the joins' own notices arrive first
        killed = perf()
        os.kill(self.spec["pids"][0], 9)
        bound = self.spec["bound"]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), bound + 30)
        result: dict[str, Any] = {
            "clients": count,
            "groups": groups,
            "notices": notices[0],
            "all_notices_s": round(last[0] - killed, 3) if notices[0] else None,
            "bound_s": bound,
        }
        if self.spec.get("check_cmd"):
            process = await asyncio.create_subprocess_exec(
                *self.spec["check_cmd"], stdout=asyncio.subprocess.PIPE, env=self.spec["check_env"]
            )
            out, _ = await asyncio.wait_for(process.communicate(), 120)
            check = json.loads(out.decode().strip().splitlines()[-1])
            check["all_reaped"] = check["connections"] == groups
            result["presence_check"] = check
        return result

    async def paced(self) -> dict[str, Any]:
        """Joins at a fixed total rate, spread over the clients: ack latency under
        ordinary churn rather than at saturation."""
        count, groups = self.spec["clients"], self.spec["groups"]
        rate, duration = self.spec["rate"], self.spec["seconds"]
        if self.kind == "app":
            self.users = self.users[: max(1, count // 2)]
        clients = [c for c, _ in await self.open(list(range(count)))]
        latencies: list[float] = []
        failures = [0]
        tasks: set[asyncio.Task[None]] = set()
        busy: set[int] = set()

        async def join(index: int, group: str | None) -> None:
            busy.add(index)
            began = perf()
            try:
                await clients[index].join(group)
                latencies.append(perf() - began)
            except (RuntimeError, TimeoutError):
                failures[0] += 1
            finally:
                busy.discard(index)

        start = perf()
        cpu0 = total_cpu_seconds(self.spec.get("pids", []))
        total = int(rate * duration)
        skipped = 0
        for step in range(total):
            delay = start + step / rate - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            index = step % count
            if index in busy:  # its previous join is still unanswered
                skipped += 1
                continue
            group = None if (step // count) % 3 == 2 else f"paced{(step + step // count) % groups}"
            task = asyncio.get_running_loop().create_task(join(index, group))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        elapsed = perf() - start
        return {
            "clients": count,
            "rate": rate,
            "joins": len(latencies),
            "joins_per_s": round(len(latencies) / elapsed, 1),
            "skipped": skipped,
            "failures": failures[0],
            **percentiles(latencies),
            **server_cpu(self.spec, cpu0, len(latencies)),
        }

    async def memory(self) -> dict[str, Any]:
        count, warm = self.spec["connections"], self.spec.get("warm", 20)
        pids: list[int] = self.spec["pids"]
        await self.open(list(range(warm)))
        await asyncio.sleep(1.0)
        before = sum(rss_kib(pid) for pid in pids)
        await self.open(list(range(warm, count)))
        await asyncio.sleep(2.0)
        after = sum(rss_kib(pid) for pid in pids)
        return {
            "connections": count,
            "rss_before_mib": round(before / 1024, 1),
            "rss_after_mib": round(after / 1024, 1),
            "kib_per_connection": round((after - before) / (count - warm), 2),
        }


def failure_reason(step: str, error: BaseException) -> str:
    """A short label for why a client's handshake or join failed: refused by the
    server (an HTTP status, an error frame), dropped by it, or not answered within
    the load generator's own 30 s. A handshake not completed within daphne's
    --websocket_connect_timeout (5 s by default) ends either way: daphne answers it
    403, or autobahn's opening-handshake timeout (the same 5 s) drops it."""
    if isinstance(error, TimeoutError):
        return f"{step}: no answer in 30 s"
    if isinstance(error, RuntimeError):
        return f"{step}: error frame {error}"
    if isinstance(error, ConnectionError) and error.args and isinstance(error.args[0], str):
        return f"{step}: {error.args[0]}"  # the WSProtocol's own: status, lost
    return f"{step}: {type(error).__name__}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def total_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (0 for one that is gone)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def server_cpu(spec: dict[str, Any], began: float, ops: int) -> dict[str, Any]:
    """The servers' CPU time since ``began`` (total_cpu_seconds), per operation: a figure
    that other load on the machine disturbs less than a rate does."""
    if not spec.get("pids"):
        return {}
    used = total_cpu_seconds(spec["pids"]) - began
    return {
        "server_cpu_s": round(used, 2),
        "server_cpu_ms_per_op": round(1000 * used / ops, 3) if ops else None,
    }


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def listing(spec: dict[str, Any]) -> dict[str, Any]:
    """Sequential keep-alive requests: first page, and page 50 reached by startKeys."""
    conn = http.client.HTTPConnection(spec.get("host", "127.0.0.1"), spec["ports"][0], timeout=30)
    headers = {"Authorization": f"Bearer {spec['token']}", "Content-Type": "application/json"}

    def post(path: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        data = json.dumps(body)
        began = perf()
        conn.request("POST", path, data, headers)
        response = conn.getresponse()
        answer = response.read()
        took = perf() - began
        if response.status != 200:
            raise RuntimeError(f"{path} {body}: {response.status} {answer[:200]!r}")
        return took, json.loads(answer)

    repeats, depth = spec["repeats"], spec.get("depth", 50)
    results = []
    for case in spec["cases"]:
        path, body = case["path"], case["body"]
        post(path, body)  # warm
        first = [post(path, body)[0] for _ in range(repeats)]
        row: dict[str, Any] = {"case": case["name"], "first": percentiles(first)}
        key, pages = None, 1
        answer: dict[str, Any] = {"endOfList": False}
        while pages < depth:
            _, answer = post(path, {**body, "startKey": key} if key else body)
            if answer["endOfList"]:
                break
            key, pages = answer["startKey"], pages + 1
        if pages == depth:
            deep = [post(path, {**body, "startKey": key})[0] for _ in range(repeats)]
            row[f"page{depth}"] = percentiles(deep)
        else:
            row[f"page{depth}"] = None  # fewer rows than that many pages
        results.append(row)
    conn.close()
    return {"cases": results}


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    run = Run(spec)
    try:
        return await asyncio.wait_for(getattr(run, spec["scenario"])(), spec.get("timeout", 300))
    finally:
        await run.close_all()
        run_stats = dict(run.stats)
        spec["_stats"] = run_stats


def main() -> None:
    with open(sys.argv[1]) as file:
        spec = json.load(file)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cpu0, wall0 = time.process_time(), perf()
    if spec["scenario"] == "listing":
        result = listing(spec)
    else:
        result = asyncio.run(main_async(spec))
        result["errors"] = spec["_stats"]["errors"]
    wall = perf() - wall0
    result["loadgen_cpu_share"] = round((time.process_time() - cpu0) / wall, 2) if wall else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
