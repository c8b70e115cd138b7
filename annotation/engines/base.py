"""The engine interface: `annotate(requests) -> annotations`, batched, with provenance and validation.

An engine only turns requests into raw generations (`generate`); parsing, validation, repair and
provenance are shared here, so every engine is judged by the same rules.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence

from annotation.facs import load_kb
from annotation.grounded_schema import request_schema, schema_rules_hash
from annotation.prompts import PromptTemplate, load_template
from annotation.records import (
    Annotation,
    EarlierAttempt,
    Generation,
    Provenance,
    ThinkRequest,
    Validation,
)
from annotation.validate import VALIDATOR_VERSION, parse, validate
from tbd_core.errors import UserError

log = logging.getLogger(__name__)

RETRY_TEMPERATURE = 0.7  # a retry samples: greedy decoding with another seed repeats itself


class Engine(ABC):
    """Base of the `facs`, `vllm` and `openai` engines."""

    name: str = "engine"  # the route: how requests reach the decoder
    retryable: bool = True  # a sampling model; the deterministic rule reasoner would repeat itself

    def __init__(self, template: PromptTemplate | None = None):
        self.template = template or load_template()

    def schema_for(self, request: ThinkRequest) -> dict:
        """The JSON schema the decoder enforces for this request (`annotation.grounded_schema`)."""
        return request_schema(request)

    @property
    def decoder(self) -> str:
        """The decoding engine behind the route (provenance's `engine`, part of the version)."""
        return self.name

    @property
    @abstractmethod
    def model_id(self) -> str: ...

    @property
    @abstractmethod
    def sampling(self) -> dict:
        """Sampling parameters that change the output (recorded in provenance)."""

    @abstractmethod
    def generate(self, requests: Sequence[ThinkRequest], sampling: dict | None = None) -> list[Generation]:
        """One raw generation per request, in order; `sampling` (a retry's seed and temperature)
        overrides the version's own."""

    def sampling_for(self, attempt: int, temperature: float = RETRY_TEMPERATURE) -> dict | None:
        """Attempt k's sampling: None (the version's own) for k = 0, else seed + k at a temperature
        of at least `temperature`."""
        if attempt == 0:
            return None
        own = self.sampling
        return {
            **own,
            "seed": own.get("seed", 0) + attempt,
            "temperature": max(own.get("temperature", 0.0), temperature),
        }

    def generate_with_retries(
        self,
        requests: Sequence[ThinkRequest],
        first_attempts: Sequence[int] | None = None,
        retries: int | Sequence[int] = 0,
        temperature: float = RETRY_TEMPERATURE,
    ) -> list[list[Generation]]:
        """Every attempt per request, oldest first: request i is generated at attempt
        `first_attempts[i]` (default 0) and, while rejected, at the next attempt, at most `retries`
        (or `retries[i]`) more times: the budget. The last generation is the one that counts."""
        n = len(requests)
        prov, examples = self.provenance(), self.examples
        first = list(first_attempts or [0] * n)
        budget = [retries] * n if isinstance(retries, int) else list(retries)
        if not self.retryable:
            budget = [0] * n
        attempt_of = list(first)
        out: list[list[Generation]] = [[] for _ in requests]
        todo = list(range(n))
        while todo:
            by_attempt: dict[int, list[int]] = defaultdict(list)
            for i in todo:
                by_attempt[attempt_of[i]].append(i)
            for attempt, idx in sorted(by_attempt.items()):
                sampling = self.sampling_for(attempt, temperature)
                gens = self.generate([requests[i] for i in idx], sampling)
                for i, g in zip(idx, gens, strict=True):
                    out[i].append(g.model_copy(update={"attempt": attempt, "sampling": sampling}))
            todo = [
                i
                for i in todo
                if attempt_of[i] - first[i] < budget[i]
                and not judge(requests[i], out[i][-1], prov, examples).accepted
            ]
            for i in todo:
                attempt_of[i] += 1
        return out

    def provenance(self) -> Provenance:
        fields = {
            "engine": self.decoder,
            "model_id": self.model_id,
            "template_hash": self.template.hash,
            "schema_hash": schema_rules_hash(),
            "sampling": self.sampling,
            "kb_version": load_kb().version,
            "validator_version": VALIDATOR_VERSION,
        }
        return Provenance(annotation_version=Provenance.version_of(**fields), route=self.name, **fields)

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
        attempt=generation.attempt,
        sampling=generation.sampling,
    )


def judge_attempts(
    request: ThinkRequest,
    attempts: Sequence[Generation],
    provenance: Provenance,
    examples: Sequence[str] = (),
    replaces: Annotation | None = None,
) -> Annotation:
    """The annotation of the last attempt, keeping in `Annotation.earlier` the rejected attempts before
    it: those of the annotation it `replaces` (a redo), that annotation itself, then this run's."""
    *before, last = attempts
    previous = [*replaces.earlier, EarlierAttempt.of(replaces)] if replaces is not None else []
    kept = previous + [EarlierAttempt.of(judge(request, g, provenance, examples)) for g in before]
    return judge(request, last, provenance, examples).model_copy(update={"earlier": kept})
