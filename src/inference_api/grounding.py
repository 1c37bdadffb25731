"""Retrieval-augmented answers: the caller's most relevant chunks become numbered sources in the prompt."""

from __future__ import annotations

from typing import Protocol

from inference_api.documents.types import SearchHit
from inference_api.inference.protocol import Source

# Said instead of generating when no chunk is relevant enough: a model asked to answer from nothing
# invents an answer, and one that cites sources it was never given is worse than none.
NOTHING_FOUND = "I found nothing about that in your documents, so I cannot answer it from them."
_INSTRUCTIONS = (
    "Answer the question using only the numbered sources below. Cite the sources you use like [1]. "
    "If the sources do not contain the answer, say that they do not."
)
_EXCERPT_CHARACTERS = 300


class Searcher(Protocol):
    async def search(self, owner: str, query: str, k: int = 5) -> list[SearchHit]: ...


class Grounding:
    """Finds an owner's chunks for a question and writes them into the system prompt as sources."""

    def __init__(self, searcher: Searcher, *, k: int, min_score: float) -> None:
        self._searcher = searcher
        self.k = k
        self.min_score = min_score

    async def find(self, owner: str, question: str) -> list[SearchHit]:
        hits = await self._searcher.search(owner, question, self.k)
        return [hit for hit in hits if hit.score >= self.min_score]


def grounded_system_prompt(hits: list[SearchHit], system_prompt: str | None = None) -> str:
    blocks = [f"[{n}] ({hit.filename})\n{hit.text.strip()}" for n, hit in enumerate(hits, start=1)]
    head = f"{system_prompt.strip()}\n\n" if system_prompt else ""
    return head + _INSTRUCTIONS + "\n\n" + "\n\n".join(blocks)


def sources_of(hits: list[SearchHit]) -> list[Source]:
    return [
        Source(
            document_id=hit.document_id,
            filename=hit.filename,
            chunk_index=hit.chunk_index,
            score=round(hit.score, 4),
            excerpt=_excerpt(hit.text),
        )
        for hit in hits
    ]


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARACTERS else text[: _EXCERPT_CHARACTERS - 1] + "…"
