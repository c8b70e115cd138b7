"""The decoding schema per request, checked at decode time: each text is fed token by token (SmolLM2's
tokenizer) to llguidance's matcher, compiled the way vLLM's `guidance` structured-output backend compiles
it (compact JSON). A token the schema rules out is an error there, so the model could never emit it."""

from __future__ import annotations

import json

import pytest

from annotation.facs import load_kb
from annotation.grounded_schema import allowed_emotions, request_schema
from annotation.records import AUEvidence, ThinkRequest

HAPPY = ThinkRequest(
    emotion="happy",
    level=3,
    evidence=(AUEvidence(au=12, mean=2.0, peak=3.2), AUEvidence(au=25, mean=1.5, peak=2.8),
              AUEvidence(au=6, mean=0.1, peak=0.2)),
)  # fmt: skip
UNIT = '{{"au":{au},"name":"{name}","intensity":"{i}","side":"both","region":"{region}","muscle":"{muscle}","movement":"{m}"}}'


@pytest.fixture(scope="module")
def matcher():
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    from tbd_core import assets

    tokenizer = AutoTokenizer.from_pretrained(assets.resolve("instruct_llm"))
    ll = llguidance.hf.from_tokenizer(tokenizer)

    def accepts(schema: dict, text: str) -> bool:
        """True while `text` (a whole answer or a prefix of one) is still allowed."""
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False}
        )
        assert not llguidance.LLMatcher.validate_grammar(grammar, ll)
        m = llguidance.LLMatcher(ll, grammar, log_level=0)
        return bool(m.consume_tokens(tokenizer.encode(text, add_special_tokens=False))) and not m.is_error()

    return accepts


def unit(au: int, intensity: str, movement: str | None = None) -> str:
    ref = load_kb().au(au)
    movement = movement or ref.movement.split(";")[0]
    fields = dict(au=au, name=ref.name, i=intensity, region=ref.region, muscle=", ".join(ref.muscles))
    return UNIT.format(**fields, m=movement)


def answer(
    emotion="happy",
    level=3,
    reasoning="AU12 and AU25 show a broad smile",
    units=None,
    global_description="A severe happy expression: lip corners pulled up and back obliquely, lips parted.",
    mouth="Strongly: lip corners pulled up and back obliquely; lips parted.",
) -> str:
    units = units or [unit(12, "D"), unit(25, "C")]
    regions = {r: "" for r in load_kb().regions} | {"mouth": mouth}
    return (f'{{"emotion":"{emotion}","intensity_level":{level},"reasoning":["{reasoning}"],'
            f'"global_description":"{global_description}","action_units":[{",".join(units)}],'
            f'"regions":{json.dumps(regions, separators=(",", ":"))}}}')  # fmt: skip


def test_a_faithful_answer_decodes_and_the_validator_accepts_it(matcher):
    from annotation.engines.base import judge
    from annotation.records import Generation, Provenance

    text = answer()
    assert matcher(request_schema(HAPPY), text)
    prov = Provenance(annotation_version="v", engine="t", model_id="m", template_hash="t", schema_hash="s",
                      sampling={}, kb_version="k", validator_version="v")  # fmt: skip
    assert judge(HAPPY, Generation(text=text, finish_reason="stop"), prov).accepted


def test_the_schema_rules_out_what_small_models_got_wrong(matcher):
    schema = request_schema(HAPPY)
    assert not matcher(schema, '{"emotion":"sad"')  # another emotion than the label
    assert not matcher(schema, '{"emotion":"not labelled"')
    assert not matcher(schema, '{"emotion":"happy","intensity_level":2')  # the level is the request's
    assert not matcher(schema, answer(reasoning="AU12 measured at 3.2"))  # a number in free text
    assert not matcher(schema, answer(reasoning="AU4 is absent"))  # an AU that is no candidate, even named
    assert not matcher(schema, answer(units=[unit(12, "D")]))  # AU25, measured clearly present, left out
    assert not matcher(schema, answer(units=[unit(12, "D"), unit(25, "C"), unit(4, "B")]))  # not a candidate
    assert not matcher(schema, answer(units=[unit(12, "D"), unit(25, "C"), unit(6, "B")]))  # measured absent
    assert not matcher(schema, answer(units=[unit(12, "A"), unit(25, "C")]))  # AU12 peaks at 3.2: B..D only
    assert matcher(schema, answer(units=[unit(12, "D"), unit(25, "C"), unit(26, "C")]))  # an optional AU
    # The texts Draw reads are filled-in templates of the knowledge base's phrases for the candidate AUs.
    assert not matcher(schema, answer(global_description="my friend went crazy"))
    assert not matcher(schema, answer(global_description="A marked sad expression."))
    assert not matcher(schema, answer(mouth="Strongly: my friend went crazy."))
    assert not matcher(schema, answer(units=[unit(12, "D", "lips curled into a grin"), unit(25, "C")]))
    assert matcher(schema, answer(mouth=""))  # a moving region may be left to the validator to fill
    brows = answer().replace('"brows":""', '"brows":"Clearly: brows lowered and drawn together."')
    assert not matcher(schema, brows)  # no brow AU among the candidates: the brows are at rest
    wrong_muscle = unit(12, "D").replace("zygomaticus major", "orbicularis oculi")
    assert not matcher(schema, answer(units=[wrong_muscle, unit(25, "C")]))


def test_contempt_is_one_sided_and_unlabelled_clips_choose_among_supported_emotions(matcher):
    contempt = request_schema(ThinkRequest(emotion="contempt", level=2))
    both = answer(
        "contempt",
        2,
        "one lip corner",
        [unit(12, "C"), unit(14, "C")],
        "A marked contempt expression.",
        "Clearly: lip corners tightened and drawn in on the right side only.",
    )
    assert not matcher(contempt, both)
    assert matcher(contempt, both.replace('"side":"both"', '"side":"right"'))  # no evidence: the right side
    assert not matcher(
        contempt, both.replace('"side":"both"', '"side":"left"', 1).replace('"side":"both"', '"side":"right"')
    )

    clip = ThinkRequest(evidence=(AUEvidence(au=1, mean=2, peak=3.0), AUEvidence(au=4, mean=2, peak=3.0),
                                  AUEvidence(au=15, mean=1, peak=2.0)))  # fmt: skip
    kb = load_kb()
    assert "sad" in allowed_emotions(clip, kb) and "happy" not in allowed_emotions(clip, kb)
    schema = request_schema(clip)
    assert not matcher(schema, '{"emotion":"happy"')
    assert matcher(schema, '{"emotion":"sad"')
    resting = request_schema(ThinkRequest(evidence=(AUEvidence(au=4, mean=0.1, peak=0.3),)))
    assert not matcher(resting, '{"emotion":"neutral","intensity_level":1,"reasoning":["at rest"],'
                                '"global_description":"A slight neutral expression: .')  # fmt: skip
