"""The lexical half of hybrid retrieval: a BM25 inverted index per owner, kept in step with uploads and deletes.

Dense embeddings of a small model blur names, codes and numbers ("tangerine-42", "06:40", "3.8.1"); exact
term matching catches them. The index is incremental: a document's chunks are added when it is stored and
removed when it is deleted, and an owner's index is filled from the store on first use (and topped up from
it when another replica changed it), never rebuilt per query. It holds term counts, not texts.

BM25 here is the usual Okapi form (k1 = 1.2, b = 0.75, idf = ln(1 + (N - df + 0.5) / (df + 0.5))).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

K1 = 1.2
B = 0.75

# Words that say nothing about what is asked; the rest of a question are its content terms.
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "done",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "get",
        "gets",
        "got",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "out",
        "over",
        "own",
        "please",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "tell",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "whose",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
    ]
)
# A token: letters and digits, joined by the marks that hold codes, times, versions and addresses together.
_TOKEN = re.compile(r"[0-9a-z]+(?:[-.:@_/'][0-9a-z]+)*")
_PART = re.compile(r"[0-9a-z]+")


def stem(word: str) -> str:
    """A light English suffix strip, enough that 'passengers' meets 'passenger' and 'opens' meets 'open'."""
    if word.isdigit() or len(word) <= 3:
        return word
    for suffix, keep in (("'s", ""), ("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not (suffix == "s" and word.endswith("ss")):
            return word[: -len(suffix)] + keep
    return word


def tokenize(text: str) -> list[str]:
    """Index terms of `text`: every compound token ('tangerine-42') and, when it has parts, each part, stemmed."""
    terms: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        token = match.group()
        parts = _PART.findall(token)
        if len(parts) > 1:
            terms.append(token)
        terms.extend(stem(p) for p in parts if p not in STOPWORDS)
    return terms


def content_terms(text: str) -> list[str]:
    """The distinct terms of a question that carry its content (stopwords and one-letter words left out)."""
    seen: dict[str, None] = {}
    for term in tokenize(text):
        if len(term) > 1 or term.isdigit():
            seen.setdefault(term, None)
    return list(seen)


@dataclass
class _Chunk:
    document_id: str
    counts: Counter[str]
    length: int


@dataclass
class _OwnerIndex:
    chunks: dict[str, _Chunk] = field(default_factory=dict)
    documents: dict[str, list[str]] = field(default_factory=dict)
    postings: dict[str, set[str]] = field(default_factory=dict)
    total_length: int = 0


class LexicalIndex:
    """BM25 over each owner's chunks; thread-safe (the service calls it from worker threads)."""

    def __init__(self) -> None:
        self._owners: dict[str, _OwnerIndex] = {}
        self._lock = threading.Lock()

    def documents(self, owner: str) -> set[str] | None:
        """The owner's indexed document ids; None when the owner's index was never filled."""
        with self._lock:
            index = self._owners.get(owner)
            return set(index.documents) if index is not None else None

    def add(self, owner: str, document_id: str, chunks: Iterable[tuple[str, str]]) -> None:
        """Index a document's chunks, given as (chunk id, text); a document indexed before is replaced."""
        tokenized = [(chunk_id, Counter(tokenize(text))) for chunk_id, text in chunks]
        with self._lock:
            index = self._owners.setdefault(owner, _OwnerIndex())
            self._remove(index, document_id)
            ids = []
            for chunk_id, counts in tokenized:
                length = sum(counts.values())
                index.chunks[chunk_id] = _Chunk(document_id, counts, length)
                index.total_length += length
                for term in counts:
                    index.postings.setdefault(term, set()).add(chunk_id)
                ids.append(chunk_id)
            index.documents[document_id] = ids

    def ensure_owner(self, owner: str) -> None:
        """Mark an owner's index as filled (an owner with no documents has an empty one)."""
        with self._lock:
            self._owners.setdefault(owner, _OwnerIndex())

    def remove(self, owner: str, document_id: str) -> None:
        with self._lock:
            index = self._owners.get(owner)
            if index is not None:
                self._remove(index, document_id)

    def forget(self, owner: str) -> None:
        with self._lock:
            self._owners.pop(owner, None)

    @staticmethod
    def _remove(index: _OwnerIndex, document_id: str) -> None:
        for chunk_id in index.documents.pop(document_id, []):
            chunk = index.chunks.pop(chunk_id)
            index.total_length -= chunk.length
            for term in chunk.counts:
                posting = index.postings[term]
                posting.discard(chunk_id)
                if not posting:
                    del index.postings[term]

    def search(self, owner: str, query: str, k: int, *, only: set[str] | None = None) -> list[tuple[str, float]]:
        """The owner's `k` chunks with the highest BM25 score for `query` (only those with a score), best first;
        `only`: restricted to chunks of these documents."""
        terms = set(tokenize(query))
        with self._lock:
            index = self._owners.get(owner)
            if index is None or not index.chunks:
                return []
            n = len(index.chunks)
            average = index.total_length / n
            scores: dict[str, float] = {}
            for term in terms:
                posting = index.postings.get(term)
                if not posting:
                    continue
                idf = _idf(n, len(posting))
                for chunk_id in posting:
                    chunk = index.chunks[chunk_id]
                    if only is not None and chunk.document_id not in only:
                        continue
                    tf = chunk.counts[term]
                    norm = tf + K1 * (1 - B + B * chunk.length / average)
                    scores[chunk_id] = scores.get(chunk_id, 0.0) + idf * tf * (K1 + 1) / norm
        return sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]

    def idf(self, owner: str, terms: Sequence[str]) -> dict[str, float]:
        """Each term's idf in the owner's chunks (a term in no chunk gets the highest: it is as rare as can be)."""
        with self._lock:
            index = self._owners.get(owner)
            n = len(index.chunks) if index is not None else 0
            return {t: _idf(n, len(index.postings.get(t, ())) if index is not None else 0) for t in terms}

    def document_frequency(self, owner: str, terms: Sequence[str]) -> dict[str, int]:
        """In how many of the owner's chunks each term occurs."""
        with self._lock:
            index = self._owners.get(owner)
            return {t: len(index.postings.get(t, ())) if index is not None else 0 for t in terms}


def _idf(n: int, df: int) -> float:
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = 60) -> dict[str, float]:
    """Each id's fused score: the sum over rankings of 1 / (k + rank), rank counting from 1."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, id_ in enumerate(ranking, start=1):
            fused[id_] = fused.get(id_, 0.0) + 1.0 / (k + rank)
    return fused
