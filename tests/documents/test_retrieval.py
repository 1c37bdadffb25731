"""Hybrid retrieval (BM25 beside the vectors), the evidence gate, citations to the place, the grounded check."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from inference_api.documents import DocumentService
from inference_api.documents.evidence import Evidence, sentences
from inference_api.documents.grounding import Grounding, Grounds
from inference_api.documents.lexical import LexicalIndex, reciprocal_rank_fusion, tokenize
from inference_api.documents.parsing import DocumentParser
from inference_api.documents.service import place_of
from inference_api.documents.types import SearchHit
from tests.documents.samples import _FILLER, sample

if TYPE_CHECKING:
    from tests.documents.conftest import DocumentServiceFactory

CODE_FACT = "The locker code for bay 9 is QX-7731."
# Long enough that the fact is one sentence among many in its chunk: the chunk's cosine to a question about
# the code is low, although the chunk answers it.
CODE_DOCUMENT = (" ".join(_FILLER * 3) + f" {CODE_FACT} " + " ".join(_FILLER[::-1] * 2)).encode()


def test_tokens_keep_codes_whole_and_in_parts() -> None:
    terms = tokenize("The password is tangerine-42; it opens at 06:40 (version 3.8.1).")
    assert {"tangerine-42", "tangerine", "42", "06:40", "3.8.1", "password", "open"} <= set(terms)
    assert "the" not in terms and "is" not in terms


def test_lexical_index_adds_replaces_removes_and_separates_owners() -> None:
    index = LexicalIndex()
    index.add("alice", "d1", [("d1-0", "The vault code is 4471."), ("d1-1", "Tomatoes need sunlight.")])
    index.add("bob", "d2", [("d2-0", "The vault code is 9999.")])
    assert [c for c, _ in index.search("alice", "vault 4471", 5)] == ["d1-0"]
    assert [c for c, _ in index.search("bob", "vault", 5)] == ["d2-0"]
    index.add("alice", "d1", [("d1-0", "Nothing about it any more.")])  # stored again: replaced
    assert index.search("alice", "vault", 5) == []
    index.remove("alice", "d1")
    assert index.documents("alice") == set()
    assert index.documents("carol") is None  # never filled
    assert index.search("bob", "vault", 5, only={"other"}) == []


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]])
    assert max(fused, key=fused.__getitem__) == "b"
    assert fused["a"] > fused["d"]


def test_sentences_skip_headings_and_keep_titles_together() -> None:
    text = (
        "Fares\n\nHarbor Ferry timetable (archived 2019 edition)\n\n"
        "Plot 17 was given to Mr. Okafor, who grows pumpkins. Taps open in April.\ndevice.firmware: 3.8.1"
    )
    assert sentences(text) == [
        "Plot 17 was given to Mr. Okafor, who grows pumpkins.",
        "Taps open in April.",
        "device.firmware: 3.8.1",
    ]


async def test_lexical_index_follows_uploads_deletes_and_owners(
    make_service: DocumentServiceFactory,
) -> None:
    service = make_service()
    name, data = sample("txt")
    stored = await service.ingest("alice", name, data)
    await service.ingest("bob", "other.txt", b"The vault in Geneva has the code 1234.")
    hits = await service.search("alice", "4471", k=3)  # a bare number: the lexical side finds it
    assert hits[0].document_id == stored.document_id and hits[0].lexical_score > 0
    assert service.lexical.documents("alice") == {stored.document_id}
    assert all(h.document_id == stored.document_id for h in hits)  # never another owner's chunk

    added = await service.ingest("alice", "late.txt", b"The spare key of the shed is under the blue pot.")
    assert service.lexical.documents("alice") == {stored.document_id, added.document_id}
    assert (await service.search("alice", "blue pot", k=1))[0].document_id == added.document_id

    await service.delete("alice", stored.document_id)
    assert service.lexical.documents("alice") == {added.document_id}
    assert all(h.document_id != stored.document_id for h in await service.search("alice", "4471", k=3))

    # Another replica on the same store fills its index from the store on first use, and catches up
    # with a document stored by this one since.
    replica = make_service()
    assert replica.lexical.documents("alice") is None
    await replica.search("alice", "shed", k=1)
    assert replica.lexical.documents("alice") == {added.document_id}
    newer = await service.ingest("alice", "newer.txt", b"The boiler was serviced on the 3rd of May.")
    assert (await replica.search("alice", "boiler serviced", k=1))[0].document_id == newer.document_id
    await service.delete("alice", newer.document_id)
    await replica.search("alice", "boiler", k=1)
    assert replica.lexical.documents("alice") == {added.document_id}


async def test_the_gate_keeps_a_chunk_the_old_cosine_threshold_dropped(service: DocumentService) -> None:
    await service.ingest("alice", "notes.txt", CODE_DOCUMENT)
    question = "Where is QX-7731 used?"
    hits = await service.search("alice", question, k=3)
    assert CODE_FACT in hits[0].text
    assert hits[0].score < 0.25  # the old rule (chunk cosine >= RAG_MIN_SCORE 0.25) dropped it

    grounds = await Grounding(service, k=3, min_score=0.3).find("alice", question)
    assert grounds.hits and CODE_FACT in grounds.hits[0].text
    assert grounds.evidence[0].sentence == CODE_FACT
    source = grounds.sources()[0]
    assert source.evidence == CODE_FACT and source.filename == "notes.txt"
    assert CODE_FACT in grounds.prompt(question)
    prompt = grounds.prompt(question)
    assert prompt.index(CODE_FACT) < prompt.index(question)  # the source right before the question
    assert prompt.rstrip().endswith(f"Question: {question}")


async def test_the_gate_refuses_when_no_sentence_supports_the_question(service: DocumentService) -> None:
    await service.ingest("alice", "notes.txt", CODE_DOCUMENT)
    grounds = await Grounding(service, k=3, min_score=0.3).find("alice", "Who won the football cup in 1966?")
    assert grounds.hits == []


def _hit(text: str) -> SearchHit:
    return SearchHit("d", "d-0", 0, "ferry.pdf", text, 0.5, 0, len(text), page=1, place="page 1")


def test_grounded_answers_draw_on_their_sources() -> None:
    fact = "The crossing to Gull Island takes 35 minutes in calm weather."
    grounds = Grounds([_hit(fact)], [Evidence(fact, 0.7, 0.5, fact)])
    question = "How long is the trip to Gull Island?"
    assert grounds.grounded("It takes 35 minutes [1].", question) is True
    assert grounds.grounded("The trip takes 2 hours and 15 minutes.", question) is False  # numbers not in it
    assert grounds.grounded("Gull Island is a lovely place to visit.", question) is False  # nothing new from it
    assert grounds.grounded("The documents do not say.", question) is True
    assert Grounds([], []).grounded("anything", question) is None


@pytest.mark.parametrize(
    ("file_type", "place"),
    [
        ("pdf", "page 2"),
        ("docx", "section Vault notes"),
        ("md", "section Vault notes"),
        ("html", "section Vault notes"),
        ("csv", "row 3"),
        ("xlsx", "sheet Notes row 3"),
        ("eml", "body"),
        ("pptx", "slide 2"),
        ("json", "field notes"),
        ("epub", "section Chapter 2"),
    ],
)
def test_each_type_records_the_place_of_the_fact(file_type: str, place: str) -> None:
    parsed = DocumentParser().parse(*sample(file_type))
    at = parsed.text.index("The access code of the Zanzibar vault")
    assert place_of(parsed.places, at, at + 10) == place


def test_places_of_spans_name_their_range() -> None:
    places = ((0, "row 1"), (10, "row 2"), (20, "row 3"), (30, "row 4"))
    assert place_of(places, 12, 35) == "rows 2-4"
    assert place_of(((0, "page 1"), (50, "page 2")), 40, 60) == "pages 1-2"
    assert place_of(((0, "section A"), (5, "section A > B")), 0, 20) == "section A"
    assert place_of((), 0, 5) is None


async def test_search_results_carry_places(service: DocumentService) -> None:
    name, data = sample("pdf")
    await service.ingest("alice", name, data)
    hit = (await service.search("alice", "Zanzibar vault access code", k=1))[0]
    assert hit.page == 1 and hit.place == "pages 1-2"  # one chunk holds both short pages
