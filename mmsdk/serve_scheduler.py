"""The server's scheduler: one worker thread owns the model and serves a bounded queue of jobs.

A job is an iterator made on the worker (so tokenizing, media encoding and prefill run there too);
the worker keeps up to `max_active` of them going and advances each by one item per round (one
generated token for a generation), so every stream moves while others run. Each sequence has its
own KV cache. With a `StepBatcher` (decoder.batch), a round's jobs run on threads of their own,
taking turns, and their decode steps go through the layers together in one pass. A job whose
client went away is closed at its next turn, which frees its cache.
"""
import asyncio
import collections
import ctypes
import ctypes.util
import functools
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More jobs are waiting than the server takes."""


class Job:
    """One request's work. The worker calls `start()` once, then `next()` on what it returned; each
    item, the end and any error go to `events` on the request's event loop."""

    _ids = itertools.count()

    def __init__(self, start: Callable[[], Iterator], loop: asyncio.AbstractEventLoop):
        self.id = next(self._ids)
        self.start, self.loop = start, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False  # set by the request when its client disconnects
        self.iterator: Iterator | None = None
        self.held: tuple[str, object] | None = None

    def _emit(self, kind: str, value=None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    async def next_event(self) -> tuple[str, object]:
        """("item", value), ("end", None) or ("error", exception)."""
        if self.held is not None:
            event, self.held = self.held, None
            return event
        return await self.events.get()

    def put_back(self, event: tuple[str, object]) -> None:
        """`event` (the one just taken) comes first again."""
        self.held = event

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self, max_active: int = 4, max_queue: int = 16, batcher=None):
        self.max_active, self.max_queue = max_active, max_queue
        self.batcher = batcher
        self._threads = ThreadPoolExecutor(max_active, thread_name_prefix="mmsdk-serve-stream") if batcher else None
        self.waiting: collections.deque[Job] = collections.deque()
        self.active: list[Job] = []
        self.freed = 0  # jobs closed because their client went away
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="mmsdk-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._wake:
            # Jobs the worker has not yet moved to a free active slot are not queued: an idle server
            # takes max_active requests arriving at once, then queues max_queue more.
            free = max(self.max_active - len(self.active), 0)
            if len(self.waiting) >= self.max_queue + free:
                raise QueueFull(f"the server is busy: {len(self.active)} requests running and "
                                f"{len(self.waiting)} waiting (the most it queues); retry later")
            self.waiting.append(job)
            self._wake.notify()

    def stats(self) -> dict:
        return {"active": len(self.active), "waiting": len(self.waiting), "freed_on_disconnect": self.freed}

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=10)
        if self._threads is not None:
            self._threads.shutdown(wait=False)

    def _loop(self) -> None:
        while True:
            with self._wake:
                if not (self.waiting or self.active or self._stopping):
                    _release_freed_memory()
                while not (self.waiting or self.active or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    return
                while self.waiting and len(self.active) < self.max_active:
                    self.active.append(self.waiting.popleft())
            if self.batcher is None:
                for job in list(self.active):
                    self._advance(job)
            elif len(self.active) == 1:
                self.batcher.round(1)
                self._advance_in_turn(self.active[0])
            else:  # each on a thread of its own, in turns: their decode steps meet in one batched pass
                jobs = list(self.active)
                self.batcher.round(len(jobs))
                for done in [self._threads.submit(self._advance_in_turn, job) for job in jobs]:
                    done.result()

    def _advance_in_turn(self, job: Job) -> None:
        with self.batcher.turn():
            self._advance(job)

    def _advance(self, job: Job) -> None:
        """One item of `job`; a job that ends, fails or was cancelled leaves the active set."""
        if job.cancelled:
            self._finish(job, freed=True)
            return
        try:
            if job.iterator is None:
                job.iterator = iter(job.start())
            item = next(job.iterator)
        except StopIteration:
            job._emit("end")
            self._finish(job)
        except Exception as e:  # noqa: BLE001 - a request's failure is its own: reported to it, others go on
            if not isinstance(e, (ValueError, LookupError)):
                log.exception("request %d failed", job.id)
            job._emit("error", e)
            self._finish(job)
        else:
            if item is not None:  # None: a step of work with nothing to report (a prompt chunk fed)
                job._emit("item", item)

    def _finish(self, job: Job, freed: bool = False) -> None:
        close = getattr(job.iterator, "close", None)
        if close is not None:
            close()  # a generation's generator: its finally releases the token stream and caches
        job.iterator = None
        self.active.remove(job)
        self.freed += freed


def _release_freed_memory() -> None:
    """Give the pages freed by finished requests (KV caches, activations) back to the system when the
    worker goes idle: glibc's malloc keeps them otherwise, and the server's RSS would ratchet up."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    libc = ctypes.util.find_library("c")  # None off glibc (macOS, musl): nothing to do there
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
