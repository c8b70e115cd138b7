"""`openai`: any OpenAI-compatible chat endpoint (typically `vllm serve`), same schema and prompts.

The schema goes in `response_format` (portable). A vLLM server (its model card says `owned_by: vllm`)
is the same decoder as the in-process `vllm` engine: requests carry the same sampling (vLLM's
`repetition_penalty` too), the model is identified by the weights the server reports (`root`, or the
folder given as `model_path`), and the annotations get the same version as the `vllm` and `ray-llm`
routes. That assumes the server runs with `--structured-outputs-config` set to
`vllm_engine.STRUCTURED_OUTPUTS` (`local_server.py` starts it so). Any other endpoint is its own
decoder (`engine: openai`, the served name as model id). Requests run concurrently; a request that
still fails after the client's retries becomes a rejected annotation with the error as its reason,
never a lost one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, ConfigDict

from annotation.engines.base import Engine
from annotation.engines.model_id import model_id
from annotation.engines.vllm_engine import VLLMConfig, vllm_sampling
from annotation.prompts import PromptTemplate
from annotation.records import Generation, ThinkRequest
from tbd_core.errors import UserError

log = logging.getLogger(__name__)


class OpenAIConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str  # the served name
    model_path: str | None = None  # the folder the server loaded, when its reported `root` is not here
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = VLLMConfig.model_fields["max_tokens"].default
    temperature: float = 0.0
    repetition_penalty: float = VLLMConfig.model_fields["repetition_penalty"].default  # vLLM servers
    seed: int = 0
    concurrency: int = 8
    timeout_s: float = 600.0
    max_retries: int = 3


class OpenAIEngine(Engine):
    name = "openai"

    def __init__(self, config: OpenAIConfig, template: PromptTemplate | None = None):
        super().__init__(template)
        import openai

        self.config = config
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=os.environ.get(config.api_key_env, "EMPTY"),
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )
        try:
            served = {m.id: m for m in self._client.models.list()}
        except openai.APIError as err:
            raise UserError(f"cannot reach the OpenAI-compatible endpoint {config.base_url}: {err}") from err
        if config.model not in served:
            raise UserError(f"{config.base_url} does not serve {config.model!r}; it serves {list(served)}")
        card = served[config.model]
        self.vllm_server = getattr(card, "owned_by", None) == "vllm"
        root = getattr(card, "root", None) if self.vllm_server else None
        self._model_id = model_id(config.model_path or root or config.model)
        log.info(
            "%s serves %s (%s)", config.base_url, self._model_id, "vLLM" if self.vllm_server else "not vLLM"
        )

    @property
    def decoder(self) -> str:
        return "vllm" if self.vllm_server else self.name

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def sampling(self) -> dict:
        c = self.config
        if not self.vllm_server:
            return {"temperature": c.temperature, "max_tokens": c.max_tokens, "seed": c.seed}
        return vllm_sampling(c)

    def _one(self, request: ThinkRequest, sampling: dict | None = None) -> Generation:
        import openai

        c = self.config
        sampling = sampling or self.sampling
        try:
            resp = self._client.chat.completions.create(
                model=c.model,
                messages=self.template.messages(request),
                temperature=sampling["temperature"],
                max_tokens=c.max_tokens,
                seed=sampling["seed"],
                extra_body={"repetition_penalty": c.repetition_penalty} if self.vllm_server else None,
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": "chain_of_thought",
                        "schema": self.schema_for(request),
                        "strict": True,
                    },
                },
            )
        except openai.APIError as err:
            log.warning("request %s failed: %s", request.key, err)
            return Generation(text="", error=f"{type(err).__name__}: {err}")
        choice = resp.choices[0]
        return Generation(text=choice.message.content or "", finish_reason=choice.finish_reason)

    def generate(self, requests: Sequence[ThinkRequest], sampling: dict | None = None) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            return list(pool.map(lambda r: self._one(r, sampling), requests))

    def close(self) -> None:
        self._client.close()
