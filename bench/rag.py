"""Retrieval and grounded-answer quality over a generated corpus: `python -m bench.rag`.

Starts our server (the real default model, greedy), uploads every document of bench/rag_eval (written into
real files of each type at run time), then for every question asks `/documents/search` (retrieval) and
`/infer` with `use_documents` (the answer). It prints:

- hit@1, hit@3, MRR: the rank of the document holding the answer among the searched chunks' documents;
- answer rate: answers containing the expected fact (answerable questions);
- refusal on unanswerable: answers that say the documents do not hold it, for questions no document answers;
- refusal precision: of all refusals, those on unanswerable questions;
- wrong citations: non-refused answers to answerable questions whose first source is another document;
- grounded flag: how often the server marked an answer `grounded: false` (when it reports the flag).

An upload the server refuses (a type it does not read) counts as a miss for its questions. Each answer, its
sources and its verdicts go to `--out` as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.load import OursApi
from bench.rag_eval.corpus import DOCS, QUESTIONS, Question
from bench.rag_eval.files import render
from bench.servers import OURS_BATCH, ServerProcess, ServerSpec, ours_spec, prepare_model, usable_model_folder

API_KEY = "sk-rag-eval-0123456789abcdef"
_KEYS = json.dumps([{"name": "rag-eval", "key": API_KEY, "scopes": ["infer", "documents"]}])
# What an answer says when it declines: the server's own refusal, and the usual ways a model says it.
_REFUSALS = re.compile(
    r"found nothing|do(?:es)? not (?:contain|mention|say|include|provide|state)|don't (?:contain|mention|know)|"
    r"no information|not mentioned|not (?:stated|provided|specified|given)|cannot answer|can't answer|"
    r"no mention|not in (?:the|your) (?:sources|documents)|unable to (?:answer|find)",
    re.IGNORECASE,
)


@dataclass
class Outcome:
    question: str
    expected: str
    answerable: bool
    file_type: str
    rank: int | None = None  # 1-based rank of the expected document in the search results
    answer: str = ""
    answered: bool = False
    refused: bool = False
    first_source: str | None = None
    grounded: bool | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)


def is_refusal(answer: str) -> bool:
    return bool(_REFUSALS.search(answer))


def contains_fact(answer: str, accepted: Sequence[str]) -> bool:
    text = " ".join(answer.lower().split())
    return any(a.lower() in text for a in accepted)


def _spec(data_dir: Path, env: dict[str, str]) -> ServerSpec:
    """The benchmark's server of ours, with this eval's key (it uploads documents) and answers over /infer."""
    base = ours_spec("ours", "ours", data_dir, OURS_BATCH, "infer")
    return dataclasses.replace(
        base,
        api=OursApi(API_KEY),
        token_note="",
        # Quality, not speed: a slow shared machine must not turn answers into deadline errors.
        env={**base.env, "API_KEYS": _KEYS, "REQUEST_TIMEOUT": "1800", **env},
    )


async def _upload(client: httpx.AsyncClient) -> dict[str, str]:
    """Upload every document; the refusals by file name (status and message)."""
    refused: dict[str, str] = {}
    for doc in DOCS:
        response = await client.post("/upload", files={"file": (doc.filename, render(doc))})
        body = response.json()
        if response.status_code == 202 or body.get("status") == "processing":
            body = await _wait_ready(client, body["document_id"])
        if response.status_code >= 300 or body.get("status") == "failed":
            refused[doc.filename] = f"{response.status_code} {str(body)[:160]}"
    return refused


async def _wait_ready(client: httpx.AsyncClient, document_id: str, wait_s: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = (await client.get(f"/documents/{document_id}")).json()
        if body.get("status") in ("ready", "failed"):
            return body
        await asyncio.sleep(0.5)
    return {"status": "failed", "error": "timed out waiting"}


async def _ask(client: httpx.AsyncClient, q: Question, max_new_tokens: int, gate: asyncio.Semaphore) -> Outcome:
    out = Outcome(q.text, q.filename, q.answerable, q.filename.rpartition(".")[2])
    async with gate:
        found = (await client.post("/documents/search", json={"query": q.text, "k": 5})).json()
        documents: list[str] = []
        for hit in found.get("results", []):
            if hit["filename"] not in documents:
                documents.append(hit["filename"])
        out.rank = documents.index(q.filename) + 1 if q.filename in documents else None
        body = {"prompt": q.text, "use_documents": True, "max_new_tokens": max_new_tokens, "do_sample": False}
        response = await client.post("/infer", json=body)
    answer = response.json()
    if response.status_code != 200:
        out.answer = f"HTTP {response.status_code}: {answer}"
        return out
    out.answer = answer["result"]
    out.sources = answer.get("sources") or []
    out.grounded = answer.get("grounded")
    out.first_source = out.sources[0]["filename"] if out.sources else None
    out.refused = is_refusal(out.answer)
    out.answered = q.answerable and not out.refused and contains_fact(out.answer, q.answers)
    return out


def summarize(outcomes: Sequence[Outcome]) -> dict[str, float | int]:
    answerable = [o for o in outcomes if o.answerable]
    unanswerable = [o for o in outcomes if not o.answerable]
    refusals = [o for o in outcomes if o.refused]
    cited = [o for o in answerable if not o.refused and o.sources]
    flagged = [o for o in outcomes if o.grounded is False]
    return {
        "questions": len(outcomes),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "hit@1": _rate(sum(o.rank == 1 for o in answerable), len(answerable)),
        "hit@3": _rate(sum(o.rank is not None and o.rank <= 3 for o in answerable), len(answerable)),
        "MRR": round(sum(1 / o.rank for o in answerable if o.rank) / max(1, len(answerable)), 3),
        "answer rate": _rate(sum(o.answered for o in answerable), len(answerable)),
        "refusal on unanswerable": _rate(sum(o.refused for o in unanswerable), len(unanswerable)),
        "refusal precision": _rate(sum(not o.answerable for o in refusals), len(refusals)),
        "wrong citations": sum(o.first_source != o.expected for o in cited),
        "grounded: false": len(flagged),
        # What RAG_UNGROUNDED=refuse makes of a run with `flag`: an ungrounded answer becomes the refusal.
        "answer rate, ungrounded refused": _rate(
            sum(o.answered and o.grounded is not False for o in answerable), len(answerable)
        ),
        "refusal on unanswerable, ungrounded refused": _rate(
            sum(o.refused or o.grounded is False for o in unanswerable), len(unanswerable)
        ),
    }


def _rate(n: int, total: int) -> float:
    return round(n / total, 3) if total else 0.0


def render_table(label: str, summary: dict[str, float | int], outcomes: Sequence[Outcome]) -> str:
    lines = [f"### {label}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    by_type: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_type[o.file_type].append(o)
    lines += ["", "| type | questions | hit@3 | answered | refused (unanswerable) |", "|---|---|---|---|---|"]
    for kind, group in sorted(by_type.items()):
        ans = [o for o in group if o.answerable]
        una = [o for o in group if not o.answerable]
        hit3 = sum(o.rank is not None and o.rank <= 3 for o in ans)
        lines.append(
            f"| {kind} | {len(group)} | {hit3}/{len(ans)} | {sum(o.answered for o in ans)}/{len(ans)} "
            f"| {sum(o.refused for o in una)}/{len(una)} |"
        )
    return "\n".join(lines)


async def evaluate(base_url: str, max_new_tokens: int, concurrency: int) -> tuple[list[Outcome], dict[str, str]]:
    headers = {"X-API-Key": API_KEY}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600.0, trust_env=False) as client:
        refused = await _upload(client)
        gate = asyncio.Semaphore(concurrency)
        outcomes = await asyncio.gather(*(_ask(client, q, max_new_tokens, gate) for q in QUESTIONS))
    return list(outcomes), refused


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.rag", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".cache/bench-rag"), help="server data (model kept)")
    parser.add_argument("--label", default="this checkout", help="the table's heading")
    parser.add_argument("--out", type=Path, default=Path(".cache/bench-rag/outcomes.jsonl"))
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # A fresh document store each run; the prepared model is kept.
    shutil.rmtree(data_dir / "chroma", ignore_errors=True)
    if usable_model_folder(data_dir) is None:
        print("preparing the model (once)...", file=sys.stderr)
        prepare_model(data_dir, data_dir / "prepare.log")
    env = dict(item.split("=", 1) for item in args.env)
    started = time.monotonic()
    with ServerProcess(_spec(data_dir, env), data_dir / "server.log") as server:
        server.wait_ready(300.0)
        outcomes, refused = asyncio.run(evaluate(server.base_url, args.max_new_tokens, args.concurrency))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for o in outcomes:
            f.write(json.dumps(asdict(o)) + "\n")
    print(render_table(args.label, summarize(outcomes), outcomes))
    if refused:
        print("\nUploads refused:")
        for name, why in refused.items():
            print(f"- {name}: {why}")
    print(
        f"\n{len(DOCS)} documents, {len(QUESTIONS)} questions, {time.monotonic() - started:.0f} s; "
        f"details in {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
