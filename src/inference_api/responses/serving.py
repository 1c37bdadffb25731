"""OpenAI's Responses API on chat sessions: a stored response is a turn of one of the caller's sessions.

A response without `previous_response_id` starts a session (its `instructions` become the session's system
prompt, earlier input items its first messages); one with it continues the session holding that response, or a
branch of it when the conversation had already gone on from there. The turn itself is the chat service's (the
session's lock, the history folded to fit, documents when asked), so `/chat/{id}` shows it and branching works.
A response id names its session (`resp_{session}_{random}`), so any replica sharing the session store finds it.
`"store": false` answers without keeping anything: no session at all without a previous response, else a turn
that is not appended.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from inference_api.api.errors import openai_error_body
from inference_api.api.sse import sse
from inference_api.chat.protocol import SendRequest
from inference_api.chat.serving import ChatService, Turn
from inference_api.chat.store import SessionStore
from inference_api.chat.types import Message, Session, check_session_id
from inference_api.engine.types import Completion, TextDelta
from inference_api.errors import ErrorCode, ServiceError
from inference_api.generation.limits import default_within_limit
from inference_api.generation.pipeline import GenerationPipeline, Job, grounded
from inference_api.modeling.prompt import Message as TemplateMessage
from inference_api.modeling.registry import BASE_VERSION, ModelRef
from inference_api.responses.protocol import (
    DeletedResponse,
    IncompleteDetails,
    InputMessage,
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponseRequest,
    ResponseUsage,
)

_PREFIX = "resp_"
# What a stored turn keeps of its response object; the text, sources and ids come from the session itself.
_NOT_KEPT = {"output", "sources", "session_id", "store"}


class _MovedOn(Exception):
    """The previous response is no longer its session's last turn: the new one branches off after it."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


@dataclass
class Call:
    """One response on its way: what was asked, and where its turn runs."""

    body: ResponseRequest
    owner: str
    arrived: float
    ref: ModelRef
    send: SendRequest
    created_at: float
    session_id: str | None = None  # None: answered without a session (store false, no previous response)
    system_prompt: str | None = None  # replaces the session's for this turn
    job: Job | None = None  # a call without a session: its job
    new_session: bool = False  # the session was made for this call (and goes if it fails)
    temporary_branch: bool = False  # a branch made for an unstored call (removed after it)

    @property
    def store(self) -> bool:
        return self.body.store is not False


