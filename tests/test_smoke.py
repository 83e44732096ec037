import pytest

pytestmark = pytest.mark.asyncio


async def test_join_and_broadcast(users, connect, presence_is_true):
    alice, bob = users.alice, users.bob
    a = await connect(alice)
    b = await connect(bob)
    await a.join("room")
    await b.join("room", 2)
    notice = await a.receive()
    assert notice["#code"] == "USER_JOINED", notice
    await b.send({"action": "broadcast", "rid": "room", "content": "hi", "id": 3})
    print(await a.receive(), await b.receive(), await b.receive())
