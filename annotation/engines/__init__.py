"""Engines behind one interface (`Engine.annotate(requests) -> annotations`): `facs`, `vllm`, `openai`."""

from __future__ import annotations

from annotation.engines.base import Engine
from annotation.prompts import PromptTemplate
from tbd_core.errors import UserError

ENGINES = ("facs", "vllm", "openai")


def make_engine(name: str, *, template: PromptTemplate | None = None, **config) -> Engine:
    """Build an engine by name; `config` are the fields of that engine's config object."""
    if name == "facs":
        from annotation.engines.facs_engine import FacsEngine

        if config:
            raise UserError(f"the facs engine takes no model settings (got {sorted(config)})")
        return FacsEngine(template)
    if name == "vllm":
        from annotation.engines.vllm_engine import VLLMConfig, VLLMEngine

        return VLLMEngine(VLLMConfig(**config), template)
    if name == "openai":
        from annotation.engines.openai_engine import OpenAIConfig, OpenAIEngine

        return OpenAIEngine(OpenAIConfig(**config), template)
    raise UserError(f"unknown engine {name!r}; engines are: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "make_engine"]