class ResponsesService:
    def __init__(self, pipeline: GenerationPipeline, chat: ChatService, store: SessionStore) -> None:
        self._pipeline = pipeline
        self._chat = chat
        self._store = store

    # --- before the answer starts: everything that can be refused as a plain HTTP error ------------------------

    async def prepare(self, body: ResponseRequest, owner: str, arrived: float) -> Call:
        registry = self._pipeline.engine.registry
        send = _send_request(body)
        default_within_limit(send, self._pipeline.limits.max_new_tokens)
        previous = await self._find(owner, body.previous_response_id) if body.previous_response_id else None
        if previous is not None:
            session, index = previous
            ref = ModelRef(session.base_model or registry.default.base, session.adapter_version or BASE_VERSION)
            if body.model is not None and _resolve(self._pipeline, body.model) != ref:
                raise ServiceError.invalid(
                    "model", f"the previous response was made by {model_name(ref)}; a conversation keeps its model"
                )
        else:
            ref = _resolve(self._pipeline, body.model) if body.model else registry.default
        self._pipeline.check(ref, send.max_new_tokens, "max_output_tokens")
        call = Call(body, owner, arrived, ref, send, time.time(), system_prompt=_instructions(body))
        if previous is None and not call.store:
            messages = _template_messages(call.system_prompt, body.history(), body.question())
            call.job = await self._pipeline.chat_job(
                ref, messages, send.sampling(), arrived, owner=owner, use_documents=body.use_documents
            )
            return call
        if body.stream:
            await self._pipeline.engine.check_budget(owner, send.max_new_tokens)
        if previous is None:
            session = await self._store.create(
                owner,
                system_prompt=call.system_prompt,
                base_model=ref.base,
                adapter_version=ref.version,
                messages=[Message(role=m.role, content=m.text()) for m in body.history() if _conversational(m)],
            )
            call.session_id, call.new_session, call.system_prompt = session.id, True, None
        else:
            if any(_conversational(m) for m in body.history()):
                raise ServiceError.invalid(
                    "input", "with previous_response_id, input holds one user message (system items aside)"
                )
            session, index = previous
            call.session_id = session.id
            if index < len(session.messages) - 1:
                await self._branch(call, session.id, index)
        return call

    async def submit(self, call: Call) -> None:
        """Queue an unstored call's job before a stream starts (stored turns queue under their session's lock)."""
        if call.job is not None:
            await self._pipeline.submit(call.job)

    # --- the answer -------------------------------------------------------------------------------------------

    async def respond(self, call: Call) -> ResponseObject:
        if call.job is not None:
            completion = await self._pipeline.complete(call.job)
            return self._record(call, _new_id(None), completion, call.job)
        try:
            async with self._turn(call) as turn:
                response_id = _new_id(turn.session.id)
                completion = await self._pipeline.complete(turn.job)
                return await self._finish(call, turn, response_id, completion)
        except BaseException:
            await self._undo(call)
            raise
        finally:
            await self._drop_temporary(call)

    async def stream(self, call: Call) -> AsyncIterator[str]:
        """The Responses event stream; an error after it started is an `error` event."""
        events = _Events()
        try:
            if call.job is not None:
                async for event in self._stream_job(call, call.job, _new_id(None), None, events):
                    yield event
                return
            try:
                async with self._turn(call) as turn:
                    await self._pipeline.submit(turn.job)
                    async for event in self._stream_job(call, turn.job, _new_id(turn.session.id), turn, events):
                        yield event
            except BaseException:
                await self._undo(call)
                raise
            finally:
                await self._drop_temporary(call)
        except ServiceError as exc:
            error = openai_error_body(exc)["error"]
            yield events.emit("error", code=error["code"], message=error["message"], param=error["param"])

    async def _stream_job(
        self, call: Call, job: Job, response_id: str, turn: Turn | None, events: _Events
    ) -> AsyncIterator[str]:
        started = self._record(call, response_id, None, job)
        yield events.emit("response.created", response=_dump(started))
        yield events.emit("response.in_progress", response=_dump(started))
        item = OutputMessage(id=_message_id(response_id), status="in_progress", content=[])
        yield events.emit("response.output_item.added", output_index=0, item=item.model_dump(mode="json"))
        where: dict[str, Any] = {"item_id": item.id, "output_index": 0, "content_index": 0}
        yield events.emit("response.content_part.added", **where, part=OutputText(text="").model_dump(mode="json"))
        async for event in self._pipeline.events(job):
            if isinstance(event, TextDelta):
                yield events.emit("response.output_text.delta", **where, delta=event.text, logprobs=[])
                continue
            if turn is not None:
                done = await self._finish(call, turn, response_id, event)
            else:
                done = self._record(call, response_id, event, job)
            text = event.text
            yield events.emit("response.output_text.done", **where, text=text, logprobs=[])
            yield events.emit("response.content_part.done", **where, part=OutputText(text=text).model_dump(mode="json"))
            item = done.output[0]
            yield events.emit("response.output_item.done", output_index=0, item=item.model_dump(mode="json"))
            kind = "response.completed" if done.status == "completed" else "response.incomplete"
            yield events.emit(kind, response=_dump(done))

    @contextlib.asynccontextmanager
    async def _turn(self, call: Call) -> AsyncIterator[Turn]:
        """The chat turn on the call's session; when the previous response is no longer the session's last turn
        (another call continued it meanwhile), on a branch made after it instead."""
        assert call.session_id is not None
        expected = call.body.previous_response_id

        def still_last(session: Session) -> None:
            if expected is not None:
                index = _index_of(session, expected)
                if index is None:
                    raise _response_not_found(expected, "previous_response_id")
                if index < len(session.messages) - 1:
                    raise _MovedOn(index)

        moved: int | None = None
        try:
            async with self._chat.turn(
                call.owner, call.session_id, call.send, call.arrived, system_prompt=call.system_prompt, check=still_last
            ) as turn:
                yield turn
        except _MovedOn as exc:
            moved = exc.index
        if moved is None:
            return
        await self._branch(call, call.session_id, moved)
        async with self._chat.turn(
            call.owner, call.session_id, call.send, call.arrived, system_prompt=call.system_prompt
        ) as turn:
            yield turn

    async def _branch(self, call: Call, session_id: str, index: int) -> None:
        branch = await self._store.branch(call.owner, session_id, at_message=index + 1)
        call.session_id, call.temporary_branch = branch.id, not call.store

    async def _finish(self, call: Call, turn: Turn, response_id: str, completion: Completion) -> ResponseObject:
        record = self._record(call, response_id, completion, turn.job)
        kept = record.model_dump(mode="json", exclude=_NOT_KEPT)
        await self._chat.finish(call.owner, turn, completion, call.arrived, response=kept, store=call.store)
        call.new_session = False  # it holds the turn now: a client leaving later must not take it away
        return record

    async def _undo(self, call: Call) -> None:
        """A session made for a call that failed goes with it (it would hold nothing but the input)."""
        if call.new_session and call.session_id is not None:
            with contextlib.suppress(ServiceError):
                await self._store.delete(call.owner, call.session_id)
            call.new_session = False

    async def _drop_temporary(self, call: Call) -> None:
        if call.temporary_branch and call.session_id is not None:
            with contextlib.suppress(ServiceError):
                await self._store.delete(call.owner, call.session_id)
            call.temporary_branch = False

    def _record(self, call: Call, response_id: str, completion: Completion | None, job: Job) -> ResponseObject:
        body = call.body
        status = "in_progress" if completion is None else "completed"
        if completion is not None and completion.finish_reason == "length":
            status = "incomplete"
        output = []
        if completion is not None:
            item_status = "completed" if status == "completed" else "incomplete"
            output.append(
                OutputMessage(
                    id=_message_id(response_id), status=item_status, content=[OutputText(text=completion.text)]
                )
            )
        return ResponseObject(
            id=response_id,
            created_at=call.created_at,
            completed_at=time.time() if completion is not None else None,
            status=status,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            model=model_name(call.ref),
            output=output,
            previous_response_id=body.previous_response_id,
            temperature=call.send.temperature,
            top_p=call.send.top_p,
            store=call.store,
            metadata=body.metadata or {},
            user=body.user,
            usage=_usage(completion) if completion is not None else None,
            cached=completion.cached if completion is not None else False,
            sources=job.sources if completion is not None else None,
            grounded=grounded(job, completion.text) if completion is not None else None,
            session_id=call.session_id if call.store else None,
        )

    # --- stored responses -------------------------------------------------------------------------------------

    async def get(self, owner: str, response_id: str) -> ResponseObject:
        session, index = await self._find(owner, response_id, None)
        return stored_response(session, index)

    async def delete(self, owner: str, response_id: str) -> DeletedResponse:
        """Removes the response's turn, and the turns after it, from its session (a conversation without a turn
        in its middle is not the one the model saw)."""
        session, _ = await self._find(owner, response_id, None)
        async with self._store.lock(owner, session.id, wait=self._pipeline.limits.request_timeout) as current:
            index = _index_of(current, response_id)
            if index is None:
                raise _response_not_found(response_id)
            question = index - 1 if index > 0 and current.messages[index - 1].role == "user" else index
            await self._store.truncate(owner, session.id, keep=question)
        return DeletedResponse(id=response_id)

    async def _find(
        self, owner: str, response_id: str, field: str | None = "previous_response_id"
    ) -> tuple[Session, int]:
        session_id = _session_of(response_id, field)
        try:
            session = await self._store.get(owner, session_id)
        except ServiceError as exc:
            if exc.code is ErrorCode.SESSION_NOT_FOUND:
                raise _response_not_found(response_id, field) from None
            raise
        index = _index_of(session, response_id)
        if index is None:
            raise _response_not_found(response_id, field)
        return session, index


