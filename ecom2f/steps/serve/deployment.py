"""The Ray Serve replica of ``ecom2f serve``: the parent loaded once with every budget's gate, one
HTTP route that segments an image at the budget the request names, and a health route.

Requests are batched by ``serve.batch`` (``serving.serve.max_batch_size``, ``batch_wait_timeout_s``);
a batch is split by budget (each budget is its own gate), and within a budget :class:`Predictor`
groups the images by size and chosen depth, so each image costs what its depth costs and gets
what it would get alone. Everything a request can get wrong (the body, the image, the budget) is
checked before it joins a batch, so one bad request never fails the others. The model runs in a
worker thread, so the replica keeps taking requests (and filling the next batch) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from ecom2f.errors import UserError
from ecom2f.steps.predict.formats import compact
from ecom2f.steps.predict.images import TOO_LARGE, ImageRejected, decode_user_image
from ecom2f.steps.serve.http_api import RequestError, answer, parse_fields, parse_image

log = logging.getLogger(__name__)

__all__ = ["Segmenter"]

HEALTH_PATHS = ("/healthz", "/health")


@dataclass
class _Job:
    rgb: np.ndarray
    budget: str | None
    depth: int | None


class Segmenter:
    """One replica.

    Args:
        config: the run's resolved config (``config.model_dump(mode="json")``).
        categories: contiguous class id -> ``{"id", "name", "isthing"}``.
    """

    def __init__(self, config: dict, categories: list[dict]) -> None:
        import torch

        from ecom2f.steps.predict.predictor import Predictor
        from ecom2f.steps.runs import worker_config

        self.config = worker_config(config, source="ecom2f serve")
        settings = self.config.serving.serve
        torch.set_num_threads(max(1, int(os.environ.get("ECOM2F_SERVE_THREADS", int(settings.num_cpus) or 1))))
        self.predictor = Predictor.from_run(self.config)
        self.predictor.warm_up()
        self.categories = categories
        self.max_bytes = int(settings.max_request_mb * 1024 * 1024)
        self.segment.set_max_batch_size(settings.max_batch_size)
        self.segment.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        log.info("replica ready: budgets %s, default %s, device %s", self.predictor.budgets,
                 self.predictor.default_budget, self.predictor.device)

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        arrived = time.perf_counter()
        path = request.url.path[len(request.scope.get("root_path", "")):].rstrip("/")
        try:
            if path in HEALTH_PATHS:
                return JSONResponse(self.health())
            if path not in ("", "/predict"):
                raise RequestError(404, f"no route {request.url.path}; POST an image to the root, GET /healthz")
            if request.method != "POST":
                raise RequestError(405, f"{request.method} {request.url.path}: POST an image here")
            job, masks = await self._read(request)
            result, batch_size = await self.segment(job)
        except RequestError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        body = answer(result, self.categories, masks)
        body["batch_size"] = batch_size
        body["latency_ms"] = {"model": 1000 * result["seconds"], "request": 1000 * (time.perf_counter() - arrived)}
        return JSONResponse(body)

    def health(self) -> dict:
        return {"status": "ok", "budgets": self.predictor.budgets, "default_budget": self.predictor.default_budget,
                "device": str(self.predictor.device), "precision": self.predictor.precision,
                "tasks": self.predictor.tasks, "layers": self.predictor.model.num_encoder_layers}

    async def _read(self, request) -> tuple[_Job, str]:
        """The request's image, decoded, and its choice; RequestError for anything unusable."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise RequestError(413, f"the body has {int(declared):,} bytes; the limit is {self.max_bytes:,} "
                                    "(serving.serve.max_request_mb)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_bytes:
                raise RequestError(413, f"the body exceeds {self.max_bytes:,} bytes (serving.serve.max_request_mb)")
        data, form = parse_image(request.headers.get("content-type", ""), bytes(body))
        fields = parse_fields(request.url.query, form)
        try:
            budget, _ = self.predictor.resolve(fields["budget"], fields["depth"])
        except UserError as error:
            raise RequestError(400, str(error)) from None
        try:
            decoded = decode_user_image(data, "the request's image", self.config.serving.max_pixels)
        except ImageRejected as error:
            raise RequestError(413 if error.kind == TOO_LARGE else 400, str(error)) from None
        return _Job(decoded.rgb, budget, fields["depth"]), fields["masks"]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def segment(self, jobs: list[_Job]) -> list[tuple[dict, int]]:
        """A batch of requests -> per request ``(compact result, batch size)``; the model in a thread."""
        results = await asyncio.to_thread(self._segment, jobs)
        return [(result, len(jobs)) for result in results]

    def _segment(self, jobs: list[_Job]) -> list[dict]:
        results: list[dict | None] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault((job.budget, job.depth), []).append(index)
        for (budget, depth), members in groups.items():
            predictions = self.predictor.predict([jobs[i].rgb for i in members], budget=budget, depth=depth)
            for i, prediction in zip(members, predictions):
                results[i] = compact(prediction)
        return results
