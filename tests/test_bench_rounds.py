"""Measuring servers in turns: requests split into blocks, blocks merged back, and a ratio per round."""

from __future__ import annotations

import pytest
from bench.cli import block_sizes, parse_args
from bench.load import LevelResult, RequestResult
from bench.report import round_ratios


def _level(tokens: int, seconds: float, concurrency: int = 1) -> LevelResult:
    result = RequestResult(ok=True, latency=seconds, tokens=tokens, ttft=0.05, token_source="metadata")
    return LevelResult(concurrency=concurrency, requests=1, wall_time=seconds, results=(result,))


def test_requests_are_split_as_evenly_as_possible() -> None:
    assert block_sizes(10, 4, 1) == [3, 3, 2, 2]
    assert block_sizes(8, 4, 1) == [2, 2, 2, 2]
    assert sum(block_sizes(33, 7, 1)) == 33


def test_blocks_keep_at_least_twice_the_concurrency() -> None:
    assert block_sizes(40, 5, 4) == [8, 8, 8, 8, 8]
    assert block_sizes(64, 5, 16) == [32, 32]
    assert block_sizes(64, 5, 32) == [64]
    assert block_sizes(3, 5, 1) == [3]


def test_blocks_combine_into_one_level_with_summed_time() -> None:
    combined = LevelResult.combined([_level(64, 1.0), _level(64, 3.0)])
    assert combined.requests == 2
    assert combined.wall_time == pytest.approx(4.0)
    assert combined.tokens == 128
    assert combined.tokens_per_s == pytest.approx(32.0)


def test_round_ratios_pair_blocks_of_the_same_round() -> None:
    blocks = {
        "ours": {1: [_level(64, 1.0), _level(64, 2.0), _level(64, 1.0)]},
        "llamacpp": {1: [_level(64, 2.0), _level(64, 2.0), _level(64, 0.5)]},
    }
    (line,) = round_ratios(blocks)
    # Rounds: 2.00x, 1.00x, 0.50x.
    assert "median 1.00x" in line
    assert "0.50x to 2.00x over 3 rounds" in line
    assert "llamacpp at c=1" in line


def test_a_single_round_or_no_reference_gives_no_ratio_line() -> None:
    assert round_ratios({"ours": {1: [_level(64, 1.0)]}, "llamacpp": {1: [_level(64, 1.0)]}}) == []
    assert round_ratios({"llamacpp": {1: [_level(64, 1.0), _level(64, 1.0)]}}) == []


def test_rounds_must_be_positive() -> None:
    assert parse_args(["--rounds", "3"]).rounds == 3
    assert parse_args([]).rounds == 1
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])