def stored_response(session: Session, index: int) -> ResponseObject:
    """A stored response as its session holds it: the kept record, the turn's text and sources."""
    message = session.messages[index]
    assert message.response is not None
    status = "completed" if message.response.get("status") == "completed" else "incomplete"
    output = OutputMessage(
        id=_message_id(message.response["id"]), status=status, content=[OutputText(text=message.content)]
    )
    return ResponseObject.model_validate(
        {**message.response, "output": [output], "sources": message.sources, "session_id": session.id}
    )


class _Events:
    """Numbers the events of one stream, as the SDK expects (`sequence_number` from 0)."""

    def __init__(self) -> None:
        self._next = 0

    def emit(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self._next, **fields}
        self._next += 1
        return sse(payload, event=kind)


def model_name(ref: ModelRef) -> str:
    return ref.base if ref.version == BASE_VERSION else f"{ref.base}:{ref.version}"


def _resolve(pipeline: GenerationPipeline, name: str) -> ModelRef:
    base, _, version = name.partition(":")
    ref = ModelRef(base, version or BASE_VERSION)
    try:
        pipeline.engine.registry.resolve(ref)
    except ServiceError as exc:
        if exc.code is ErrorCode.MODEL_NOT_FOUND:
            raise ServiceError(
                ErrorCode.MODEL_NOT_FOUND,
                f"The model {name!r} does not exist; GET /v1/models lists them (an adapter is named base:version)",
            ) from None
        raise
    return ref


