"""Where preprocess runs each segment's crop pass (crops cut and H.264-encoded, `media.clip_media`): now, or
in a thread of its own while the next segment or clip is decoded and tracked (issue 39: at 1080p on 2 cores
the crop pass left one core idle for a fifth of the stage's time).

A pass is a function returning the segment's sample or reject; where it runs gives a `Future` of that.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

from media import threads

T = TypeVar("T")


def run_now(job: Callable[[], T]) -> Future[T]:
    """`job` run here; its result (or exception) in a finished future."""
    done: Future = Future()
    try:
        done.set_result(job())
    except BaseException as err:
        done.set_exception(err)
    return done


class CropPasses:
    """Runs crop passes in one thread, one at a time; a new pass waits for the one before it to finish, so
    at most two segments' kept pixels (`media.kept_regions`) are alive: one being cropped, one being
    tracked. In a process pinned to one core (`threads.pin_threads(1)`: a Ray worker per core) a thread
    only contends, so passes run now. A context manager: leaving it waits for the passes started."""

    def __init__(self, threaded: bool | None = None):
        threaded = threads.PINNED != 1 if threaded is None else threaded
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="crop-pass") if threaded else None
        self.last: Future | None = None

    def __call__(self, job: Callable[[], T]) -> Future[T]:
        if self.pool is None:
            return run_now(job)
        if self.last is not None:
            wait([self.last])
        self.last = self.pool.submit(job)
        return self.last

    def __enter__(self) -> CropPasses:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
