"""Ingestion throughput for a generated text PDF: `python -m tests.documents.measure_ingest [--pages 200]`.

Times one whole `DocumentService.ingest` (parse, chunk, embed, store) on a fresh local store, then each
stage alone, and prints pages/s and chunks/s. The embedding model is loaded before the clock starts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from inference_api.documents import ChromaStore, DocumentService, Embedder
from tests.documents.samples import make_pdf, text_pages

_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


async def main() -> None:
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--pages", type=int, default=200)
    options.add_argument("--device", default="cpu")
    options.add_argument("--dtype", choices=list(_DTYPES), default="auto")
    options.add_argument("--batch-size", type=int, default=32)
    args = options.parse_args()

    data = make_pdf(text_pages(args.pages))
    embedder = Embedder.load(args.device, dtype=_DTYPES[args.dtype], batch_size=args.batch_size)
    embedder.embed(["warm-up"])
    print(
        f"{args.pages}-page PDF, {len(data) / 1e6:.2f} MB; {embedder.device}, "
        f"{embedder.dtype}, batch {args.batch_size}, torch threads {torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory() as folder:
        # Stored before `ingest` returns, whatever the size, so that the clock covers the whole work.
        service = DocumentService(ChromaStore.open(data_dir=Path(folder)), embedder, background_bytes=2**62)
        started = time.perf_counter()
        result = await service.ingest("bench", "bench.pdf", data)
        total = time.perf_counter() - started

        started = time.perf_counter()
        parsed = service.parser.parse("bench.pdf", data)
        parse = time.perf_counter() - started
        started = time.perf_counter()
        chunks = service.chunker.split(parsed.text)
        chunk = time.perf_counter() - started
        started = time.perf_counter()
        vectors = service.embedder.embed([c.text for c in chunks])
        embed = time.perf_counter() - started
        started = time.perf_counter()
        info = await service.get("bench", result.document_id)
        service.store.save_document(info, chunks, [None] * len(chunks), vectors)
        store = time.perf_counter() - started
        service.close()

    print(f"ingest: {total:.1f}s for {args.pages} pages, {result.chunks} chunks, {len(parsed.text):,} characters")
    print(f"  {args.pages / total:.1f} pages/s, {result.chunks / total:.1f} chunks/s")
    print(f"stages: parse {parse:.2f}s, chunk {chunk:.2f}s, embed {embed:.1f}s, store {store:.2f}s")


if __name__ == "__main__":
    asyncio.run(main())