def _send_request(body: ResponseRequest) -> SendRequest:
    """The chat turn's request: OpenAI samples unless told temperature 0 (its default temperature is 1)."""
    temperature = 1.0 if body.temperature is None else body.temperature
    fields: dict[str, Any] = {
        "message": body.question(),
        "temperature": temperature,
        "do_sample": temperature > 0.0,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "seed": body.seed,
        "use_documents": body.use_documents,
    }
    if body.max_output_tokens is not None:
        fields["max_new_tokens"] = body.max_output_tokens
    return SendRequest(**fields)


def _conversational(item: InputMessage) -> bool:
    return item.role in ("user", "assistant")


def _instructions(body: ResponseRequest) -> str | None:
    """`instructions` and the system (developer) items of the input, in that order: the turn's system prompt."""
    parts = [body.instructions] if body.instructions else []
    parts += [m.text() for m in body.history() if not _conversational(m)]
    return "\n\n".join(parts) or None


def _template_messages(system: str | None, history: list[InputMessage], question: str) -> list[TemplateMessage]:
    messages: list[TemplateMessage] = [{"role": "system", "content": system}] if system else []
    messages += [{"role": m.role, "content": m.text()} for m in history if _conversational(m)]
    messages.append({"role": "user", "content": question})
    return messages


def _usage(completion: Completion) -> ResponseUsage:
    prompt, generated = completion.prompt_tokens, completion.tokens_generated
    return ResponseUsage(input_tokens=prompt, output_tokens=generated, total_tokens=prompt + generated)


def _dump(response: ResponseObject) -> dict[str, Any]:
    return response.model_dump(mode="json")


def _new_id(session_id: str | None) -> str:
    """`resp_{session}_{random}`; an unstored response (no session) is `resp_{random}`."""
    random = uuid.uuid4().hex[:16]
    return f"{_PREFIX}{session_id}_{random}" if session_id else f"{_PREFIX}{random}"


def _message_id(response_id: str) -> str:
    return "msg_" + response_id.rpartition("_")[2]


def _session_of(response_id: str, field: str | None) -> str:
    session_id, underscore, random = response_id.removeprefix(_PREFIX).rpartition("_")
    if not response_id.startswith(_PREFIX) or not underscore or not random:
        raise _response_not_found(response_id, field)
    try:
        return check_session_id(session_id)
    except ServiceError:
        raise _response_not_found(response_id, field) from None


def _index_of(session: Session, response_id: str) -> int | None:
    for index, message in enumerate(session.messages):
        if message.response is not None and message.response.get("id") == response_id:
            return index
    return None


def _response_not_found(response_id: str, field: str | None = None) -> ServiceError:
    # One answer for unknown, another key's, deleted and folded into a summary, as for sessions.
    details = [{"field": field, "message": "not found"}] if field else None
    return ServiceError(ErrorCode.NOT_FOUND, f"response {response_id[:200]!r} not found", details=details)
