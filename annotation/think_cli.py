"""`tbd think`: one emotion request through an engine; the annotation as JSON (stdout) and a summary table.

tbd think contempt --level 2
tbd think --text "a bittersweet smile" --level 2
tbd think happy --level 3 --engine vllm --model /path/to/model
tbd think sad --engine openai --base-url http://host:8000/v1 --model served-name
tbd tiny-llm --out DIR   (a small local stand-in model for trying the vllm engine offline)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from annotation.engines import ENGINES, make_engine
from annotation.records import Annotation, AUEvidence, ThinkRequest
from tbd.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("emotion", nargs="?", default=None, help="MEAD emotion label (omit for free text only)")
    p.add_argument("--level", type=int, help="MEAD intensity level 1..3")
    p.add_argument("--text", help='free-text emotion, e.g. "a bittersweet smile"')
    p.add_argument(
        "--evidence", metavar="JSON", help="file with measured AU evidence: [{au, mean, peak, side}]"
    )
    p.add_argument("--engine", choices=ENGINES, default="facs", help="facs (offline default), vllm or openai")
    p.add_argument(
        "--model", help="vllm: local model folder (or hub id your cluster reaches); openai: served name"
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="openai: endpoint base URL")
    p.add_argument("--max-tokens", type=int, help="generation limit (LLM engines)")
    p.add_argument("--max-model-len", type=int, help="vllm: context length")
    p.add_argument("--template", help="prompt template YAML (default: the packaged one)")
    p.add_argument("--json", action="store_true", help="print only the JSON")


def _evidence(path: str | None) -> tuple[AUEvidence, ...]:
    if not path:
        return ()
    if not Path(path).is_file():
        raise UserError(f"evidence file {path} does not exist")
    try:
        return tuple(TypeAdapter(list[AUEvidence]).validate_json(Path(path).read_text()))
    except ValidationError as err:
        raise UserError(f"evidence file {path}: {err.errors()[0]['msg']}") from err


def _engine_config(args: argparse.Namespace) -> dict:
    if args.engine == "facs":
        return {}
    if not args.model:
        raise UserError(f"--engine {args.engine} needs --model")
    config: dict = {"model": args.model}
    if args.max_tokens:
        config["max_tokens"] = args.max_tokens
    if args.engine == "vllm" and args.max_model_len:
        config["max_model_len"] = args.max_model_len
    if args.engine == "openai":
        config["base_url"] = args.base_url
    return config


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


def run(args: argparse.Namespace) -> int:
    request = ThinkRequest(
        key="cli",
        emotion=args.emotion or "unknown",
        level=args.level,
        text=args.text,
        evidence=_evidence(args.evidence),
    )
    from annotation.prompts import load_template

    with make_engine(args.engine, template=load_template(args.template), **_engine_config(args)) as engine:
        (ann,) = engine.annotate([request])
    print(json.dumps(ann.model_dump(mode="json"), indent=2))
    if not args.json:
        sys.stderr.write(summary(ann))
    return 0 if ann.accepted else 1
