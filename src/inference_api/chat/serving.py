"""Chat turns on server-side sessions: history in the model's template, folded into a summary when long.

A turn holds the session's lock from reading the history to storing the reply, so two messages sent
at once to one session are applied one after the other and neither turn is lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from inference_api.api.errors import error_body
from inference_api.api.sse import sse
from inference_api.chat.protocol import ChatMessage, ChatReply, SendRequest, StartRequest, StartResponse, Usage
from inference_api.chat.store import SessionStore
from inference_api.chat.types import Message, Session, SessionExistsError
from inference_api.documents.grounding import Grounds
from inference_api.engine.types import Completion, SamplingParams, TextDelta
from inference_api.errors import ServiceError
from inference_api.generation.limits import check_max_new_tokens, check_token_budget, default_within_limit
from inference_api.generation.pipeline import GenerationPipeline, Job, figures, grounded
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
    """What a reply will be generated from: the session as it was read (folded, maybe) and the job."""

    session: Session
    user: Message
    job: Job
    folded: int = 0


class ChatService:
    def __init__(self, pipeline: GenerationPipeline, store: SessionStore, *, summary_max_tokens: int) -> None:
        self._pipeline = pipeline
        self._engine = pipeline.engine
        self._store = store
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
        async with self.turn(owner, session_id, body, arrived) as turn:
            completion = await self._pipeline.complete(turn.job)
            return await self.finish(owner, turn, completion, arrived)

    @contextlib.asynccontextmanager
    async def turn(
        self,
        owner: str,
        session_id: str,
        body: SendRequest,
        arrived: float,
        *,
        system_prompt: str | None = None,
        check: Callable[[Session], None] | None = None,
    ) -> AsyncIterator[Turn]:
        """A turn on the session, planned (folded to fit, grounded when asked) with the session's lock held until the
        block ends: the caller completes or streams `turn.job` and stores the answer with `finish` inside it.

        `system_prompt` replaces the session's for this turn; `check` sees the session as read under the lock
        (and may refuse the turn by raising)."""
        self._check(body)
        async with self._store.lock(owner, session_id, wait=self._engine.limits.request_timeout) as session:
            if check is not None:
                check(session)
            yield await self._plan(owner, session, body, arrived, system_prompt)

    async def reply_stream(
        self, owner: str, session_id: str, body: SendRequest, arrived: float, request_id: str | None
    ) -> AsyncIterator[str]:
        """SSE like /infer: text deltas, then the stored reply. The turn is stored only if it completes."""
        try:
            async with self.turn(owner, session_id, body, arrived) as turn:
                await self._pipeline.submit(turn.job)
                async for event in self._pipeline.events(turn.job):
                    if isinstance(event, TextDelta):
                        yield sse({"delta": event.text})
                    else:
                        reply = await self.finish(owner, turn, event, arrived)
                        yield sse(reply.model_dump(mode="json", by_alias=True))
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

    async def _plan(
        self, owner: str, session: Session, body: SendRequest, arrived: float, system_prompt: str | None = None
    ) -> Turn:
        ref = ModelRef(
            session.base_model or self._engine.registry.default.base, session.adapter_version or BASE_VERSION
        )
        self._engine.registry.resolve(ref)
        folded = 0

        async def encode(grounds: Grounds | None) -> EncodedPrompt:
            """The conversation as it fits: while it does not, older messages are folded into the summary."""
            nonlocal session, folded
            system = session.system_prompt if system_prompt is None else system_prompt
            # The sources go right before the question (only in the prompt: the stored message is the caller's).
            message = grounds.prompt(body.message) if grounds else body.message
            while True:
                encoded = await self._encode(ref, _conversation(session, system, message))
                try:
                    check_token_budget(encoded, body.max_new_tokens, self._engine.limits.max_input_tokens)
                    return encoded
                except ServiceError:
                    if not session.messages:
                        raise  # the new message alone does not fit: nothing to fold, and nothing is cut
                session, count = await self._fold(owner, session, ref, arrived)
                folded += count

        question = body.message if body.use_documents else None
        job = await self._pipeline.job(
            ref,
            encode,
            body.sampling(),
            arrived,
            owner=owner,
            question=question,
            grammar=body.grammar(),
            affinity=session.id,
        )
        return Turn(session, Message(role="user", content=body.message), job, folded)

    async def _fold(self, owner: str, session: Session, ref: ModelRef, arrived: float) -> tuple[Session, int]:
        """Fold the older half of the kept messages (a whole turn at least) into the model's own summary."""
        count = min(len(session.messages), max(2, len(session.messages) // 2))
        summary = await self._summarize(
            owner, ref, session.summary, session.messages[:count], arrived, affinity=session.id
        )
        return await self._store.fold(owner, session.id, summary=summary, folded=count), count

    async def _summarize(
        self,
        owner: str,
        ref: ModelRef,
        earlier: str | None,
        messages: list[Message],
        arrived: float,
        *,
        affinity: str | None = None,
    ) -> str:
        """Rolling summary; messages that do not fit one prompt are summarized a part at a time, all within the
        turn's deadline (it counts from the turn's `arrived`)."""
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
            job = self._pipeline.encoded_job(ref, encoded, params, arrived, owner=owner, affinity=affinity)
            completion = await self._pipeline.complete(job)
            # A model that writes nothing must not make the folded turns vanish: keep a short transcript.
            summary = completion.text.strip() or _transcript(summary, messages[start:end])
            start = end
        return summary or ""

    async def _encode(self, ref: ModelRef, messages: list[TemplateMessage]) -> EncodedPrompt:
        return await self._pipeline.encode_chat(ref, messages)

    async def finish(
        self,
        owner: str,
        turn: Turn,
        completion: Completion,
        arrived: float,
        *,
        response: dict[str, Any] | None = None,
        store: bool = True,
    ) -> ChatReply:
        """The reply to a turn, stored with its message (unless `store` is false); `response` is kept on the reply's
        message (a Responses API answer's record)."""
        usage = Usage(**figures(completion, arrived))
        found = turn.job.sources
        sources = [s.model_dump() for s in found] if found is not None else None
        assistant = Message(
            role="assistant", content=completion.text, sources=sources, usage=usage.model_dump(), response=response
        )
        if store:
            await self._store.append(owner, turn.session.id, [turn.user, assistant])
        return ChatReply(
            session_id=turn.session.id,
            message=ChatMessage.of(assistant),
            usage=usage,
            sources=found,
            grounded=grounded(turn.job, completion.text),
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
