"""Retrieval-augmented answers: the caller's chunks that hold evidence for a question become short numbered
sources, placed right before the question.

The gate: a chunk is kept when its best sentence's support (documents/evidence.py: the sentence's cosine to the
question and the question's idf-weighted lexical coverage, half each) reaches `min_score` (RAG_MIN_SCORE).
No chunk kept: a fixed refusal is said instead of generating, since a model asked to answer from nothing
invents an answer. The layout is for small models: each source is its evidence sentence, not a whole chunk,
the best first, and the question comes last, after the sources.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from inference_api.documents.evidence import Evidence
from inference_api.documents.lexical import content_terms, tokenize
from inference_api.documents.protocol import Source
from inference_api.documents.types import SearchHit

NOTHING_FOUND = "I found nothing about that in your documents, so I cannot answer it from them."
NOT_IN_SOURCES = "The documents do not say."
# The instruction, by layout (RAG_PROMPT). Measured with bench.rag on the default 135M model (bench/RESULTS.md):
# numbered sources drew "The source: [1]" and echoes of the question; asked to say when the sources do not
# answer, it said so for most questions they did answer; the plain text layout answered the most.
INSTRUCTIONS = {
    "answer": "Answer the question in one short sentence using only the sources above.",
    "answer-or-refuse": "Answer the question in one short sentence using only the sources above. "
    f'If the sources do not answer it, reply "{NOT_IN_SOURCES}"',
    # No numbered list: the sources' sentences as one text, then the question.
    "text": "Answer the question with the fact from the text above.",
    "text-question-first": "Answer the question with the fact from the text above.",
}
DEFAULT_PROMPT = "text"
_EXCERPT_CHARACTERS = 300
DEFAULT_MAX_SOURCES = 3
_NUMBERISH = str.maketrans("", "", ",")
_CITATION = re.compile(r"\[\d+\]")


class Searcher(Protocol):
    async def search(self, owner: str, query: str, k: int = 5) -> list[SearchHit]: ...

    async def evidence(self, owner: str, question: str, hits: Sequence[SearchHit]) -> list[Evidence | None]: ...


@dataclass(frozen=True)
class Grounds:
    """The chunks kept for one question, best evidence first (none: nothing relevant, nothing to answer from)."""

    hits: list[SearchHit]
    evidence: list[Evidence]
    layout: str = DEFAULT_PROMPT

    def prompt(self, question: str) -> str:
        """The user turn: the numbered sources, then the question and the instruction."""
        # The best source shows its two best sentences (the answer is often in the one beside the best match).
        shown = [e.passage if n == 1 and e.passage else e.sentence for n, e in enumerate(self.evidence, 1)]
        instruction = INSTRUCTIONS[self.layout]
        if self.layout == "text":
            return "Text: " + " ".join(reversed(shown)) + f"\n\n{instruction}\nQuestion: {question.strip()}"
        if self.layout == "text-question-first":
            return "Text: " + " ".join(reversed(shown)) + f"\n\nQuestion: {question.strip()}\n{instruction}"
        blocks = [f"[{n}] {text}" for n, text in enumerate(shown, 1)]
        return "Sources:\n" + "\n".join(blocks) + f"\n\nQuestion: {question.strip()}\n{instruction}"

    def sources(self) -> list[Source]:
        return [
            Source(
                document_id=hit.document_id,
                filename=hit.filename,
                chunk_index=hit.chunk_index,
                score=round(hit.score, 4),
                excerpt=_excerpt(hit.text),
                page=hit.page,
                place=hit.place,
                evidence=evidence.sentence,
                support=round(evidence.support, 4),
            )
            for hit, evidence in zip(self.hits, self.evidence, strict=True)
        ]

    def grounded(self, answer: str, question: str) -> bool | None:
        """Whether the answer draws on its sources: some content term of it that the question did not bring is
        in a source, and every number or code it states is in one. None when nothing was there to draw on."""
        if not self.hits:
            return None
        if NOT_IN_SOURCES.lower().rstrip(".") in answer.lower():
            return True
        source_terms = {t.translate(_NUMBERISH) for hit in self.hits for t in tokenize(hit.text)}
        asked = set(content_terms(question))
        said = [t.translate(_NUMBERISH) for t in content_terms(_CITATION.sub(" ", answer)) if t not in asked]
        if not any(t in source_terms for t in said):
            return False
        return all(t in source_terms for t in said if any(ch.isdigit() for ch in t))


class Grounding:
    """Finds an owner's chunks for a question and keeps those with enough evidence."""

    def __init__(
        self,
        searcher: Searcher,
        *,
        k: int,
        min_score: float,
        max_sources: int = DEFAULT_MAX_SOURCES,
        refuse_ungrounded: bool = True,
        layout: str = DEFAULT_PROMPT,
    ) -> None:
        if layout not in INSTRUCTIONS:
            raise ValueError(f"unknown prompt layout {layout!r}; known: {', '.join(INSTRUCTIONS)}")
        self.layout = layout
        self._searcher = searcher
        self.k = k
        self.min_score = min_score
        self.max_sources = max_sources
        self.refuse_ungrounded = refuse_ungrounded

    async def find(self, owner: str, question: str) -> Grounds:
        hits = await self._searcher.search(owner, question, self.k)
        if not hits:
            return Grounds([], [], self.layout)
        evidence = await self._searcher.evidence(owner, question, hits)
        kept = [(h, e) for h, e in zip(hits, evidence, strict=True) if e is not None and e.support >= self.min_score]
        kept.sort(key=lambda pair: -pair[1].support)
        kept = kept[: self.max_sources]
        return Grounds([h for h, _ in kept], [e for _, e in kept], self.layout)


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARACTERS else text[: _EXCERPT_CHARACTERS - 1] + "…"
