"""The hot path touches no database: counted on every thread."""

from __future__ import annotations


async def test_broadcast_and_keepalive_run_no_sql(users, connect, db_queries):
    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("Room")
    await b.join("Room")
    await a.receive()
    db_queries.clear()
    for number in range(5):
        await a.send({"action": "broadcast", "rid": "Room", "content": number, "id": number})
        await a.receive()
        await a.receive()
        await b.receive()
    assert await a.request({"action": "keepAlive", "id": "k"}) == {"#ack": "k"}
    await a.send({"action": "keepAlive"})
    await a.nothing()
    assert db_queries == []


async def test_send_message_runs_one_query_then_none(users, connect, db_queries):
    a, b = await connect(users.alice), await connect(users.bob)
    db_queries.clear()
    uid = str(users.bob.pk)
    await a.send({"action": "sendMessage", "uid": uid, "content": "x", "id": 1})
    assert await a.receive() == {"#ack": 1}
    await b.receive()
    assert len(db_queries) == 1
    for number in range(2, 6):
        await a.send({"action": "sendMessage", "uid": uid, "content": "x", "id": number})
        assert await a.receive() == {"#ack": number}
        await b.receive()
    assert len(db_queries) == 1


async def test_refused_frames_run_no_sql(users, connect, db_queries):
    a = await connect(users.alice)
    db_queries.clear()
    for text in ("nope", "[]", '{"action": "broadcast", "rid": "X", "content": 1}'):
        await a.send(text)
        await a.receive()
    assert db_queries == []
