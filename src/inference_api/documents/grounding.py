"""Retrieval-augmented answers: the caller's most relevant chunks become numbered sources in the prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from inference_api.documents.protocol import Source
from inference_api.documents.types import SearchHit

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


@dataclass(frozen=True)
class Grounds:
    """The chunks found for one question (none: nothing relevant enough, and nothing to answer from)."""

    hits: list[SearchHit]

    def system_prompt(self, own: str | None = None) -> str:
        """The instructions and the numbered sources, after the caller's own system prompt if there is one."""
        blocks = [f"[{n}] ({hit.filename})\n{hit.text.strip()}" for n, hit in enumerate(self.hits, start=1)]
        head = f"{own.strip()}\n\n" if own else ""
        return head + _INSTRUCTIONS + "\n\n" + "\n\n".join(blocks)

    def sources(self) -> list[Source]:
        return [
            Source(
                document_id=hit.document_id,
                filename=hit.filename,
                chunk_index=hit.chunk_index,
                score=round(hit.score, 4),
                excerpt=_excerpt(hit.text),
            )
            for hit in self.hits
        ]


class Grounding:
    """Finds an owner's chunks for a question."""

    def __init__(self, searcher: Searcher, *, k: int, min_score: float) -> None:
        self._searcher = searcher
        self.k = k
        self.min_score = min_score

    async def find(self, owner: str, question: str) -> Grounds:
        hits = await self._searcher.search(owner, question, self.k)
        return Grounds([hit for hit in hits if hit.score >= self.min_score])


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARACTERS else text[: _EXCERPT_CHARACTERS - 1] + "…"
