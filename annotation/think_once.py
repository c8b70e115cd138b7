"""`tbd think`: one emotion request through an engine; the annotation as JSON (stdout) and a summary table.

tbd think contempt --level 2
tbd think --text "a bittersweet smile" --level 2
tbd think happy --level 3 --think.engine vllm --think.model /path/to/model
tbd think sad --think.engine openai --think.base_url http://host:8000/v1 --think.model served-name
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from annotation.engines.spec import EngineSpec
from annotation.records import Annotation, AUEvidence, ThinkRequest
from tbd_core.errors import UserError


@dataclass(frozen=True)
class ThinkConfig:
    emotion: str | None = None  # a MEAD emotion label; omit for free text only
    level: int | None = None  # MEAD intensity level 1..3
    text: str | None = None  # free-text emotion, e.g. "a bittersweet smile"
    evidence: str | None = None  # a JSON file of measured AU evidence: [{au, mean, peak, side}]
    think: EngineSpec = field(default_factory=EngineSpec)
    json: bool = False  # print only the JSON


def _evidence(path: str | None) -> tuple[AUEvidence, ...]:
    if not path:
        return ()
    if not Path(path).is_file():
        raise UserError(f"evidence file {path} does not exist")
    try:
        return tuple(TypeAdapter(list[AUEvidence]).validate_json(Path(path).read_text()))
    except ValidationError as err:
        raise UserError(f"evidence file {path}: {err.errors()[0]['msg']}") from err


def summary(ann: Annotation) -> str:
    """A readable table of the annotation (AUs, then regions), plus outcome and provenance."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stderr, width=140)
    with console.capture() as cap:
        v, p = ann.validation, ann.provenance
        console.print(f"[bold]{ann.key}[/]  outcome: [bold]{v.outcome}[/]  version {p.annotation_version}")
        for reason in v.reasons:
            console.print(f"  rejected: {reason}")
        for change in v.changes:
            console.print(f"  repaired: {change}")
        if ann.cot is not None:
            cot = ann.cot
            console.print(f"{cot.emotion}, level {cot.intensity_level}: {cot.global_description}")
            for i, step in enumerate(cot.reasoning, 1):
                console.print(f"  {i}. {step}")
            table = Table("AU", "name", "int.", "side", "region", "muscle")
            for u in cot.action_units:
                table.add_row(f"AU{u.au}", u.name, u.intensity, u.side, u.region, u.muscle)
            console.print(table)
            regions = Table("region", "movement")
            for region, sentence in cot.regions.model_dump().items():
                regions.add_row(region, sentence or "(at rest)")
            console.print(regions)
        console.print(
            f"engine {p.engine} · model {p.model_id} · template {p.template_hash} · kb {p.kb_version}"
        )
    return cap.get()


def think_once(config: ThinkConfig) -> int:
    """Print the annotation as JSON (stdout) and, unless `json`, a readable summary (stderr); 1 if rejected."""
    request = ThinkRequest(
        key="cli", emotion=config.emotion or "unknown", level=config.level, text=config.text,
        evidence=_evidence(config.evidence),
    )  # fmt: skip
    with config.think.make() as engine:
        (ann,) = engine.annotate([request])
    print(json.dumps(ann.model_dump(mode="json"), indent=2))
    if not config.json:
        sys.stderr.write(summary(ann))
    return 0 if ann.accepted else 1
