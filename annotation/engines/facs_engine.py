"""`facs`: the deterministic knowledge-base reasoner behind the engine interface (offline default)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from annotation.engines.base import Engine
from annotation.facs import load_kb
from annotation.reasoner import REASONER_VERSION, think
from annotation.records import Generation, ThinkRequest
from annotation.schema import schema_problem
from tbd_core.errors import UserError


class FacsEngine(Engine):
    name = "facs"
    retryable = False  # deterministic: another attempt would repeat the first

    @property
    def model_id(self) -> str:
        return REASONER_VERSION

    @property
    def sampling(self) -> dict:
        return {}

    @property
    def examples(self) -> tuple[str, ...]:
        return ()  # the rule reasoner wrote the few-shot answers; it is never shown them

    def generate(self, requests: Sequence[ThinkRequest], sampling: dict | None = None) -> list[Generation]:
        kb = load_kb()
        out = []
        for r in requests:
            try:
                out.append(Generation(text=think(r, kb).model_dump_json(), finish_reason="stop"))
            except UserError as err:  # one bad request is one reject, not a failed job
                out.append(Generation(text="", error=str(err)))
            except ValidationError as err:  # a bound the rules missed: one sentence, not pydantic's page
                out.append(Generation(text="", error=f"the facs engine's answer {schema_problem(err)}"))
            except ValueError as err:
                out.append(Generation(text="", error=f"{type(err).__name__}: {err}"))
        return out
