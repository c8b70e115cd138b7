"""`tbd annotate --runner ray-llm`: the vLLM engine run as Ray Data LLM's processor (GPU clusters).

Ray Data LLM (`ray.data.llm.build_processor` with a `vLLMEngineProcessorConfig`) runs chat templating,
tokenisation, the vLLM engine replicas (tensor parallel inside a replica, `concurrency` replicas) and
detokenisation as Ray Data stages. Use it where Ray and vLLM are a pair that Ray tests (the CUDA image,
`infra/images/requirements-cuda.lock`). The engine settings and the per-request sampling (schema
enforced, the version's seed and temperature, a retry's) are the in-process `vllm` engine's own, so
both routes write the same annotation version; judging, retries and the shards are unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from annotation.engines.vllm_engine import VLLMConfig, VLLMEngine, vllm_env
from annotation.prompts import PromptTemplate
from annotation.records import Generation, ThinkRequest
from tbd_core.errors import UserError
from tbd_core.ray_init import init_ray

log = logging.getLogger(__name__)

ERROR_COLUMN = "__inference_error__"


class RayLLMEngine(VLLMEngine):
    """`generate` is one Ray Data LLM pass over the requests; provenance is the `vllm` engine's."""

    name = "ray-llm"

    @property
    def decoder(self) -> str:
        return "vllm"

    def __init__(
        self,
        config: VLLMConfig,
        template: PromptTemplate | None = None,
        *,
        replicas: int = 1,
        batch_size: int = 64,
        gpu: bool = True,
        accelerator_type: str | None = None,
        cpus_per_replica: float = 1.0,
    ):
        super().__init__(config, template)
        self.replicas, self.batch_size, self.gpu = replicas, batch_size, gpu
        self.accelerator_type, self.cpus_per_replica = accelerator_type, cpus_per_replica

    def processor_config(self):
        """The `vLLMEngineProcessorConfig` (built and validated without starting anything)."""
        try:
            from ray.data.llm import vLLMEngineProcessorConfig
        except ImportError as err:
            raise UserError(f"Ray Data LLM is not available ({err}); install ray[llm] with vllm") from err
        env = vllm_env(single_node=self.config.tensor_parallel_size == 1)
        config = dict(
            model_source=self.config.model,
            engine_kwargs=self.engine_kwargs(self.gpu),
            batch_size=self.batch_size,
            concurrency=self.replicas,
            accelerator_type=self.accelerator_type,
            should_continue_on_error=True,  # a failed request becomes a rejected annotation, not a failed job
            chat_template_stage=True,
            tokenize_stage=True,
            detokenize_stage=True,
        )
        if not self.gpu:  # vLLM's CPU build: a replica is a CPU bundle, no GPU asked for
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.config.cpu_kvcache_gib)
            config["placement_group_config"] = {"bundles": [{"CPU": self.cpus_per_replica}]}
        config["runtime_env"] = {"env_vars": env}
        try:
            return vLLMEngineProcessorConfig(**config)
        except ValueError as err:  # pydantic's ValidationError included
            raise UserError(f"invalid Ray Data LLM settings: {err}") from err

    def processor(self, sampling: dict | None = None):
        from ray.data.llm import build_processor

        params = self.request_sampling(sampling)

        def preprocess(row: dict) -> dict:  # each request decodes under its own schema (a JSON column)
            own = {**params, "structured_outputs": {"json": json.loads(row["schema"])}}
            return dict(messages=row["messages"], sampling_params=own)

        return build_processor(
            self.processor_config(),
            preprocess=preprocess,
            postprocess=lambda row: dict(
                i=row["i"], text=row["generated_text"], tokens=row["num_generated_tokens"]
            ),
        )

    def generate(self, requests: Sequence[ThinkRequest], sampling: dict | None = None) -> list[Generation]:
        if not requests:
            return []
        import ray

        init_ray()
        rows = [{"i": i, "messages": self.template.messages(r), "schema": json.dumps(self.schema_for(r))}
                for i, r in enumerate(requests)]  # fmt: skip
        limit = self.request_sampling(sampling)["max_tokens"]
        out: list[Generation | None] = [None] * len(requests)
        for row in self.processor(sampling)(ray.data.from_items(rows)).take_all():
            if row.get(ERROR_COLUMN):
                out[row["i"]] = Generation(text="", error=f"ray.data.llm: {row[ERROR_COLUMN]}")
            else:
                reason = "length" if row["tokens"] >= limit else "stop"
                out[row["i"]] = Generation(text=row["text"], finish_reason=reason)
        missing = [requests[i].key for i, g in enumerate(out) if g is None]
        if missing:
            raise RuntimeError(f"Ray Data LLM returned no row for {missing}")
        log.info("ray.data.llm: %d requests generated", len(requests))
        return out

    def close(self) -> None:
        return None  # the processor's actors end with each pass
