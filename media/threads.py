"""How many threads the codecs and numeric libraries use in this process (`pin_threads`: a Ray worker's)."""

from __future__ import annotations

# FFmpeg decode threads per stream (0: FFmpeg's choice). One: each caller gives its decoder a core of its own
# (a Ray worker pinned to its cores, a DataLoader worker, preprocess's decode-ahead thread), and FFmpeg's
# threads on top only cost (2026-12-07, preprocess at 1080p in one process on 2 cores, one slice per frame:
# 234-254 frames/s with one decode thread, 212-216 with two). Decoded pixels do not depend on it.
CODEC_THREADS = 1
# The cores `pin_threads` gave this process (0: not pinned); x264 encodes with that many threads, else with
# FFmpeg's choice (`video_io.write_mp4`: its output depends on its thread count, so written videos are the
# same bytes as before this setting existed).
PINNED = 0


def pin_threads(n: int) -> None:
    """Every library the preprocess stage uses at `n` threads in this process (a Ray worker per core):
    FFmpeg/x264, OpenCV, BLAS, torch. BLAS matters even in one process: OpenBLAS threads spin for a while
    after each call (the log-mel's matrix product), taking a core from the next clip's video decode
    (measured: decode 4x slower, the whole stage 145 vs 204 frames/s on 2 cores)."""
    import cv2
    from threadpoolctl import threadpool_limits

    global CODEC_THREADS, PINNED
    CODEC_THREADS = PINNED = n
    cv2.setNumThreads(n)
    threadpool_limits(limits=n)  # BLAS and OpenMP pools loaded so far
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
