"""`openai`: any OpenAI-compatible chat endpoint (typically `vllm serve`), same schema and prompts.

The schema goes in `response_format` (portable); against vLLM the server should run with
`--structured-outputs-config '{"backend": "guidance", "disable_any_whitespace": true}'` (see
`local_server.py`). Requests run concurrently; a request that still fails after the client's retries
becomes a rejected annotation with the error as its reason, never a lost one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, ConfigDict

from annotation.engines.base import Engine
from annotation.prompts import PromptTemplate
from annotation.records import Generation, ThinkRequest
from tbd_core.errors import UserError

log = logging.getLogger(__name__)


class OpenAIConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 2048
    temperature: float = 0.0
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
            served = [m.id for m in self._client.models.list()]
        except openai.APIError as err:
            raise UserError(f"cannot reach the OpenAI-compatible endpoint {config.base_url}: {err}") from err
        if config.model not in served:
            raise UserError(f"{config.base_url} does not serve {config.model!r}; it serves {served}")

    @property
    def model_id(self) -> str:
        return self.config.model

    @property
    def sampling(self) -> dict:
        c = self.config
        return {"temperature": c.temperature, "max_tokens": c.max_tokens, "seed": c.seed}

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
