"""Token windows over extracted text: exact offsets, the size limit, overlap, and boundaries."""

from __future__ import annotations

import itertools

import pytest
from tokenizers import Tokenizer

from inference_api.documents.chunking import TokenChunker
from inference_api.documents.embedding import bundled_model_path
from tests.documents.samples import text_pages


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    # The embedding model's own tokenizer file, without loading the model.
    return Tokenizer.from_file(str(bundled_model_path() / "tokenizer.json"))


@pytest.fixture(scope="module")
def long_text() -> str:
    return "\n\n".join("\n".join(page) for page in text_pages(6))


def test_chunks_are_exact_slices_within_the_limit(tokenizer: Tokenizer, long_text: str) -> None:
    chunker = TokenChunker(tokenizer, chunk_tokens=64, overlap_tokens=16)
    chunks = chunker.split(long_text)
    assert len(chunks) > 10
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert long_text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.text == chunk.text.strip()
        assert chunker.count_tokens(chunk.text) == chunk.tokens <= 64
        # Never inside a word: the characters either side of a chunk are not letters of the same word.
        assert chunk.char_start == 0 or not long_text[chunk.char_start - 1].isalnum()
        assert chunk.char_end == len(long_text) or not long_text[chunk.char_end].isalnum()


def test_chunks_overlap_and_cover_the_text(tokenizer: Tokenizer, long_text: str) -> None:
    chunks = TokenChunker(tokenizer, chunk_tokens=64, overlap_tokens=16).split(long_text)
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(long_text)
    for before, after in itertools.pairwise(chunks):
        assert before.char_start < after.char_start < before.char_end  # overlapping, always moving on


def test_no_overlap(tokenizer: Tokenizer, long_text: str) -> None:
    chunks = TokenChunker(tokenizer, chunk_tokens=64, overlap_tokens=0).split(long_text)
    for before, after in itertools.pairwise(chunks):
        assert before.char_end <= after.char_start
        assert long_text[before.char_end : after.char_start].strip() == ""


def test_windows_end_at_paragraphs_and_sentences(tokenizer: Tokenizer) -> None:
    sentence = "The committee will meet again in March to review the revised budget proposal. "
    text = "\n\n".join(sentence * 3 for _ in range(12))
    chunks = TokenChunker(tokenizer, chunk_tokens=60, overlap_tokens=0).split(text)
    assert all(c.text.endswith(".") for c in chunks)


def test_one_long_word_is_cut(tokenizer: Tokenizer) -> None:
    text = "hash " + "a1b2c3d4" * 200 + " end"
    chunks = TokenChunker(tokenizer, chunk_tokens=32, overlap_tokens=4).split(text)
    assert all(c.tokens <= 32 for c in chunks)
    assert chunks[-1].text.endswith("end")


def test_short_and_empty_text(tokenizer: Tokenizer) -> None:
    chunker = TokenChunker(tokenizer)
    [only] = chunker.split("  The access code of the Zanzibar vault is 4471.  ")
    assert only.text == "The access code of the Zanzibar vault is 4471." and only.char_start == 2
    assert chunker.split("") == [] and chunker.split(" \n\t ") == []


def test_the_models_truncation_does_not_apply(tokenizer: Tokenizer, long_text: str) -> None:
    # tokenizer.json carries the model's truncation at 128 tokens: chunking must still see the whole text.
    assert tokenizer.truncation is not None
    chunks = TokenChunker(tokenizer, chunk_tokens=200).split(long_text)
    assert chunks[-1].char_end == len(long_text)


def test_settings_are_checked(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError):
        TokenChunker(tokenizer, chunk_tokens=4)
    with pytest.raises(ValueError):
        TokenChunker(tokenizer, chunk_tokens=100, overlap_tokens=60)
