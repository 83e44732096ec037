"""The realtime WebSocket consumer: docs/protocol.md sections 2-6 and 10.

Parsing and validation live in ``protocol.py``, database work in ``presence.py``;
this class keeps the connection's state and dispatches. Channel-layer events are
the app's own types (``skapi.frame``, ``skapi.close``), carrying server frames
already encoded, so a broadcast is encoded once, not once per receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from typing import Any

from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import ChannelFull, StopConsumer
from channels.layers import get_channel_layer

from skapi_channels import metrics, presence, signals
from skapi_channels.addressing import group_address, user_address
from skapi_channels.client_address import client_address
from skapi_channels.conf import conf
from skapi_channels.handshake import login_of, origin_allowed
from skapi_channels.history import (
    EPOCH,
    OFFSET,
    Cursor,
    Slice,
    enabled,
    replayed,
    retention,
    with_offset,
)
from skapi_channels.hooks import ask
from skapi_channels.layer_abilities import ReportsMissed, has
from skapi_channels.limits import FloodMeter, TokenBucket, limiter
from skapi_channels.protocol import (
    CLOSE_BY_SERVER,
    CLOSE_FLOODING,
    CLOSE_SERVER_RESTART,
    CLOSE_TOO_FAR_BEHIND,
    EVENT_DRAINED,
    INVALID_PARAMETER,
    INVALID_REQUEST,
    MISSED_MESSAGES,
    RATE_LIMITED,
    TOO_LARGE,
    USER_DISCONNECTED,
    USER_JOINED,
    USER_LEFT,
    Frame,
    FrameError,
    ack_frame,
    error_frame,
    frame_event,
    id_of_unparsed,
    message_frame,
    not_joined_sentence,
    not_open_sentence,
    notice_frame,
    parse_frame,
    private_frame,
    rtc_event,
    rtc_frame,
    rtc_gone_event,
    utf8_length_over,
)
from skapi_channels.receive_loop import dispatch_as_they_come
from skapi_channels.revocation import revalidate
from skapi_channels.rtc import Routes
from skapi_channels.runtime import announce_departure, runtime
from skapi_channels.send_buffer import ACCEPT_MARK

logger = logging.getLogger("skapi_channels")



class RealtimeConsumer(AsyncConsumer):
    cid: str | None = None
    user_id: str = ""
    group: str | None = None
    closing = False
    # Where this connection stands in its group's stream and in its user's private
    # stream (None while history is off or the group unknown).
    stream: Cursor | None = None
    private: Cursor | None = None
    keeping = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Groups left whose events may still wait in this channel's queue, with the
        # number of drain markers on their way (see ``leave_layer_group``).
        self.draining: dict[str, int] = {}
        self.rtc_peers = Routes()  # connections this one exchanges call signalling with
        self.revocations: set[asyncio.Task[bool]] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.serve(scope, receive, send)
        finally:
            if self.cid is not None:
                # The consumer ended without its disconnect handler (a crash, the
                # server cancelling it): its rows must not outlive it.
                await self.leave_presence()

    async def serve(self, scope: Any, receive: Any, send: Any) -> None:
        """What Channels' ``AsyncConsumer.__call__`` does, with a receive loop that
        costs less per message (receive_loop.py)."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        sources = [receive]
        takers: list[Any] = [None]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            sources.append(self.channel_receive)
            # Layers that queue in the process (local_layer.py) hand over a burst at once.
            take = getattr(self.channel_layer, "receive_nowait", None)
            takers.append(None if take is None else functools.partial(take, self.channel_name))
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            await dispatch_as_they_come(sources, self.dispatch, takers)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels' dispatch closes stale database connections before every event,
        # a thread hop per delivered message. All database work here runs through
        # database_sync_to_async, which does that itself, so it is skipped.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']!r}")
        await handler(message)

    # Connection lifecycle.

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        # Refused handshakes are counted per address, before any work; a logged-in
        # user's handshakes per user, so neither locks the other out.
        address = client_address(self.scope, conf.TRUSTED_PROXIES)
        refusals = limiter("refused_handshakes", conf.REFUSED_HANDSHAKES_PER_MINUTE)
        if not refusals.available(address):
            logger.warning("Refused a handshake from %s: too many refused handshakes", address)
            return await self.refuse()
        login = None
        if not conf.CHECK_ORIGIN or origin_allowed(self.scope):
            login = await login_of(self.scope)
        if login is None:
            refusals.take(address)
            return await self.refuse()
        user, user_id = login.user, login.user_id
        if not limiter("handshakes", conf.HANDSHAKES_PER_MINUTE).take(user_id):
            logger.warning("Refused a handshake of user %s: over the handshake rate", user_id)
            return await self.refuse()
        try:
            await runtime.ensure_started()
        except Exception:
            logger.exception("Could not register this server process; refusing a handshake")
            return await self.refuse()
        cid = secrets.token_urlsafe(16)
        opened = await presence.aopen_connection(
            cid, self.channel_name, user_id, runtime.id, conf.MAX_CONNECTIONS_PER_USER
        )
        if not opened:
            return await self.refuse()
        self.cid, self.user_id = cid, user_id
        # What revocation.py checks: the login the socket was opened under.
        self.user_pk, self.auth_hash, self.session_key = (
            str(user.pk), login.auth_hash, login.session_key
        )
        self.bucket = TokenBucket(conf.RATE_PER_SECOND, conf.RATE_BURST)
        # docs/protocol.md §6: twice the sustained rate for FLOOD_CLOSE_AFTER seconds closes.
        self.flood = FloodMeter(2 * conf.RATE_PER_SECOND, conf.FLOOD_CLOSE_AFTER)
        self.missed = 0
        if has(self.channel_layer, ReportsMissed):
            self.channel_layer.report_missed_to(self.channel_name)
        await self.channel_layer.group_add(user_address(user_id), self.channel_name)
        self.keeping = enabled(self.channel_layer)
        if self.keeping:
            # Subscribed first: every private frame after this point arrives live.
            kept = await self.channel_layer.history_read(user_address(user_id), last=0)
            self.private = Cursor(kept.epoch, kept.latest)
        runtime.connections.add(self)
        metrics.count("connections_opened")
        await self.base_send({"type": "websocket.accept", ACCEPT_MARK: True})
        await signals.connection_opened.asend(RealtimeConsumer, user_id=user_id, cid=cid)

    async def refuse(self) -> None:
        """Refuse a handshake: the server answers it with HTTP 403."""
        await self.base_send({"type": "websocket.close"})

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        if self.cid is not None:
            await self.leave_presence()
        raise StopConsumer()

    async def leave_presence(self) -> None:
        """Remove this connection from the layer and the tables, and tell its group."""
        cid, self.cid = self.cid, None
        assert cid is not None
        runtime.connections.discard(self)
        # The rows first: whatever the layer raises, presence stays true.
        departure = await presence.aclose_connection(cid)
        try:
            await self.channel_layer.group_discard(user_address(self.user_id), self.channel_name)
            if self.group is not None:
                await self.channel_layer.group_discard(
                    group_address(self.group), self.channel_name
                )
        except Exception:
            # The layer forgets the channel when its group expires.
            logger.exception("Could not remove connection %s from its layer groups", cid)
        if departure is not None:
            if departure.group_name is not None:
                await self.notify(USER_DISCONNECTED, departure.group_name, cid=cid)
            await announce_departure(RealtimeConsumer, departure)
        for channel in self.rtc_peers.channels():
            try:
                await self.channel_layer.send(channel, rtc_gone_event(cid))
            except Exception:  # the peer learns it from the table when its route expires
                logger.debug("Could not tell %s that connection %s closed", channel, cid)

    async def close_from_server(self, code: int) -> None:
        self.closing = True  # frames still arriving are not answered
        await self.base_send({"type": "websocket.close", "code": code})

    # Client frames.

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self.closing:
            return
        text = message.get("text")
        flooding = self.flood.frame()
        if not self.bucket.take():
            frame_id = id_of_unparsed(text) if text else None  # a bounded prefix
            await self.send_error(
                RATE_LIMITED,
                f"Too many frames: at most {conf.RATE_PER_SECOND:g} a second, "
                f"bursts of {conf.RATE_BURST}.",
                frame_id,
            )
            if flooding:
                await self.close_from_server(CLOSE_FLOODING)
            return
        if text is None:
            return await self.send_error(
                INVALID_REQUEST, "Binary frames are not accepted; send JSON text frames."
            )
        if utf8_length_over(text, conf.MAX_FRAME_BYTES):
            frame_id = id_of_unparsed(text)
            return await self.send_error(
                TOO_LARGE, f"Frame is larger than {conf.MAX_FRAME_BYTES} bytes.", frame_id
            )
        try:
            frame = parse_frame(text, conf.MAX_GROUP_NAME_LENGTH, retention()[0])
            await self.ACTIONS[frame.action](self, frame)
        except FrameError as error:
            await self.send_error(error.code, error.message, error.frame_id)

    async def send_message(self, frame: Frame) -> None:
        uid = frame.target or ""
        if not presence.user_known(uid) and not await presence.auser_exists(
            uid, conf.USER_LOOKUP_FUNCTION, conf.USER_CACHE_SECONDS, conf.USER_ID_FUNCTION
        ):
            raise FrameError(INVALID_REQUEST, not_joined_sentence(uid), frame.id)
        refusal = await ask(conf.AUTHORIZE_MESSAGE, self.user_id, uid)
        if refusal is not None:
            raise FrameError(
                INVALID_REQUEST, refusal or f"You may not send messages to user '{uid}'.", frame.id
            )
        text = self.encode(private_frame, frame, self.user_id, self.cid)
        await self.channel_layer.group_send(
            user_address(uid), frame_event(text, uid=uid, keep=self.keeping)
        )
        metrics.count("private_messages")
        if signals.message_sent.receivers:
            await self.announce_message(frame, private=True)
        await self.ack(frame)

    async def broadcast(self, frame: Frame) -> None:
        rid = frame.target or ""
        if rid != self.group:
            raise FrameError(INVALID_REQUEST, not_joined_sentence(rid), frame.id)
        text = self.encode(message_frame, frame, self.user_id, self.cid, rid)
        await self.channel_layer.group_send(
            group_address(rid), frame_event(text, rid=rid, keep=self.keeping)
        )
        metrics.count("group_messages")
        if signals.message_sent.receivers:
            await self.announce_message(frame, private=False)
        await self.ack(frame)

    async def join_room(self, frame: Frame) -> None:
        old, new = self.group, frame.target
        if new != old:
            if new is not None:
                refusal = await ask(conf.AUTHORIZE_JOIN, self.user_id, new)
                if refusal is not None:
                    raise FrameError(
                        INVALID_REQUEST, refusal or f"You may not join the group '{new}'.", frame.id
                    )
            creations = limiter("group_creations", conf.GROUPS_CREATED_PER_MINUTE)
            moved = await presence.amove_connection(
                self.cid, self.user_id, old, new, creations.available(self.user_id)
            )
            if moved is None:
                raise FrameError(
                    RATE_LIMITED,
                    f"You may create at most {conf.GROUPS_CREATED_PER_MINUTE} new groups a "
                    "minute; join an existing group or try again later.",
                    frame.id,
                )
            if moved == presence.GONE:
                # The row is gone: this process was taken for dead and reaped.
                return await self.close_from_server(CLOSE_SERVER_RESTART)
            if moved == presence.CREATED:
                creations.take(self.user_id)
            self.group = new
            self.stream = None
            if old is not None:
                await self.leave_layer_group(old)
                await self.notify(USER_LEFT, old)
            if new is not None:
                await self.channel_layer.group_add(group_address(new), self.channel_name)
                await self.notify(USER_JOINED, new, skip=self.channel_name)
            await self.announce_move(old, new)
        if new is None:
            return await self.ack(frame)
        if not self.keeping:
            return await self.ack(frame, **self.not_recovered(frame))
        self.stream, fields = await self.catch_up(group_address(new), self.stream, frame)
        await self.ack(frame, **fields)

    async def resume(self, frame: Frame) -> None:
        """Replay the private stream after ``since`` (docs/protocol.md §11)."""
        if self.private is None:
            return await self.ack(frame, **self.not_recovered(frame))
        self.private, fields = await self.catch_up(user_address(self.user_id), self.private, frame)
        await self.ack(frame, **fields)

    async def catch_up(
        self, address: str, cursor: Cursor | None, frame: Frame
    ) -> tuple[Cursor, dict[str, Any]]:
        """Replay what ``frame`` asks of the stream at ``address`` (subscribed to
        already: live frames wait in the queue meanwhile, and those the replay
        covered are dropped when they come, by the cursor). Answers the cursor and
        the fields of the ack."""
        layer = self.channel_layer
        fields: dict[str, Any] = {}
        kept: Slice | None = None
        if frame.since is not None:
            offset, epoch = frame.since
            kept = await layer.history_read(address, since=offset)
            fields["#recovered"] = kept.epoch == epoch and kept.complete
            if not fields["#recovered"]:
                # Nothing is sent; the client starts again from where the ack says.
                kept = Slice(kept.epoch, kept.latest) if cursor is None else None
        elif frame.last is not None:
            kept = await layer.history_read(address, last=frame.last)
        elif cursor is None:
            kept = await layer.history_read(address, last=0)
        if kept is not None:
            if cursor is None:
                cursor, frames = Cursor(kept.epoch, kept.latest), kept.frames
            else:
                frames = cursor.replay(kept)
            for offset, text in frames:
                await self.send_text(replayed(text, offset))
        assert cursor is not None
        fields["#epoch"], fields["#offset"] = cursor.epoch, cursor.boundary
        return cursor, fields

    @staticmethod
    def not_recovered(frame: Frame) -> dict[str, Any]:
        return {"#recovered": False} if frame.since is not None else {}

    async def leave_layer_group(self, group: str) -> None:
        """Stop receiving ``group``, but still deliver what it sent while this
        connection was a member (owed, docs/protocol.md §10) and waits in the queue: a
        marker sent to ourselves after the discard tells where that ends."""
        await self.channel_layer.group_discard(group_address(group), self.channel_name)
        try:
            await self.channel_layer.send(
                self.channel_name, {"type": EVENT_DRAINED, "rid": group}
            )
        except ChannelFull:
            return  # nothing more can be queued for us either
        self.draining[group] = self.draining.get(group, 0) + 1

    async def keep_alive(self, frame: Frame) -> None:
        await self.ack(frame)

    async def rtc(self, frame: Frame) -> None:
        """Relay call signalling to one connection, wherever it is (docs/protocol.md §12)."""
        cid = frame.target or ""
        route = self.rtc_peers.get(cid)
        if route is None:
            found = await presence.aconnection_route(cid)
            if found is None:
                raise FrameError(INVALID_REQUEST, not_open_sentence(cid), frame.id)
            route = self.rtc_peers.learn(cid, *found)
        refusal = await ask(conf.AUTHORIZE_MESSAGE, self.user_id, route.user_id)
        if refusal is not None:
            raise FrameError(
                INVALID_REQUEST,
                refusal or f"You may not send messages to user '{route.user_id}'.",
                frame.id,
            )
        text = self.encode(rtc_frame, frame, self.user_id, self.cid)
        event = rtc_event(text, cid, self.cid or "", self.channel_name, self.user_id)
        try:
            await self.channel_layer.send(route.channel, event)
        except ChannelFull:
            raise FrameError(
                INVALID_REQUEST,
                f"Connection 'cid:{cid}' is not reading; the frame was not delivered.",
                frame.id,
            ) from None
        await self.ack(frame)

    ACTIONS = {
        "sendMessage": send_message,
        "broadcast": broadcast,
        "joinRoom": join_room,
        "keepAlive": keep_alive,
        "rtc": rtc,
        "resume": resume,
    }

    # Channel-layer events.

    async def skapi_frame(self, event: dict[str, Any]) -> None:
        # Only events of this connection's group (or of one it left, still queued)
        # and user: the names guard against layer-address collisions.
        if "rid" in event and event["rid"] != self.group and event["rid"] not in self.draining:
            return
        if "uid" in event and event["uid"] != self.user_id:
            return
        if event.get("skip") == self.channel_name:
            return
        text = event["text"]
        offset = event.get(OFFSET)
        if offset is not None:
            # A kept message: new to this connection only past its cursor.
            if "uid" in event:
                cursor = self.private
            else:
                cursor = self.stream if event.get("rid") == self.group else None
            if cursor is not None and not cursor.admit(offset, event.get(EPOCH)):
                return
            text = with_offset(text, offset)
        await self.send_text(text)

    async def skapi_rtc(self, event: dict[str, Any]) -> None:
        if self.cid is None or event["cid"] != self.cid:
            return  # meant for a connection that has closed
        self.rtc_peers.learn(event["from"], event["reply_to"], event["user_id"])
        await self.send_text(event["text"])

    async def skapi_rtc_gone(self, event: dict[str, Any]) -> None:
        self.rtc_peers.forget(event["cid"])

    async def skapi_drained(self, event: dict[str, Any]) -> None:
        group = event["rid"]
        left = self.draining.get(group, 0) - 1
        if left > 0:
            self.draining[group] = left
        else:
            self.draining.pop(group, None)

    async def skapi_missed(self, event: dict[str, Any]) -> None:
        """The layer could not deliver ``count`` messages: this receiver is too slow."""
        count = int(event["count"])
        self.missed += count
        await self.send_text(
            error_frame(
                MISSED_MESSAGES,
                f"{count} message{'s' if count != 1 else ''} could not be delivered: "
                "this connection fell behind.",
                None,
                **{"#missed": count},
            )
        )
        if self.missed >= conf.MISSED_CLOSE_AFTER:
            await self.close_from_server(CLOSE_TOO_FAR_BEHIND)

    async def skapi_revoke(self, event: dict[str, Any]) -> None:
        """The login of this connection's user changed (revocation.py)."""
        if event.get("uid") != self.user_id or self.closing:
            return
        # Off the consumer's loop: a password change waits for the session to settle.
        task = asyncio.get_running_loop().create_task(revalidate(self, event.get("hash")))
        self.revocations.add(task)
        task.add_done_callback(self.revocations.discard)

    async def skapi_close(self, event: dict[str, Any]) -> None:
        await self.close_from_server(int(event.get("code", CLOSE_BY_SERVER)))

    # Helpers.

    async def notify(
        self, code: str, group: str, skip: str | None = None, cid: str | None = None
    ) -> None:
        text = notice_frame(code, self.user_id, cid or self.cid or "", group)
        await self.channel_layer.group_send(
            group_address(group), frame_event(text, rid=group, skip=skip)
        )

    async def announce_move(self, old: str | None, new: str | None) -> None:
        if old is not None:
            await signals.group_left.asend(
                RealtimeConsumer,
                user_id=self.user_id,
                cid=self.cid,
                group=old,
                reason="switched" if new is not None else "left",
            )
        if new is not None:
            await signals.group_joined.asend(
                RealtimeConsumer, user_id=self.user_id, cid=self.cid, group=new
            )

    async def announce_message(self, frame: Frame, private: bool) -> None:
        await signals.message_sent.asend(
            RealtimeConsumer,
            user_id=self.user_id,
            cid=self.cid,
            recipient=frame.target,
            private=private,
            content=frame.content,
        )

    @staticmethod
    def encode(build: Any, frame: Frame, *args: Any) -> str:
        try:
            return build(frame.content, *args)
        except RecursionError:
            raise FrameError(INVALID_PARAMETER, "content is nested too deeply.", frame.id) from None

    async def ack(self, frame: Frame, **fields: Any) -> None:
        if frame.id is not None:
            await self.send_text(ack_frame(frame.id, **fields))

    async def send_error(self, code: str, sentence: str, frame_id: Any = None) -> None:
        await self.send_text(error_frame(code, sentence, frame_id))

    async def send_text(self, text: str) -> None:
        try:
            await self.base_send({"type": "websocket.send", "text": text})
        except (RuntimeError, OSError):
            # The socket closed under us (servers raise on a send after close);
            # its disconnect event follows and cleans up.
            logger.debug("Dropped a frame for closed connection %s", self.cid)
        except Exception:
            logger.exception("Could not send a frame to connection %s", self.cid)
