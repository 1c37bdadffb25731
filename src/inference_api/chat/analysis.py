"""What a chat session looks like: messages and tokens by role, how long replies took, turn lengths, what was
summarized, and how the topic moved between the user's turns (all-MiniLM-L6-v2, the documents' embedding model)."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from inference_api.chat.types import Session
from inference_api.documents.embedding import MODEL_NAME as EMBEDDING_MODEL
from inference_api.documents.embedding import Vectors


class RoleCounts(BaseModel):
    messages: int
    tokens: int


class Latency(BaseModel):
    replies: int = Field(description="User messages answered by the next message.")
    p50: float | None = Field(description="Median seconds from a user message to its reply.")
    max: float | None


class TurnLength(BaseModel):
    turn: int
    user_tokens: int
    assistant_tokens: int


class Turns(BaseModel):
    count: int
    mean_tokens: float | None
    max_tokens: int | None
    lengths: list[TurnLength]


class Summaries(BaseModel):
    summarized_messages: int = Field(description="Early messages folded into the summary so far.")
    summary_tokens: int
    summary: str | None


class Step(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    from_message: int = Field(alias="from")
    to_message: int = Field(alias="to")
    similarity: float
    topic_changed: bool


class Topics(BaseModel):
    model: str = EMBEDDING_MODEL
    threshold: float = Field(description="Consecutive user turns less similar than this changed the topic.")
    steps: list[Step]
    changes: list[int] = Field(description="Indexes of the user messages that started a new topic.")
    mean_similarity: float | None


class Analysis(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    session_id: str = Field(alias="sessionId")
    roles: dict[str, RoleCounts]
    reply_latency: Latency
    turns: Turns
    summaries: Summaries
    topics: Topics


Count = Callable[[str], int]
Embed = Callable[[list[str]], Awaitable[Vectors]]


async def analyse(
    session: Session,
    count_tokens: Count,
    embed: Embed,
    *,
    threshold: float,
) -> Analysis:
    """`count_tokens` counts a text in the session model's tokens (blocking: run in a thread here); `embed` returns
    (awaitable) unit vectors, one per text. A reply's own token count is the one its generation reported."""
    messages = session.messages
    texts = [m.content for m in messages] + ([session.summary] if session.summary else [])
    counted = await asyncio.to_thread(lambda: [count_tokens(text) for text in texts])
    tokens = [
        int(m.usage["tokens_generated"]) if m.role == "assistant" and m.usage else counted[i]
        for i, m in enumerate(messages)
    ]
    roles: dict[str, RoleCounts] = {}
    for message, count in zip(messages, tokens, strict=True):
        seen = roles.setdefault(message.role, RoleCounts(messages=0, tokens=0))
        seen.messages += 1
        seen.tokens += count

    delays: list[float] = []
    lengths: list[TurnLength] = []
    for i in range(len(messages) - 1):
        if messages[i].role == "user" and messages[i + 1].role == "assistant":
            delays.append(max(0.0, messages[i + 1].timestamp - messages[i].timestamp))
            lengths.append(TurnLength(turn=len(lengths), user_tokens=tokens[i], assistant_tokens=tokens[i + 1]))
    totals = [t.user_tokens + t.assistant_tokens for t in lengths]

    users = [i for i, m in enumerate(messages) if m.role == "user"]
    vectors: Vectors | None = None
    if len(users) > 1:
        vectors = await embed([messages[i].content for i in users])
    steps = []
    for k in range(1, len(users)):
        assert vectors is not None
        similarity = round(float(vectors[k - 1] @ vectors[k]), 4)
        steps.append(
            Step(
                from_message=users[k - 1],
                to_message=users[k],
                similarity=similarity,
                topic_changed=similarity < threshold,
            )
        )
    return Analysis(
        session_id=session.id,
        roles=roles,
        reply_latency=Latency(
            replies=len(delays),
            p50=round(statistics.median(delays), 6) if delays else None,
            max=round(max(delays), 6) if delays else None,
        ),
        turns=Turns(
            count=len(lengths),
            mean_tokens=round(statistics.fmean(totals), 2) if totals else None,
            max_tokens=max(totals) if totals else None,
            lengths=lengths,
        ),
        summaries=Summaries(
            summarized_messages=session.summarized_turns,
            summary_tokens=counted[-1] if session.summary else 0,
            summary=session.summary,
        ),
        topics=Topics(
            threshold=threshold,
            steps=steps,
            changes=[s.to_message for s in steps if s.topic_changed],
            mean_similarity=_mean([s.similarity for s in steps]),
        ),
    )


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None
