"""What the scale-out layer (``redis_fanout``) runs in Redis: its Lua scripts, and
the few lines that write a command in the Redis protocol."""

from __future__ import annotations

import functools
import hashlib
from typing import Any

# KEYS: the group's counters (a hash: "o" the offset of its kept messages,
# docs/protocol.md §11, "n" the number of everything else it published, un-kept
# messages and gap markers, and "e" the epoch), its Redis channel, and its history
# (a list of "<offset>:<time>:<payload>", trimmed in batches: readers take its last
# ``size`` entries).
# ARGV: payload (empty: a gap marker, no message), counter expiry (s), increment (1,
# or the number of messages a gap marker stands for), a new epoch (used when the
# hash starts), history size (0: not kept), history expiry (s), the time (s), "1" to
# refresh the counter's expiry, "1" to refresh the history's, the trim slack.
# A kept message increments only "o" and is published as "o<offset>/<epoch>:<payload>",
# anything else only "n", published as "n<seq>:<payload>". Expiries are set when a
# key is created and otherwise only when the caller asks (it refreshes each key
# about once a minute). Returns the counter's new value.
PUBLISH_LUA = """
local size = tonumber(ARGV[5])
local field = 'n'
if size > 0 and ARGV[1] ~= '' then
    field = 'o'
end
local increment = tonumber(ARGV[3])
local seq = redis.call('HINCRBY', KEYS[1], field, increment)
if seq == increment then
    redis.call('HSETNX', KEYS[1], 'e', ARGV[4])
    redis.call('EXPIRE', KEYS[1], ARGV[2])
elseif ARGV[8] == '1' then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if field == 'n' then
    redis.call('PUBLISH', KEYS[2], 'n' .. seq .. ':' .. ARGV[1])
    return seq
end
if seq == 1 then
    redis.call('DEL', KEYS[3])  -- kept under an epoch that is gone
end
local length = redis.call('RPUSH', KEYS[3], seq .. ':' .. ARGV[7] .. ':' .. ARGV[1])
if length > size + tonumber(ARGV[10]) then
    redis.call('LTRIM', KEYS[3], -size, -1)
end
if length == 1 or ARGV[9] == '1' then
    redis.call('EXPIRE', KEYS[3], ARGV[6])
end
local epoch = redis.call('HGET', KEYS[1], 'e')
redis.call('PUBLISH', KEYS[2], 'o' .. seq .. '/' .. epoch .. ':' .. ARGV[1])
return seq
"""

# Where a stream stands, and what it keeps: {epoch, latest offset, history (its last
# entries, as many as asked)}. Reading starts the hash (its epoch) when there is none,
# so the next message keeps it.
# KEYS: the counter, the history. ARGV: a new epoch, counter expiry (s), the most
# entries to answer (the history size, or the client's ``last``), and the offset
# after which they are wanted (-1: any). A join with neither ``since`` nor ``last``
# asks for none, so it costs the same however much a busy group keeps.
HISTORY_LUA = """
redis.call('HSETNX', KEYS[1], 'e', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'e', 'o')
if not state[2] then
    return {state[1], '0', {}}  -- nothing kept under this epoch (a list left is older)
end
local wanted = tonumber(ARGV[3])
local after = tonumber(ARGV[4])
if after >= 0 then
    wanted = math.min(wanted, tonumber(state[2]) - after)
end
if wanted <= 0 then
    return {state[1], state[2], {}}
end
return {state[1], state[2], redis.call('LRANGE', KEYS[2], -wanted, -1)}
"""

# Marks the Redis data set, so that a process notices a restart that lost it.
EPOCH_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""


@functools.cache
def script_sha(source: str) -> str:
    """The SHA1 that EVALSHA names the Lua script ``source`` by."""
    return hashlib.sha1(source.encode()).hexdigest()


def pack(command: tuple[Any, ...]) -> bytes:
    """``command`` (bytes, str and int arguments) in the Redis protocol: the few
    lines of redis-py's general ``pack_command`` this path needs."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if not isinstance(arg, bytes):
            arg = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)
