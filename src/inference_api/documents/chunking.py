"""Splitting extracted text into overlapping windows of the embedding model's tokens.

Windows are counted in the embedding tokenizer's own tokens, so that no chunk is silently cut by the
model's sequence limit, and every chunk is an exact slice of the text (`text[char_start:char_end]`),
so that a source can be shown in place. A window ends at a paragraph or sentence end when one is near,
and never inside a word.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

_SENTENCE_ENDS = frozenset({".", "!", "?", ";", ":"})


@dataclass(frozen=True)
class Chunk:
    """One window of the text: its position in the document and the characters it spans."""

    index: int
    text: str
    char_start: int
    char_end: int
    tokens: int


class TokenChunker:
    def __init__(self, tokenizer: Tokenizer, *, chunk_tokens: int = 200, overlap_tokens: int = 40) -> None:
        if chunk_tokens < 8:
            raise ValueError(f"chunk_tokens must be at least 8, not {chunk_tokens}")
        if not 0 <= overlap_tokens <= chunk_tokens // 2:
            raise ValueError(f"overlap_tokens must be between 0 and chunk_tokens / 2, not {overlap_tokens}")
        # A private copy: the model's tokenizer carries the model's truncation and padding, which
        # would cut the document at the model's limit; and changing them on the shared one would race.
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def split(self, text: str) -> list[Chunk]:
        """Windows of at most `chunk_tokens` tokens, each starting `overlap_tokens` before the last one ended."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        offsets: list[tuple[int, int]] = encoding.offsets
        words: list[int | None] = encoding.word_ids
        total = len(offsets)
        chunks: list[Chunk] = []
        start = 0
        while start < total:
            end = self._window_end(text, offsets, words, start, total)
            char_start, char_end = offsets[start][0], offsets[end - 1][1]
            chunks.append(Chunk(len(chunks), text[char_start:char_end], char_start, char_end, end - start))
            if end >= total:
                break
            start = self._next_start(offsets, words, start, end)
        return chunks

    def _window_end(
        self, text: str, offsets: list[tuple[int, int]], words: list[int | None], start: int, total: int
    ) -> int:
        limit = start + self.chunk_tokens
        if limit >= total:
            return total
        # Look back over the last fifth of the window for the best place to stop: a paragraph break,
        # else a sentence end, else a space, else a word boundary without one (CJK, "a/b").
        floor = start + max(1, self.chunk_tokens * 4 // 5)
        sentence: int | None = None
        space: int | None = None
        word: int | None = None
        for end in range(limit, floor - 1, -1):
            gap = text[offsets[end - 1][1] : offsets[end][0]]
            if "\n\n" in gap:
                return end
            if gap and space is None:
                space = end
            if gap and sentence is None and text[offsets[end - 1][0] : offsets[end - 1][1]] in _SENTENCE_ENDS:
                sentence = end
            if word is None and _word_boundary(words, end):
                word = end
        for best in (sentence, space, word):
            if best is not None:
                return best
        # One "word" longer than a fifth of the window (a hash, a URL): cut it at the limit.
        return limit

    def _next_start(self, offsets: list[tuple[int, int]], words: list[int | None], start: int, end: int) -> int:
        """Where the next window starts: `overlap_tokens` back from `end`, moved back to where a word starts."""
        nxt = end - self.overlap_tokens
        if nxt == end:
            return end
        # Back off at most another overlap's worth, so that a window always moves on by most of its length.
        lowest = max(start + 1, nxt - self.overlap_tokens)
        for candidate in range(nxt, lowest - 1, -1):
            if offsets[candidate - 1][1] < offsets[candidate][0]:
                return candidate
        for candidate in range(nxt, lowest - 1, -1):
            if _word_boundary(words, candidate):
                return candidate
        return nxt


def _word_boundary(words: list[int | None], index: int) -> bool:
    """True when token `index` starts a word (is not the continuation of the token before it)."""
    return words[index] is None or words[index] != words[index - 1]
