"""Native libraries' messages go to a log file; the terminal keeps Python's own output.

LiteRT/TFLite ("INFO: Created TensorFlow Lite XNNPACK delegate"), MediaPipe's glog lines and Ray's C++
core worker ("core_worker.cc ... E ... constructor arguments in the object store") write straight to file
descriptor 2, below Python, and have no Python switch. `divert_native_stderr` points descriptor 2 at
`$TBD_LOG_DIR/native-<pid>.log` (default `~/.cache/tbd/logs`) and gives `sys.stderr` (logging, progress
bars, tracebacks) a copy of the old descriptor, so a user sees progress and results and the noise is
kept where a bug report can find it. Processes started afterwards inherit the log file as their
descriptor 2. Called by `tbd` and by the Ray workers that load native models (once per process).
"""

from __future__ import annotations

import faulthandler
import io
import logging
import os
import sys
from pathlib import Path

LOG_DIR_ENV = "TBD_LOG_DIR"
_diverted: Path | None = None


def log_dir() -> Path:
    return Path(os.environ.get(LOG_DIR_ENV) or Path.home() / ".cache" / "tbd" / "logs").expanduser()


def divert_native_stderr() -> Path | None:
    """Send descriptor 2 to this process's native log; returns its path (None where it cannot be made:
    then nothing changes). Idempotent."""
    global _diverted
    if _diverted is not None:
        return _diverted
    path = log_dir() / f"native-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return None
    old = sys.stderr
    old.flush()
    terminal = os.dup(2)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = io.TextIOWrapper(
        os.fdopen(terminal, "wb", buffering=0),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    # Handlers made before (a Ray worker's own) wrote to the old object, i.e. now to the log: move them.
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(sys.stderr)
    if faulthandler.is_enabled():
        faulthandler.enable(file=sys.stderr)  # a crash's traceback belongs on the terminal
    _diverted = path
    return path
