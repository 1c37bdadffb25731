"""Which sentence of a retrieved chunk supports an answer, and how strongly: the evidence the relevance gate
weighs and each source carries.

A chunk's cosine to a question says it is on the topic; it does not say that the chunk holds what was asked
(the ferry timetable is near "the ferry office's phone number" and has none). The evidence of a chunk is its
best sentence, scored by two things: the sentence's own cosine to the question (sharper than the chunk's,
which averages in every other sentence) and the question's lexical coverage, the idf-weighted share of the
question's content terms that the sentence contains. Terms rare in the owner's documents weigh most, so a
question about "the Orion club" is covered by a sentence naming it, and one asking for a "phone number" is
not covered by a sentence with neither word.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from inference_api.documents.lexical import content_terms, tokenize

# Support = DENSE_WEIGHT * cosine + (1 - DENSE_WEIGHT) * coverage.
DENSE_WEIGHT = 0.5
# A sentence ends at . ! ? before a capital or digit (not after a title such as "Mr."), or at a line break.
_SENTENCE_END = re.compile(
    r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n+"
)
# A heading ("Fares", "Harbor Ferry timetable (archived 2019 edition)") is context, not evidence: a candidate
# ends like a sentence, or is a field or row ("name: value"), or is long enough to be a sentence without a stop.
_MIN_WORDS = 3
_UNPUNCTUATED_WORDS = 8
MAX_SENTENCES = 40
MAX_SENTENCE_CHARS = 400


@dataclass(frozen=True)
class Evidence:
    """A chunk's best sentence for a question, with the scores the gate weighs."""

    sentence: str
    similarity: float  # cosine of the sentence to the question
    coverage: float  # idf-weighted share of the question's content terms in the sentence (0..1)
    passage: str = ""  # the best two sentences of the chunk in their order (what the top source shows)

    @property
    def support(self) -> float:
        return DENSE_WEIGHT * self.similarity + (1 - DENSE_WEIGHT) * self.coverage


def sentences(text: str) -> list[str]:
    """The chunk's sentences (a table row, a JSON field and a list item each count as one), in order."""
    found = []
    for piece in _SENTENCE_END.split(text):
        piece = " ".join((piece or "").split())
        words = len(piece.split())
        sentence = words >= _MIN_WORDS and piece[-1] in ".!?\"'”"
        if sentence or words >= _UNPUNCTUATED_WORDS or (": " in piece and len(piece) >= 5):
            found.append(piece[:MAX_SENTENCE_CHARS])
    return found[:MAX_SENTENCES]


def coverage(question: Sequence[str], idf: Mapping[str, float], sentence: str, context: set[str]) -> float:
    """The idf-weighted share of the question's content terms found in `sentence`; a term found only in the
    sentence's context (the rest of its chunk, its document's name, its place) counts half: "When do members
    meet?" is answered by "The club gathers every Thursday" in a chunk of the Orion club's handbook."""
    if not question:
        return 0.0
    present = set(tokenize(sentence))
    total = sum(idf.get(t, 0.0) for t in question)
    if total <= 0:
        return 0.0
    found = sum(idf.get(t, 0.0) * (1.0 if t in present else 0.5 if t in context else 0.0) for t in question)
    return found / total


def question_terms(question: str) -> list[str]:
    return content_terms(question)
