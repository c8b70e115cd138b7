"""An iterator run ahead in a thread of its own: decoding (FFmpeg releases the GIL) overlaps the caller's
work on the frames already decoded (tracking, AU features, encoding). Preprocess at 1080p in one process on
2 cores: 1.41 -> 1.64 cores busy, 159 -> 184 frames/s; in a Ray worker pinned to one core the thread only
contends (196 -> 187-191 frames/s for 2 workers), so there frames are decoded inline (`decode_ahead`)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

from media import threads

T = TypeVar("T")
_END = object()


def prefetched(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    """The items of `items`, in order, produced in a background thread at most `depth` ahead (memory: `depth`
    items). An exception raised by `items` is raised here, where its item would have been; when the caller
    stops early (breaks, or raises), `items` is closed in its thread (its `with` blocks exit) before this
    returns."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    break
            else:
                put((_END, None))
        except BaseException as err:  # handed to the caller, raised there
            put((_END, err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = box.get()
            if err is not None:
                raise err
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def decode_ahead(frames: Iterator[T]) -> Iterator[T]:
    """`frames` decoded ahead in a thread (`prefetched`), unless this process is pinned to one core
    (`media.threads.pin_threads(1)`: a Ray worker per core), where they are decoded inline."""
    return frames if threads.PINNED == 1 else prefetched(frames)
