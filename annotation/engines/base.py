"""The engine interface: `annotate(requests) -> annotations`, batched, with provenance and validation.

An engine only turns requests into raw generations (`generate`); parsing, validation, repair and
provenance are shared here, so every engine is judged by the same rules.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence

from annotation.facs import load_kb
from annotation.prompts import PromptTemplate, load_template
from annotation.records import Annotation, Generation, Provenance, ThinkRequest, Validation
from annotation.schema import decoding_schema, schema_hash
from annotation.validate import VALIDATOR_VERSION, parse, validate
from tbd_core.errors import UserError

log = logging.getLogger(__name__)


class Engine(ABC):
    """Base of the `facs`, `vllm` and `openai` engines."""

    name: str = "engine"

    def __init__(self, template: PromptTemplate | None = None):
        self.template = template or load_template()
        self.schema = decoding_schema()

    @property
    @abstractmethod
    def model_id(self) -> str: ...

    @property
    @abstractmethod
    def sampling(self) -> dict:
        """Sampling parameters that change the output (recorded in provenance)."""

    @abstractmethod
    def generate(self, requests: Sequence[ThinkRequest]) -> list[Generation]:
        """One raw generation per request, in order."""

    def provenance(self) -> Provenance:
        fields = {
            "engine": self.name,
            "model_id": self.model_id,
            "template_hash": self.template.hash,
            "schema_hash": schema_hash(),
            "sampling": self.sampling,
            "kb_version": load_kb().version,
            "validator_version": VALIDATOR_VERSION,
        }
        return Provenance(annotation_version=Provenance.version_of(**fields), **fields)

    @property
    def version(self) -> str:
        return self.provenance().annotation_version

    def annotate(self, requests: Sequence[ThinkRequest]) -> list[Annotation]:
        """Generate for the distinct requests once, then parse, validate and stamp every request."""
        requests = list(requests)
        unique: dict[str, ThinkRequest] = {}
        for r in requests:
            unique.setdefault(r.fingerprint(), r)
        gens = dict(zip(unique, self.generate(list(unique.values())), strict=True))
        prov = self.provenance()
        out = [judge(r, gens[r.fingerprint()], prov, self.examples) for r in requests]
        counts = {
            o: sum(a.validation.outcome == o for a in out) for o in ("accepted", "repaired", "rejected")
        }
        log.info("%s: %d requests (%d distinct) -> %s", self.name, len(requests), len(unique), counts)
        return out

    @property
    def examples(self) -> tuple[str, ...]:
        """The few-shot answers its model is shown (an answer copying one is rejected)."""
        return self.template.answers

    def close(self) -> None:
        """Release the engine's resources (processes, sockets); nothing to release by default."""
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def judge(
    request: ThinkRequest, generation: Generation, provenance: Provenance, examples: Sequence[str] = ()
) -> Annotation:
    """Parse and validate one generation for its request; stamp provenance. Pure, cheap, engine-free.
    `examples`: the few-shot answers the engine's model was shown (copies of them are rejected)."""
    data, reasons = parse(generation)
    if data is None:
        cot, result = None, Validation(outcome="rejected", reasons=reasons)
    else:
        try:
            cot, result = validate(data, request, load_kb(), examples)
        except UserError as err:  # whatever the model wrote, the clip ends in the ledger, never a crash
            cot, result = None, Validation(outcome="rejected", reasons=[str(err)])
    return Annotation(
        key=request.key or request.fingerprint(),
        request=request,
        cot=cot,
        raw=generation.text,
        finish_reason=generation.finish_reason,
        validation=result,
        provenance=provenance,
    )
