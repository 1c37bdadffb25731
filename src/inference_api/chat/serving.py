"""Chat turns on server-side sessions: history in the model's template, folded into a summary when long.

A turn holds the session's lock from reading the history to storing the reply, so two messages sent
at once to one session are applied one after the other and neither turn is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from inference_api.api.errors import error_body
from inference_api.chat.protocol import ChatMessage, ChatReply, SendRequest, StartRequest, StartResponse, Usage
from inference_api.chat.store import SessionStore
from inference_api.chat.types import Message, Session, SessionExistsError
from inference_api.engine.service import Engine
from inference_api.engine.types import Completion, GenerationRequest, SamplingParams, TextDelta
from inference_api.errors import ServiceError
from inference_api.grounding import NOTHING_FOUND, Grounding, grounded_system_prompt, sources_of
from inference_api.inference.protocol import Source
from inference_api.inference.serving import check_max_new_tokens, check_token_budget, default_within_limit, sse
from inference_api.modeling.prompt import EncodedPrompt
from inference_api.modeling.prompt import Message as TemplateMessage
from inference_api.modeling.registry import BASE_VERSION, ModelRef

_SUMMARY_SYSTEM = "You write short, factual summaries of conversations."
_SUMMARY_ASK = (
    "Summarize the conversation below in a few sentences. Keep every name, number and fact that was "
    "stated, and what the user asked for."
)


@dataclass
class Turn:
    """What a reply will be generated from (no request: nothing relevant in the caller's documents)."""

    session: Session
    user: Message
    request: GenerationRequest | None
    sources: list[Source] | None
    folded: int = 0


class ChatService:
    def __init__(self, engine: Engine, store: SessionStore, grounding: Grounding, *, summary_max_tokens: int) -> None:
        self._engine = engine
        self._store = store
        self._grounding = grounding
        self._summary_max_tokens = summary_max_tokens

    async def start(self, owner: str, body: StartRequest, arrived: float) -> StartResponse:
        ref = self._engine.registry.ref(body.base_model, body.adapter_version)
        self._engine.registry.resolve(ref)
        try:
            session = await self._store.create(
                owner,
                session_id=body.session_id,
                system_prompt=body.system_prompt,
                base_model=ref.base,
                adapter_version=ref.version,
            )
        except SessionExistsError:
            # Starting a session the caller already has resumes it.
            assert body.session_id is not None
            session = await self._store.get(owner, body.session_id)
        reply = None
        if body.message is not None:
            reply = await self.reply(owner, session.id, SendRequest(message=body.message), arrived)
            session = await self._store.get(owner, session.id)
        return StartResponse(session_id=session.id, messages=[ChatMessage.of(m) for m in session.messages], reply=reply)

    async def reply(self, owner: str, session_id: str, body: SendRequest, arrived: float) -> ChatReply:
        self._check(body)
        async with self._store.lock(owner, session_id, wait=self._engine.limits.request_timeout) as session:
            turn = await self._plan(owner, session, body, arrived)
            if turn.request is None:
                return await self._store_reply(owner, turn, NOTHING_FOUND, None, arrived)
            completion = await self._engine.generate(turn.request)
            return await self._store_reply(owner, turn, completion.text, completion, arrived)

    async def reply_stream(
        self, owner: str, session_id: str, body: SendRequest, arrived: float, request_id: str | None
    ) -> AsyncIterator[str]:
        """SSE like /infer: text deltas, then the stored reply. The turn is stored only if it completes."""
        try:
            async with self._store.lock(owner, session_id, wait=self._engine.limits.request_timeout) as session:
                turn = await self._plan(owner, session, body, arrived)
                if turn.request is None:
                    yield sse({"delta": NOTHING_FOUND})
                    reply = await self._store_reply(owner, turn, NOTHING_FOUND, None, arrived)
                    yield sse(reply.model_dump(mode="json", by_alias=True))
                    return
                await self._engine.submit(turn.request)
                try:
                    async for event in turn.request.events():
                        if isinstance(event, TextDelta):
                            yield sse({"delta": event.text})
                        else:
                            reply = await self._store_reply(owner, turn, event.text, event, arrived)
                            yield sse(reply.model_dump(mode="json", by_alias=True))
                finally:
                    if not turn.request.finished:
                        self._engine.cancel(turn.request)
        except ServiceError as exc:
            yield sse(error_body(exc, request_id), event="error")

    async def check_stream(self, owner: str, body: SendRequest) -> None:
        """What a streamed turn can be refused for before its response starts: limits, readiness, token quota."""
        self._check(body)
        await self._engine.check_budget(owner, body.max_new_tokens)

    def _check(self, body: SendRequest) -> None:
        default_within_limit(body, self._engine.limits.max_new_tokens)
        check_max_new_tokens(body.max_new_tokens, self._engine.limits.max_new_tokens)
        self._engine.check_accepting()

    async def _plan(self, owner: str, session: Session, body: SendRequest, arrived: float) -> Turn:
        ref = ModelRef(
            session.base_model or self._engine.registry.default.base, session.adapter_version or BASE_VERSION
        )
        self._engine.registry.resolve(ref)
        user = Message(role="user", content=body.message)
        hits = None
        if body.use_documents:
            hits = await self._grounding.find(owner, body.message)
            if not hits:
                return Turn(session, user, None, [])
        system = grounded_system_prompt(hits, session.system_prompt) if hits else session.system_prompt
        deadline = arrived + self._engine.limits.request_timeout
        folded = 0
        while True:
            encoded = await self._encode(ref, _conversation(session, system, body.message))
            try:
                check_token_budget(encoded, body.max_new_tokens, self._engine.limits.max_input_tokens)
                break
            except ServiceError:
                if not session.messages:
                    raise  # the new message alone does not fit: nothing to fold, and nothing is cut
            session, count = await self._fold(owner, session, ref, deadline)
            folded += count
        # Sources make each grounded system block unique: nothing to share.
        shared = 0 if hits else encoded.shared_prefix
        request = GenerationRequest(
            ref, encoded.ids, body.sampling(), deadline=deadline, owner=owner, shared_prefix=shared
        )
        return Turn(session, user, request, sources_of(hits) if hits is not None else None, folded)

    async def _fold(self, owner: str, session: Session, ref: ModelRef, deadline: float) -> tuple[Session, int]:
        """Fold the older half of the kept messages (a whole turn at least) into the model's own summary."""
        count = min(len(session.messages), max(2, len(session.messages) // 2))
        summary = await self._summarize(owner, ref, session.summary, session.messages[:count], deadline)
        return await self._store.fold(owner, session.id, summary=summary, folded=count), count

    async def _summarize(
        self, owner: str, ref: ModelRef, earlier: str | None, messages: list[Message], deadline: float
    ) -> str:
        """Rolling summary; messages that do not fit one prompt are summarized a part at a time."""
        summary = earlier
        start = 0
        while start < len(messages):
            end = len(messages)
            while True:
                prompt = _summary_prompt(summary, messages[start:end])
                encoded = await self._encode(ref, prompt)
                try:
                    check_token_budget(encoded, self._summary_max_tokens, self._engine.limits.max_input_tokens)
                    break
                except ServiceError:
                    if end - start == 1:
                        raise
                    end = start + (end - start) // 2
            params = SamplingParams(max_new_tokens=self._summary_max_tokens)
            # Summaries are generated for the owner's conversation, so they count against the owner's budget.
            request = GenerationRequest(
                ref, encoded.ids, params, deadline=deadline, owner=owner, shared_prefix=encoded.shared_prefix
            )
            completion = await self._engine.generate(request)
            # A model that writes nothing must not make the folded turns vanish: keep a short transcript.
            summary = completion.text.strip() or _transcript(summary, messages[start:end])
            start = end
        return summary or ""

    async def _encode(self, ref: ModelRef, messages: list[TemplateMessage]) -> EncodedPrompt:
        return await asyncio.to_thread(self._engine.encoder.encode_chat, ref.base, messages)

    async def _store_reply(
        self, owner: str, turn: Turn, text: str, completion: Completion | None, arrived: float
    ) -> ChatReply:
        usage = Usage(
            prompt_tokens=completion.prompt_tokens if completion else 0,
            tokens_generated=completion.tokens_generated if completion else 0,
            finish_reason=completion.finish_reason if completion else "stop",
            queue_time=round(completion.queue_time, 6) if completion else 0.0,
            generation_time=round(completion.generation_time, 6) if completion else 0.0,
            response_time=round(time.monotonic() - arrived, 6),
        )
        sources = [s.model_dump() for s in turn.sources] if turn.sources is not None else None
        assistant = Message(role="assistant", content=text, sources=sources, usage=usage.model_dump())
        await self._store.append(owner, turn.session.id, [turn.user, assistant])
        return ChatReply(
            session_id=turn.session.id,
            message=ChatMessage.of(assistant),
            usage=usage,
            sources=turn.sources,
            summarized_turns=turn.folded,
        )


def _conversation(session: Session, system: str | None, message: str) -> list[TemplateMessage]:
    parts = [system] if system else []
    if session.summary:
        parts.append(f"Summary of the earlier conversation: {session.summary}")
    messages: list[TemplateMessage] = [{"role": "system", "content": "\n\n".join(parts)}] if parts else []
    messages += [{"role": m.role, "content": m.content} for m in session.messages if m.role != "system"]
    messages.append({"role": "user", "content": message})
    return messages


def _transcript(earlier: str | None, messages: list[Message]) -> str:
    lines = [earlier] if earlier else []
    lines += [f"{m.role}: {' '.join(m.content.split())[:120]}" for m in messages]
    return " | ".join(lines)


def _summary_prompt(earlier: str | None, messages: list[Message]) -> list[TemplateMessage]:
    lines = [f"Summary so far: {earlier}"] if earlier else []
    lines += [f"{m.role}: {m.content}" for m in messages]
    return [
        {"role": "system", "content": _SUMMARY_SYSTEM},
        {"role": "user", "content": _SUMMARY_ASK + "\n\n" + "\n".join(lines)},
    ]
