"""What a user sees on the terminal, and what goes to the log file beside the run.

The terminal keeps our stages' own lines (start, progress bar, result), every ERROR and our packages'
warnings. Library lines a user cannot act on go to `$TBD_LOG_DIR/native-<pid>.log`, the file native
libraries' descriptor-2 lines already go to (`tbd_core.native_log`): Ray's and Ray Data's INFO/WARNING lines
(its 7-line progress blocks every 10 s included: Ray Data's own progress is off, our jobs draw one tqdm line),
vLLM's, Lightning's tips, MLflow's database set-up, sentence-transformers' loading lines, Python warnings
(deprecations) and Hugging Face's loading bars. `tbd -v` shows everything.

Libraries that attach their own console handler (Ray, Ray Data, Lightning, transformers, diffusers) are
routed again by `route_library_logs` after they are imported (`init_ray`, `job_run`, training).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from tbd_core.native_log import divert_native_stderr

OWN = frozenset(
    {"tbd_core", "annotation", "media", "pipelines", "tbd_lightning", "evaluation", "tbd", "infra"}
)
# Set before the libraries are imported (and inherited by the Ray workers a local cluster starts).
QUIET_ENV = {
    "VLLM_CONFIGURE_LOGGING": "0",  # vLLM's logger propagates to ours instead of printing to stdout
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars
}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_state: dict[str, object] = {}


def own(name: str) -> bool:
    return name.split(".")[0] in OWN


class TerminalFilter(logging.Filter):
    """Our packages' records at `level` and above, anyone's errors."""

    def __init__(self, level: int = logging.INFO):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or (own(record.name) and record.levelno >= self.level)


def setup_terminal(verbose: bool = False, terminal_level: int = logging.INFO) -> Path | None:
    """Route this process's output: native lines and library logs to its log file, ours to the terminal
    (`sys.stderr`). Returns the log file (None where it cannot be made: then everything stays on the
    terminal, as before). Idempotent."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    path = divert_native_stderr()
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter(FORMAT))
    if not verbose and path is not None:
        terminal.addFilter(TerminalFilter(terminal_level))
    root.addHandler(terminal)
    if path is not None:
        to_file = logging.FileHandler(path, encoding="utf-8")
        to_file.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(to_file)
    logging.captureWarnings(True)  # warnings.warn (deprecations, Ray's UserWarnings) -> `py.warnings` -> file
    _state.update(path=path, verbose=verbose)
    route_library_logs()
    return path


def route_library_logs() -> None:
    """Detach the console handlers libraries attached to their own loggers (so their records reach ours,
    which decide), and turn off the progress displays we replace. Safe to call again after more imports."""
    if _state.get("verbose") or _state.get("path") is None:
        return
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or own(name):
            continue
        consoles = [
            h
            for h in logger.handlers
            if type(h) is not logging.FileHandler and isinstance(h, logging.StreamHandler)
        ]
        for handler in consoles:
            logger.removeHandler(handler)
        if consoles:
            logger.propagate = True
    if "ray.data" in sys.modules:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False  # our jobs draw one tqdm line instead
    for lib in ("diffusers", "transformers"):
        if f"{lib}.utils.logging" in sys.modules:
            sys.modules[f"{lib}.utils.logging"].disable_progress_bar()


def quiet_worker() -> None:
    """In a Ray worker: descriptors 1 and 2 (native lines, library prints, vLLM's start-up) to the worker's
    log file; the driver's terminal gets our warnings and anyone's errors only."""
    path = setup_terminal(terminal_level=logging.WARNING)
    if path is None:
        return
    sys.stdout.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.close(fd)
    # Library progress bars (vLLM's "Processed prompts") write to `sys.stderr`: the log file too; the
    # terminal handler keeps its own stream to the driver.
    sys.stderr = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (the process's stream)
