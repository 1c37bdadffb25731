"""How many of 8 greedy prompts come out identical alone and inside a busy batch, per DTYPE.

.venv/bin/python -m bench.invariance [--dtypes float32,bfloat16,int8] [--data-dir .cache/bench-data]
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from inference_api.app import create_app
from inference_api.modeling import builtin
from inference_api.settings import ApiKeyConfig, Settings

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three primary colors.",
    "What is 12 times 12?",
    "Give me a tip for learning to cook, with a short example of a simple recipe.",
    "Who wrote Romeo and Juliet?",
    "Describe a cat.",
]
KEY = "sk-invariance-0123456789abcdef"


async def agreement(data_dir: Path, dtype: str, max_new_tokens: int) -> int:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=data_dir, dtype=dtype, api_keys=[ApiKeyConfig(name="bench", key=KEY)]
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        LifespanManager(app, startup_timeout=300),
        httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as http,
    ):
        for _ in range(3000):  # five minutes at most
            if (await http.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.1)

        async def run(prompt: str, **extra: object) -> str:
            body = {"prompt": prompt, "max_new_tokens": max_new_tokens, **extra}
            response = await http.post("/infer", json=body, headers={"X-API-Key": KEY})
            response.raise_for_status()
            return str(response.json()["result"])

        alone = [await run(p) for p in PROMPTS]
        noise = [
            run(f"Tell me about the number {n}.", do_sample=True, seed=n, max_new_tokens=8 + 5 * n) for n in range(4)
        ]
        together = await asyncio.gather(*(run(p) for p in PROMPTS), *noise)
    return sum(a == b for a, b in zip(alone, together, strict=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,bfloat16,int8")
    parser.add_argument("--data-dir", type=Path, default=Path(".cache/bench-data"))
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    builtin.prepare_builtin(args.data_dir)
    print("| DTYPE | greedy prompts identical alone and in a busy batch |\n|---|---|")
    for dtype in args.dtypes.split(","):
        same = asyncio.run(agreement(args.data_dir, dtype, args.max_new_tokens))
        print(f"| {dtype} | {same} of {len(PROMPTS)} |", flush=True)


if __name__ == "__main__":
    main()
