"""Micro-batching: concurrent embedding requests share one model call.

A server that runs each request's model call alone wastes the accelerator on tiny batches and
makes requests queue behind each other anyway. `MicroBatcher` holds a request for at most
`max_wait` seconds (longer only while the model is busy with an earlier batch), merges every
pending request for the same (context, input type) into one `model.embed` call in a worker
thread, and splits the vectors back.

One request must never fail the others merged with it: each is validated before it joins a
batch, and a merged call that still fails (the engine refuses NaN or infinite vectors with a
`NumericalError`) is re-run one request at a time so only the culprit fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .context import CorpusContext
from .errors import NumericalError
from .model import CDEModel, InputType, check_texts

# The batcher's own name for the error, from before the engine refused such vectors itself.
NonFiniteOutputError = NumericalError


@dataclass
class BatchStats:
    """Counters that show whether merging happens (exposed by the server's /v1/stats)."""

    requests: int = 0
    texts: int = 0
    model_calls: int = 0
    largest_call_requests: int = 0
    failed_requests: int = 0  # failed in the model call, alone (after any re-run)
    rerun_batches: int = 0  # merged calls that failed and were re-run one request at a time


@dataclass
class _Pending:
    texts: list[str]
    tokens: list[int] | None
    future: asyncio.Future[tuple[np.ndarray, list[int]]]


@dataclass
class _Group:
    context: CorpusContext
    input_type: InputType
    since: float
    items: list[_Pending] = field(default_factory=list)


class MicroBatcher:
    """Merges concurrent `embed` calls per (context, input type); one model call at a time.

    Requests are never split: a request with more than `max_texts` texts runs alone, and a
    batch takes whole requests in arrival order until the next would exceed `max_texts`.
    """

    def __init__(self, model: CDEModel, *, max_wait: float = 0.005, max_texts: int = 256):
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait}.")
        if max_texts < 1:
            raise ValueError(f"max_texts must be a positive integer, got {max_texts}.")
        self.model = model
        self.max_wait = max_wait
        self.max_texts = max_texts
        self.stats = BatchStats()
        self._groups: OrderedDict[tuple[str, str], _Group] = OrderedDict()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the dispatcher on the running event loop (the server's lifespan calls this)."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cde-embed")
        self._task = asyncio.create_task(self._dispatch(), name="cde-rag micro-batcher")

    async def close(self) -> None:
        """Stop dispatching and fail whatever is still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for group in self._groups.values():
            for item in group.items:
                if not item.future.done():
                    item.future.set_exception(RuntimeError("The server is shutting down."))
        self._groups.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def embed(
        self,
        texts: list[str],
        *,
        context: CorpusContext,
        input_type: InputType,
        tokens: list[int] | None = None,
    ) -> tuple[np.ndarray, list[int]]:
        """Vectors (len(texts), dim) and token counts of `texts`, possibly computed in a batch
        with other requests. Pass `tokens` (`model.count_tokens(texts, input_type)`) if the
        caller counted them already. Bad texts or a context of another model raise here,
        before the request joins a batch."""
        if self._task is None or self._wakeup is None:
            raise RuntimeError("MicroBatcher.start() was not called.")
        texts = check_texts(texts)
        self.model.check_context(context)
        if tokens is not None and len(tokens) != len(texts):
            raise ValueError(f"tokens has {len(tokens)} counts for {len(texts)} texts.")
        future: asyncio.Future[tuple[np.ndarray, list[int]]] = (
            asyncio.get_running_loop().create_future()
        )
        # The numbers (checksum), not the recipe (fingerprint): a float32 and a bfloat16 fit of
        # one minicorpus are different contexts, never one batch.
        key = (context.checksum, input_type)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(context, input_type, time.monotonic())
        group.items.append(_Pending(texts, tokens, future))
        self._wakeup.set()
        return await future

    async def _dispatch(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            _, oldest = next(iter(self._groups.items()))
            delay = oldest.since + self.max_wait - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            context, input_type, batch = self._take()
            if not self._groups:
                self._wakeup.clear()
            if batch:
                await self._run(context, input_type, batch)

    def _take(self) -> tuple[CorpusContext, InputType, list[_Pending]]:
        """Whole requests of the oldest group, up to `max_texts` texts; the rest stays queued."""
        key, group = next(iter(self._groups.items()))
        live = [item for item in group.items if not item.future.done()]
        batch: list[_Pending] = []
        total = 0
        while live and (not batch or total + len(live[0].texts) <= self.max_texts):
            item = live.pop(0)
            batch.append(item)
            total += len(item.texts)
        if live:
            group.items = live
            self._groups.move_to_end(key, last=False)
        else:
            del self._groups[key]
        return group.context, group.input_type, batch

    async def _run(
        self, context: CorpusContext, input_type: InputType, batch: list[_Pending]
    ) -> None:
        texts = [text for item in batch for text in item.texts]
        uncounted = [item.texts for item in batch if item.tokens is None]
        loop = asyncio.get_running_loop()
        self.stats.model_calls += 1
        try:
            vectors, counted = await loop.run_in_executor(
                self._executor, self._compute, context, input_type, texts, uncounted
            )
        except Exception as exc:
            if len(batch) > 1:
                # Someone in the batch made the merged call fail: find out who, alone.
                self.stats.rerun_batches += 1
                for item in batch:
                    await self._run(context, input_type, [item])
                return
            self.stats.failed_requests += 1
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        self.stats.requests += len(batch)
        self.stats.texts += len(texts)
        self.stats.largest_call_requests = max(self.stats.largest_call_requests, len(batch))
        counts = iter(counted)
        start = 0
        for item in batch:
            end = start + len(item.texts)
            tokens = item.tokens if item.tokens is not None else next(counts)
            rows = vectors[start:end]
            start = end
            if not item.future.done():
                item.future.set_result((rows, tokens))

    def _compute(
        self,
        context: CorpusContext,
        input_type: InputType,
        texts: list[str],
        uncounted: list[list[str]],
    ) -> tuple[np.ndarray, list[list[int]]]:
        vectors = self.model.embed(
            texts, context=context, input_type=input_type, show_progress=False
        )
        return vectors, [self.model.count_tokens(part, input_type) for part in uncounted]
