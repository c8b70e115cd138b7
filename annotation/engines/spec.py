"""`EngineSpec`: which engine thinks, with which model and prompt template — one config shared by
`tbd think`, `tbd annotate` and `tbd generate` (on the command line: `--think.engine vllm --think.model DIR`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from tbd_core.errors import UserError


class EngineSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    engine: Literal["facs", "vllm", "openai"] = "facs"
    model: str | None = (
        None  # vllm: a local model folder (or a hub id your cluster reaches); openai: served name
    )
    base_url: str | None = None  # openai: the endpoint, e.g. http://head:8000/v1
    model_path: str | None = None  # openai: the folder a vLLM server loaded, if its path differs here
    max_tokens: int | None = None  # generation limit (LLM engines)
    max_model_len: int | None = None  # vllm: context length
    tensor_parallel_size: int | None = None  # vllm: GPUs per engine (replica)
    template: str | None = None  # prompt template YAML (a new template -> a new annotation version)

    def engine_config(self) -> dict:
        """The settings of the chosen engine's own config object (`make_engine(**...)`)."""
        if self.engine == "facs":
            return {}
        if not self.model:
            raise UserError(f"engine {self.engine} needs a model (--think.model)")
        config: dict = {"model": self.model}
        if self.max_tokens:
            config["max_tokens"] = self.max_tokens
        if self.engine == "vllm" and self.max_model_len:
            config["max_model_len"] = self.max_model_len
        if self.engine == "vllm" and self.tensor_parallel_size:
            config["tensor_parallel_size"] = self.tensor_parallel_size
        if self.engine == "openai" and self.base_url:
            config["base_url"] = self.base_url
        if self.engine == "openai" and self.model_path:
            config["model_path"] = self.model_path
        return config

    def make(self):
        """The engine (LLM engines start their model lazily, on first use)."""
        from annotation.engines import make_engine
        from annotation.prompts import load_template

        return make_engine(self.engine, template=load_template(self.template), **self.engine_config())
