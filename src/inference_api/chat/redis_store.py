"""Chat sessions in Redis, shared by every replica of the service.

Keys, under a prefix (default `inference-api`), with the owner's name and the session id last (ids hold
no ':', so a key splits at its last colon whatever the owner's name contains):
  {p}:session:{owner}:{id}   hash: the session's fields
  {p}:messages:{owner}:{id}  list: its messages as JSON, oldest first
  {p}:lock:{owner}:{id}      the turn lock (redis-py's Lock)
  {p}:owner:{owner}          sorted set of the owner's session ids by updated_at, so `list` scans no keyspace
  {p}:sessions               sorted set of every `{owner}:{id}` by updated_at, for `expire` and `count`
Every write is one Lua script, so a session and its indexes change together and concurrent appends
from any number of replicas each land whole, in the order Redis runs them.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import LockError, LockNotOwnedError

from inference_api.chat.locks import DEFAULT_LEASE_SECONDS, hold_session
from inference_api.chat.types import (
    Message,
    Session,
    SessionExistsError,
    SessionInfo,
    check_branch_point,
    check_fold,
    check_truncate,
    new_session_id,
    session_not_found,
)
from inference_api.keyed_locks import KeyedLocks

DEFAULT_PREFIX = "inference-api"

# KEYS: session, messages, owner index, all index. ARGV: id, updated_at, all-index member, then the
# number of field pairs, the pairs, and the messages.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local npairs = tonumber(ARGV[4])
local fields = {}
for i = 5, 4 + 2 * npairs do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
for i = 5 + 2 * npairs, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
return 1
"""

