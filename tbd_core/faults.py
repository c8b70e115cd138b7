"""Injected faults, for tests of crash and resume that cannot otherwise cause a worker to die midway.

`TBD_INJECT_FAULT="stage:key"` makes that stage raise `InjectedFault` when it reaches that clip key.
Never set in normal runs; the name says what it is wherever it shows up in a traceback.
"""

from __future__ import annotations

import os

ENV = "TBD_INJECT_FAULT"


class InjectedFault(RuntimeError):
    pass


def maybe_fail(stage: str, key: str) -> None:
    if os.environ.get(ENV) == f"{stage}:{key}":
        raise InjectedFault(f"injected fault at {stage}:{key} ({ENV})")
