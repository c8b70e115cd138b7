"""The Chain-of-Thought schema: typed records that also emit the JSON schema used for constrained decoding.

Field order is generation order, so the model reasons (``reasoning``) before it commits to a global
sentence, the action units and the per-region sentences. Lengths are bounded so that a constrained
decoder cannot run away inside one string; the bounds are generous for real text.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from annotation.facs import Intensity, Region, load_kb

Side = Literal["left", "right", "both"]
MAX_STEPS = 6
MAX_AUS = 12
Sentence = Annotated[str, StringConstraints(max_length=300)]
Movement = Annotated[str, StringConstraints(max_length=200)]
Word = Annotated[str, StringConstraints(max_length=80)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AUDescription(_Strict):
    """One action unit as the model describes it; `side` is the subject's side."""

    au: int
    name: Word
    intensity: Intensity
    side: Side
    region: Region
    muscle: Word
    movement: Movement


class RegionDescriptions(_Strict):
    """One sentence per face region ("" when the region is at rest)."""

    brows: Sentence
    eyes: Sentence
    nose: Sentence
    cheeks: Sentence
    mouth: Sentence
    jaw: Sentence


class ChainOfThought(_Strict):
    """What the Think stage produces for one request."""

    emotion: Word
    intensity_level: Annotated[int, Field(ge=0, le=3)]
    reasoning: Annotated[list[Sentence], Field(min_length=1, max_length=MAX_STEPS)]
    global_description: Sentence
    action_units: Annotated[list[AUDescription], Field(max_length=MAX_AUS)]
    regions: RegionDescriptions


@functools.cache
def decoding_schema() -> dict:
    """JSON schema for constrained decoding: the pydantic schema with AU ids, names and muscles restricted
    to the knowledge base's vocabulary (the model cannot write a muscle FACS does not know; pairing
    them right is the validator's job), every `$ref` inlined (simple schemas keep xgrammar fast)."""
    schema = ChainOfThought.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items() if k not in ("title", "description")}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    schema = inline(schema)
    kb = load_kb()
    unit = schema["properties"]["action_units"]["items"]["properties"]
    unit["au"] = {"type": "integer", "enum": sorted(kb.action_units)}
    unit["name"] = {"type": "string", "enum": sorted({a.name for a in kb.action_units.values()})}
    unit["muscle"] = {
        "type": "string",
        "enum": sorted({", ".join(a.muscles) for a in kb.action_units.values()}),
    }
    return schema


def schema_hash() -> str:
    return hashlib.sha256(json.dumps(decoding_schema(), sort_keys=True).encode()).hexdigest()[:12]


def schema_problem(err: ValidationError) -> str:
    """A schema violation as one clause naming the field and the bound ("breaks the schema at
    action_units: 14 items, at most 12 allowed; ask for fewer emotions or a shorter text")."""
    errors = err.errors()
    first, unit = errors[0], {"too_long": "items", "string_too_long": "characters"}
    where = ".".join(map(str, first["loc"])) or "the top level"
    bound, value = (first.get("ctx") or {}).get("max_length"), first.get("input")
    if first["type"] in unit and bound is not None and hasattr(value, "__len__"):
        what = f"{len(value)} {unit[first['type']]}, at most {bound} allowed"
    else:
        what = first["msg"].rstrip(".")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"breaks the schema at {where}: {what}{more}; ask for fewer emotions or a shorter text"