# KEYS: session, messages. Returns {fields, messages} or nil.
_GET = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# KEYS: session, messages, owner index, all index. ARGV: id, updated_at, all-index member, messages...
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# KEYS: session, messages, owner index, all index. ARGV: id, updated_at, all-index member, summary, folded.
# Returns {fields, messages}, nil, or the message count when `folded` is out of range.
_FOLD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local folded = tonumber(ARGV[5])
local count = redis.call('LLEN', KEYS[2])
if folded < 0 or folded > count then return count end
if folded > 0 then redis.call('LTRIM', KEYS[2], folded, -1) end
redis.call('HSET', KEYS[1], 'summary', ARGV[4], 'updated_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'summarized_turns', folded)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# KEYS: session, messages, owner index, all index. ARGV: id, updated_at, all-index member, keep.
# Returns {fields, messages}, nil, or the message count when `keep` is out of range.
_TRUNCATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local keep = tonumber(ARGV[4])
local count = redis.call('LLEN', KEYS[2])
if keep < 0 or keep > count then return count end
if keep == 0 then redis.call('DEL', KEYS[2]) else redis.call('LTRIM', KEYS[2], 0, keep - 1) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# KEYS: session, messages, owner index, all index. ARGV: id, all-index member. Returns 1 if it existed.
_DELETE = """
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[2])
return existed
"""

# KEYS: session, messages, owner index, all index, lock. ARGV: id, all-index member, cutoff.
# Re-checks under the script what the index said: an append may have landed since, or a turn may hold
# the session. An index entry whose hash is gone (evicted under maxmemory) is cleaned up and counted.
_EXPIRE_ONE = """
local updated = redis.call('HGET', KEYS[1], 'updated_at')
if updated and (tonumber(updated) >= tonumber(ARGV[3]) or redis.call('EXISTS', KEYS[5]) == 1) then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[2])
return 1
"""

_OPTIONAL_FIELDS = ("system_prompt", "base_model", "adapter_version", "summary")


class RedisSessionStore:
    """Sessions in Redis; any number of stores (replicas) may share one server."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_seconds: float = 0.05,
        owns_client: bool = False,
    ) -> None:
        """`client` must decode responses (decode_responses=True)."""
        self._redis = client
        self._prefix = prefix
        self._lease_seconds = lease_seconds
        self._poll_seconds = poll_seconds
        self._owns_client = owns_client
        self._locks = KeyedLocks()
        self._create = client.register_script(_CREATE)
        self._get = client.register_script(_GET)
        self._append = client.register_script(_APPEND)
        self._fold = client.register_script(_FOLD)
        self._truncate = client.register_script(_TRUNCATE)
        self._delete = client.register_script(_DELETE)
        self._expire_one = client.register_script(_EXPIRE_ONE)

    @classmethod
    async def connect(
        cls, url: str, *, prefix: str = DEFAULT_PREFIX, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> RedisSessionStore:
        """A store on the server at `url`, checked with a PING so a wrong URL fails at start-up."""
        # Timeouts: an unreachable host fails start-up, and a Redis that hangs fails a call (503), not hold it.
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=10, socket_timeout=5)
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        return cls(client, prefix=prefix, lease_seconds=lease_seconds, owns_client=True)

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    async def create(
        self,
        owner: str,
        *,
        session_id: str | None = None,
        system_prompt: str | None = None,
        base_model: str | None = None,
        adapter_version: str | None = None,
        messages: Sequence[Message] = (),
    ) -> Session:
        session = Session.begin(
            owner,
            session_id=session_id,
            system_prompt=system_prompt,
            base_model=base_model,
            adapter_version=adapter_version,
            messages=messages,
        )
        await self._insert(session)
        return session

    async def get(self, owner: str, session_id: str) -> Session:
        result = await self._get(
            keys=[self._key("session", owner, session_id), self._key("messages", owner, session_id)]
        )
        if result is None:
            raise session_not_found(session_id)
        return _decode(result)

    async def list(self, owner: str, *, limit: int | None = None) -> builtins.list[SessionInfo]:
        if limit is not None and limit <= 0:
            return []
        index = self._owner_index(owner)
        # The client decodes responses, so members come back as str.
        ids = cast("builtins.list[str]", await self._redis.zrevrange(index, 0, -1 if limit is None else limit - 1))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.hgetall(self._key("session", owner, session_id))
                pipe.llen(self._key("messages", owner, session_id))
            replies = await pipe.execute()
        infos = []
        for fields, count in zip(replies[::2], replies[1::2], strict=True):
            if fields:  # a session deleted since the index was read
                infos.append(_info(fields, count))
        return infos

    async def delete(self, owner: str, session_id: str) -> None:
        existed = await self._delete(keys=self._keys(owner, session_id), args=[session_id, _member(owner, session_id)])
        if not existed:
            raise session_not_found(session_id)

    async def append(self, owner: str, session_id: str, messages: Sequence[Message]) -> Session:
        result = await self._append(
            keys=self._keys(owner, session_id),
            args=[session_id, repr(time.time()), _member(owner, session_id), *(_encode(m) for m in messages)],
        )
        if result is None:
            raise session_not_found(session_id)
        return _decode(result)

    async def fold(self, owner: str, session_id: str, *, summary: str, folded: int) -> Session:
        result = await self._fold(
            keys=self._keys(owner, session_id),
            args=[session_id, repr(time.time()), _member(owner, session_id), summary, folded],
        )
        if result is None:
            raise session_not_found(session_id)
        if isinstance(result, int):
            check_fold(folded, result)
        return _decode(result)

    async def truncate(self, owner: str, session_id: str, *, keep: int) -> Session:
        result = await self._truncate(
            keys=self._keys(owner, session_id),
            args=[session_id, repr(time.time()), _member(owner, session_id), keep],
        )
        if result is None:
            raise session_not_found(session_id)
        if isinstance(result, int):
            check_truncate(keep, result)
        return _decode(result)

    async def branch(self, owner: str, session_id: str, *, at_message: int) -> Session:
        source = await self.get(owner, session_id)
        check_branch_point(at_message, len(source.messages))
        now = time.time()
        session = source.model_copy(
            update={
                "id": new_session_id(),
                "created_at": now,
                "updated_at": now,
                "messages": source.messages[:at_message],
            }
        )
        await self._insert(session)
        return session

    async def expire(self, idle_seconds: float) -> int:
        cutoff = time.time() - idle_seconds
        members = cast("builtins.list[str]", await self._redis.zrangebyscore(self._all_index(), "-inf", f"({cutoff!r}"))
        removed = 0
        for member in members:
            owner, _, session_id = member.rpartition(":")
            removed += await self._expire_one(
                keys=[*self._keys(owner, session_id), self._key("lock", owner, session_id)],
                args=[session_id, member, repr(cutoff)],
            )
        return removed

    async def count(self) -> int:
        return int(await self._redis.zcard(self._all_index()))

    @contextlib.asynccontextmanager
    async def lock(self, owner: str, session_id: str, *, wait: float | None = None) -> AsyncIterator[Session]:
        key = self._key("lock", owner, session_id)
        lease = _RedisLease(self._redis, key, self._lease_seconds, self._poll_seconds)
        async with hold_session(self._locks, key, lease, wait=wait, lease_seconds=self._lease_seconds):
            yield await self.get(owner, session_id)

    async def _insert(self, session: Session) -> None:
        fields: dict[str, str] = {
            "id": session.id,
            "owner": session.owner,
            "created_at": repr(session.created_at),
            "updated_at": repr(session.updated_at),
            "summarized_turns": str(session.summarized_turns),
        }
        for name in _OPTIONAL_FIELDS:
            value = getattr(session, name)
            if value is not None:
                fields[name] = value
        created = await self._create(
            keys=self._keys(session.owner, session.id),
            args=[
                session.id,
                repr(session.updated_at),
                _member(session.owner, session.id),
                len(fields),
                *(item for pair in fields.items() for item in pair),
                *(_encode(m) for m in session.messages),
            ],
        )
        if not created:
            raise SessionExistsError(session.id)

    def _key(self, kind: str, owner: str, session_id: str) -> str:
        return f"{self._prefix}:{kind}:{owner}:{session_id}"

    def _keys(self, owner: str, session_id: str) -> builtins.list[str]:
        return [
            self._key("session", owner, session_id),
            self._key("messages", owner, session_id),
            self._owner_index(owner),
            self._all_index(),
        ]

    def _owner_index(self, owner: str) -> str:
        return f"{self._prefix}:owner:{owner}"

    def _all_index(self) -> str:
        return f"{self._prefix}:sessions"


class _RedisLease:
    """redis-py's Lock under a token of our own, so that a cancelled acquire can still be undone."""

    def __init__(self, client: aioredis.Redis, key: str, lease_seconds: float, poll_seconds: float) -> None:
        # thread_local=False: tasks share the event loop's thread, and this Lock object is ours alone anyway.
        self._lock = client.lock(key, timeout=lease_seconds, sleep=poll_seconds, thread_local=False)
        self._token = uuid.uuid4().hex

    async def acquire(self, deadline: float | None) -> bool:
        remaining = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            return bool(await self._lock.acquire(blocking=True, blocking_timeout=remaining, token=self._token))
        except BaseException:
            # The SET NX may have reached Redis before the cancellation reached us; free it by token rather
            # than leave the session blocked for a whole lease. Best effort: the original error is what matters.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release_token())
            raise

    async def renew(self) -> bool:
        try:
            await self._lock.reacquire()
        except LockNotOwnedError:
            return False
        return True

    async def release(self) -> None:
        await self._release_token()

    async def _release_token(self) -> None:
        # Quiet when not held: the lease ran out (and was logged by the renewer) or was never taken.
        with contextlib.suppress(LockError):
            await self._lock.do_release(self._token.encode())


def _member(owner: str, session_id: str) -> str:
    return f"{owner}:{session_id}"


def _encode(message: Message) -> str:
    return message.model_dump_json(exclude_none=True)


def _decode(result: Any) -> Session:
    flat, raw_messages = result
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return Session(
        **_settings_of(fields),
        summary=fields.get("summary"),
        summarized_turns=int(fields.get("summarized_turns", 0)),
        messages=[Message.model_validate_json(raw) for raw in raw_messages],
    )


def _info(fields: dict[str, str], message_count: int) -> SessionInfo:
    return SessionInfo(
        **_settings_of(fields),
        message_count=message_count,
        summarized_turns=int(fields.get("summarized_turns", 0)),
    )


def _settings_of(fields: dict[str, str]) -> dict[str, Any]:
    """The hash fields that Session and SessionInfo share."""
    return {
        "id": fields["id"],
        "owner": fields["owner"],
        "created_at": float(fields["created_at"]),
        "updated_at": float(fields["updated_at"]),
        "system_prompt": fields.get("system_prompt"),
        "base_model": fields.get("base_model"),
        "adapter_version": fields.get("adapter_version"),
    }
