"""POST /infer on the generation pipeline: its body mapped onto a job, the job's events onto its answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

from inference_api.api.errors import error_body
from inference_api.api.sse import sse
from inference_api.engine.types import Completion, TextDelta
from inference_api.errors import ServiceError
from inference_api.generation.limits import default_within_limit
from inference_api.generation.pipeline import GenerationPipeline, Job, figures, grounded
from inference_api.inference.protocol import InferMetadata, InferRequest, InferResponse
from inference_api.modeling.prompt import Message
from inference_api.modeling.registry import ModelRef


class InferenceService:
    def __init__(self, pipeline: GenerationPipeline) -> None:
        self._pipeline = pipeline

    async def prepare(self, body: InferRequest, owner: str, arrived: float) -> Job:
        if body.raw and body.use_documents:
            raise ServiceError.invalid(
                "use_documents", "cannot be combined with raw: sources go into the chat template"
            )
        pipeline = self._pipeline
        default_within_limit(body, pipeline.limits.max_new_tokens)
        ref = pipeline.engine.registry.ref(body.base_model, body.adapter_version)
        pipeline.check(ref, body.max_new_tokens)
        if body.raw:
            return await pipeline.raw_job(
                ref, body.prompt, body.sampling(), arrived, owner=owner, grammar=body.grammar()
            )
        messages: list[Message] = [{"role": "user", "content": body.prompt}]
        return await pipeline.chat_job(
            ref,
            messages,
            body.sampling(),
            arrived,
            owner=owner,
            use_documents=body.use_documents,
            grammar=body.grammar(),
        )

    async def submit(self, job: Job) -> None:
        await self._pipeline.submit(job)

    async def infer(self, body: InferRequest, owner: str, arrived: float) -> InferResponse:
        job = await self.prepare(body, owner, arrived)
        completion = await self._pipeline.complete(job)
        return InferResponse(
            result=completion.text,
            metadata=metadata(completion, arrived),
            sources=job.sources,
            grounded=grounded(job, completion.text),
        )

    async def stream(self, job: Job, arrived: float, request_id: str | None) -> AsyncIterator[str]:
        """Server-Sent Events: one `data:` event per text delta, then one with the result and metadata."""
        sources = [s.model_dump() for s in job.sources] if job.sources is not None else None
        try:
            async for event in self._pipeline.events(job):
                if isinstance(event, TextDelta):
                    yield sse({"delta": event.text})
                else:
                    final: dict[str, object] = {"result": event.text, "metadata": metadata(event, arrived).model_dump()}
                    if sources is not None:
                        final["sources"] = sources
                        final["grounded"] = grounded(job, event.text)
                    yield sse(final)
        except ServiceError as exc:
            yield sse(error_body(exc, request_id), event="error")


def metadata(completion: Completion, arrived: float) -> InferMetadata:
    ref: ModelRef = completion.model
    return InferMetadata(model=ref.base, version=ref.version, **figures(completion, arrived))
