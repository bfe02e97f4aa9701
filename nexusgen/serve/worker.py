"""The model worker: one thread owns the model; concurrent requests are gathered into batched calls.

Requests become `Job`s in a bounded FIFO queue. The worker takes the oldest job, then gathers queued jobs
that can share its call (same task and settings: `Job.key`) until the batch holds `max_batch` items or
`max_wait_ms` has passed since it took the first; a full queue refuses new jobs at once (429 with
Retry-After). Each batch is one `NexusGen` call (one AR pass and one decoder batch for images), and every
item keeps its own seed, so a request's result does not depend on the batch it landed in.

A job is dropped before it runs when its client has gone (`Job.cancel`) or its deadline has passed
(503). A `ValueError` in a batch is re-run job by job so only the request at fault fails; any other
error fails that batch's jobs (500) and the worker carries on: it never dies with a request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nexusgen.serve.errors import APIError

log = logging.getLogger("nexusgen.serve")


@dataclass
class Job:
    """One request's work.

    Attributes:
        task: "generate" (items: prompts), "edit" (items: (image, prompt) pairs) or "chat" (items:
            conversations).
        items: what the model processes, one entry per output (an n=2 request has two items).
        seeds: one seed per item.
        options: keyword arguments of the model call, shared by the whole batch.
        deadline: `time.monotonic()` after which the job is not started.
    """

    task: str
    items: list
    seeds: list[int]
    options: dict
    deadline: float
    future: asyncio.Future = field(repr=False)
    loop: asyncio.AbstractEventLoop = field(repr=False)
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def key(self) -> tuple:
        """Jobs with equal keys can run in one call."""
        return (self.task, tuple(sorted(self.options.items())))

    @property
    def size(self) -> int:
        return len(self.items)

    def cancel(self) -> None:
        """The client went away: drop the job if it has not started (its result is discarded otherwise)."""
        self.cancelled = True

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        """Hand the result (or error) to the waiting request, from any thread."""
        def settle():
            if not self.future.done():
                self.future.set_exception(error) if error is not None else self.future.set_result(result)
        self.loop.call_soon_threadsafe(settle)


class Worker:
    """The queue and the thread that runs batches on `model` (a `NexusGen`).

    Args:
        model: the `NexusGen` to serve.
        max_batch: most items in one call.
        max_wait_ms: longest wait for a batch to fill.
        max_queue: most queued jobs.
        metrics: `Metrics` (queue depth, batch sizes, dropped jobs).
    """

    def __init__(self, model, *, max_batch: int, max_wait_ms: float, max_queue: int, metrics):
        self.model, self.metrics = model, metrics
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.queue: collections.deque[Job] = collections.deque()
        self.condition = threading.Condition()
        self.accepting = True
        self.stopping = False
        self.running = 0  # items in the call now running
        self.item_seconds = 1.0  # running estimate of one item's time, for Retry-After
        self.thread = threading.Thread(target=self._loop, name="nexusgen-worker", daemon=True)

    # -- the request side (event loop) ---------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job, or raise APIError 429 (queue full) / 503 (shutting down) at once."""
        with self.condition:
            if not self.accepting:
                raise APIError(503, "the server is shutting down; retry on another replica", code="shutting_down",
                               headers={"Retry-After": "5"})
            if len(self.queue) >= self.max_queue:
                self.metrics.rejected("queue_full")
                raise APIError(429, f"the server is busy: {len(self.queue)} requests are waiting; retry later",
                               code="queue_full", headers={"Retry-After": str(self.retry_after())})
            self.queue.append(job)
            self.metrics.queue_depth(len(self.queue))
            self.condition.notify()

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on (at least 1)."""
        waiting = sum(job.size for job in self.queue) + self.running
        return max(1, math.ceil(waiting * self.item_seconds / max(1, self.max_batch) * 2))

    @property
    def depth(self) -> int:
        return len(self.queue)

    def stop_accepting(self) -> None:
        """Draining: refuse new jobs (503); queued and running ones still finish."""
        with self.condition:
            self.accepting = False

    def close(self, timeout: float) -> bool:
        """Finish the queue, stop the thread; True when it stopped within `timeout` seconds."""
        with self.condition:
            self.accepting, self.stopping = False, True
            self.condition.notify_all()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    # -- the worker thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            self._run(batch)

    def _gather(self) -> list[Job] | None:
        """Block for the oldest live job, then add compatible queued jobs until the batch is full or the
        wait is over. None once stopping with nothing queued."""
        with self.condition:
            first = None
            while first is None:
                while not self.queue:
                    if self.stopping:
                        return None
                    self.condition.wait()
                first = self._live(self.queue.popleft())
            batch, size = [first], first.size
            until = time.monotonic() + self.max_wait
            while size < self.max_batch:
                size += self._take_compatible(first.key, batch, self.max_batch - size)
                remaining = until - time.monotonic()
                if size >= self.max_batch or remaining <= 0 or self.stopping:
                    break
                self.condition.wait(remaining)
            self.metrics.queue_depth(len(self.queue))
            self.running = size
            return batch

    def _take_compatible(self, key: tuple, batch: list[Job], room: int) -> int:
        """Move queued jobs with `key` that fit in `room` items into `batch`; returns the items added."""
        added = 0
        for job in list(self.queue):
            if job.key == key and job.size <= room - added:
                self.queue.remove(job)
                if self._live(job) is not None:
                    batch.append(job)
                    added += job.size
        return added

    def _live(self, job: Job) -> Job | None:
        """The job, or None after dropping it (client gone, deadline passed)."""
        if job.cancelled:
            self.metrics.dropped("client_disconnected")
            return None
        if time.monotonic() > job.deadline:
            self.metrics.dropped("deadline_exceeded")
            job.resolve(error=APIError(503, "the request waited past its deadline; retry later",
                                       code="deadline_exceeded", headers={"Retry-After": str(self.retry_after())}))
            return None
        return job

    def _run(self, batch: list[Job]) -> None:
        started = time.monotonic()
        items = sum(job.size for job in batch)
        self.metrics.batch(batch[0].task, items)
        for job in batch:
            self.metrics.queue_wait(started - job.enqueued)
        try:
            results = self._call(batch)
        except ValueError:
            results = None  # someone's input is wrong: find out whose, one job at a time
        except Exception as err:  # a bug or an out-of-memory: fail this batch, keep serving
            log.exception("batch of %d %s jobs failed", len(batch), batch[0].task)
            results = [APIError(500, f"internal error ({type(err).__name__})", code="internal_error")] * len(batch)
        if results is None:
            results = [self._alone(job) for job in batch]
        elapsed = time.monotonic() - started
        self.item_seconds = 0.8 * self.item_seconds + 0.2 * elapsed / max(1, items)
        for job, result in zip(batch, results, strict=True):
            job.resolve(error=result) if isinstance(result, BaseException) else job.resolve(result)
        with self.condition:
            self.running = 0

    def _alone(self, job: Job):
        try:
            return self._call([job])[0]
        except ValueError as err:
            return APIError(400, str(err), code="invalid_value")
        except Exception as err:
            log.exception("a %s job failed", job.task)
            return APIError(500, f"internal error ({type(err).__name__})", code="internal_error")

    def _call(self, batch: list[Job]) -> list[list]:
        """One model call for the whole batch -> per job, its list of outputs (one per item)."""
        items = [item for job in batch for item in job.items]
        seeds = [seed for job in batch for seed in job.seeds]
        outputs = RUNNERS[batch[0].task](self.model, items, seeds, batch[0].options)
        results, start = [], 0
        for job in batch:
            results.append(outputs[start:start + job.size])
            start += job.size
        return results


def _generate(model, prompts: list[str], seeds: list[int], options: dict) -> list:
    return model.generate(prompts, seed=seeds, progress=False, **options)


def _edit(model, pairs: list[tuple], seeds: list[int], options: dict) -> list:
    images, prompts = zip(*pairs, strict=True)
    return model.edit(list(images), list(prompts), seed=seeds, progress=False, **options)


def _chat(model, conversations: list[list[dict]], seeds: list[int], options: dict) -> list:
    return model.chat(conversations, seed=seeds, progress=False, **options)


RUNNERS: dict[str, Callable] = {"generate": _generate, "edit": _edit, "chat": _chat}
