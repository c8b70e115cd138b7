"""Think stage without an LLM: the facs engine, the validator, prompts, schema, provenance, CLI errors."""

import json

import pytest

from annotation.engines import make_engine
from annotation.engines.facs_engine import FacsEngine
from annotation.facs import MEAD_EMOTIONS, intensity_value, load_kb
from annotation.prompts import load_template
from annotation.reasoner import think
from annotation.records import AUEvidence, Generation, ThinkRequest
from annotation.schema import ChainOfThought, decoding_schema
from annotation.validate import parse, validate
from tbd_core.errors import UserError
from tests.conftest import offline_env, run_tbd

KB = load_kb()


def _levels(emotion):
    return (1,) if emotion == "neutral" else (1, 2, 3)


@pytest.mark.parametrize("emotion", MEAD_EMOTIONS)
def test_facs_engine_core_aus_rise_with_level(emotion):
    proto = KB.prototype(emotion)
    with FacsEngine() as engine:
        anns = engine.annotate([ThinkRequest(emotion=emotion, level=lvl) for lvl in _levels(emotion)])
    strengths = []
    for ann in anns:
        assert ann.validation.outcome == "accepted", ann.validation
        units = {u.au: u for u in ann.cot.action_units}
        assert set(proto.core) <= set(units), f"{emotion}: core AUs missing"
        assert all(KB.au(au).region == u.region for au, u in units.items())
        if proto.unilateral:
            assert {units[au].side for au in proto.core} <= {"left", "right"}
        else:
            assert all(u.side == "both" for u in units.values())
        strengths.append([intensity_value(units[au].intensity) for au in proto.core])
    for weaker, stronger in zip(strengths, strengths[1:], strict=False):
        assert all(b > a for a, b in zip(weaker, stronger, strict=True)), strengths
    assert not proto.core or anns[0].cot.global_description.startswith("A ")


def test_evidence_removes_contradicted_core_au_and_adds_supported_optional():
    evidence = (
        AUEvidence(au=6, mean=0.1, peak=0.2),  # cheek raiser measured absent
        AUEvidence(au=12, mean=1.5, peak=3.0),
        AUEvidence(au=25, mean=1.0, peak=2.5),  # optional for happy, clearly present
    )
    (ann,) = FacsEngine().annotate([ThinkRequest(emotion="happy", level=2, evidence=evidence)])
    aus = {u.au for u in ann.cot.action_units}
    assert 6 not in aus and {12, 25} <= aus
    assert ann.validation.outcome == "accepted"
    assert any("AU6" in step and "left out" in step for step in ann.cot.reasoning)


def test_a_core_au_measured_below_trace_is_left_out():
    """A core AU whose measured peak stays under FACS trace (A) is absent: on corpus 3's training people the
    measure reads 0.5-0.9 where a clip's varied expression leaves the AU out (`reasoner.ABSENT_PEAK`), and a
    CoT that keeps it says only what the label says. One measured at trace or above stays, pulled by it."""
    evidence = (AUEvidence(au=1, mean=2.0, peak=3.1), AUEvidence(au=4, mean=0.47, peak=0.71),
                AUEvidence(au=15, mean=1.2, peak=1.8))  # fmt: skip
    (ann,) = FacsEngine().annotate([ThinkRequest(emotion="sad", level=1, evidence=evidence)])
    assert {u.au for u in ann.cot.action_units} == {1, 15} and ann.validation.outcome == "accepted"
    assert any("AU4 (0.7)" in step and "left out" in step for step in ann.cot.reasoning)
    kept = think(
        ThinkRequest(emotion="sad", level=1, evidence=(*evidence[::2], AUEvidence(au=4, mean=0.6, peak=1.0)))
    )
    assert {u.au for u in kept.action_units} == {1, 4, 15}


def test_contempt_side_follows_asymmetric_evidence():
    evidence = (
        AUEvidence(au=12, mean=1.0, peak=2.5, side="left"),
        AUEvidence(au=12, mean=0.1, peak=0.3, side="right"),
    )
    cot = think(ThinkRequest(emotion="contempt", level=2, evidence=evidence))
    assert {u.side for u in cot.action_units if u.au in (12, 14)} == {"left"}


def test_contempt_takes_the_side_of_its_dimpler_when_the_smile_is_absent():
    """Corpus 3 renders contempt clips with AU14 on one side and no AU12 (its AU set varies within the label):
    the side comes from both of contempt's AUs (by AU12 alone it fell to the right, and the validator
    rejected AU14 as measured absent there)."""
    evidence = tuple(AUEvidence(au=au, mean=v / 2, peak=v, side=side)
                     for au, side, v in ((12, "left", 0.0), (12, "right", 0.0), (14, "left", 4.6), (14, "right", 0.0)))  # fmt: skip
    (ann,) = FacsEngine().annotate([ThinkRequest(emotion="contempt", level=3, evidence=evidence)])
    assert ann.validation.outcome == "accepted", ann.validation.reasons
    assert [(u.au, u.side) for u in ann.cot.action_units] == [(14, "left")]


def test_unlabelled_clip_follows_evidence():
    evidence = (
        AUEvidence(au=1, mean=1, peak=2.0),
        AUEvidence(au=4, mean=1, peak=2.2),
        AUEvidence(au=15, mean=1, peak=2.6),
    )
    cot = think(ThinkRequest(evidence=evidence))
    assert cot.emotion == "sad" and {1, 4, 15} <= {u.au for u in cot.action_units}


def test_free_text_blend():
    (ann,) = FacsEngine().annotate([ThinkRequest(text="a bittersweet smile", level=2)])
    units = {u.au: u for u in ann.cot.action_units}
    assert {6, 12, 1, 4, 15} <= set(units)
    assert units[12].intensity > units[15].intensity  # the smile dominates the sadness
    assert ann.validation.outcome == "accepted"
    with pytest.raises(UserError, match="does not recognise an emotion"):
        think(ThinkRequest(text="purple elephants"))


def test_a_compound_expression_named_in_text_gets_its_own_au_set():
    """Du, Tao & Martinez (PNAS 2014) measured the compound expressions' AUs: "angrily disgusted" is AU4+10+17,
    not the disgusted prototype (AU9+15+16, what the text read as before 2026-12-06) nor the union of both
    prototypes. Its label is the emotion the adverb modifies; a negated compound is none; the clip's own AU
    specification as evidence is accepted (the validator asks the compound's AUs, not the label's, to be
    present)."""
    kb = load_kb()
    (ann,) = FacsEngine().annotate([ThinkRequest(text="angrily disgusted", level=2)])
    assert (
        {u.au for u in ann.cot.action_units}
        == set(kb.compound_expressions["angrily_disgusted"])
        == {4, 10, 17}
    )
    assert ann.cot.emotion == "disgusted" and "angrily disgusted" in ann.cot.global_description
    assert ann.validation.outcome == "accepted"
    for name, aus in kb.compound_expressions.items():
        assert {u.au for u in think(ThinkRequest(text=name.replace("_", " "))).action_units} == set(aus), name
    negated = think(ThinkRequest(text="not happily surprised, just sad"))
    assert negated.emotion == "sad" and {u.au for u in negated.action_units} == set(kb.prototype("sad").core)
    spec = tuple(AUEvidence(au=au, mean=2.0, peak=3.0) for au in (4, 10, 17))
    (specified,) = FacsEngine().annotate([ThinkRequest(text="angrily disgusted", level=2, evidence=spec)])
    assert specified.validation.outcome == "accepted", specified.validation
    assert {u.au for u in specified.cot.action_units} == {4, 10, 17}
    # AU4+25+26: the speech AUs are not in a specification's evidence (lip sync's); unmeasured, not absent
    brows = (AUEvidence(au=4, mean=2.0, peak=3.7),)
    (surprised,) = FacsEngine().annotate([ThinkRequest(text="angrily surprised", level=2, evidence=brows)])
    assert surprised.validation.outcome == "accepted", surprised.validation


def _facs_json(**request):
    return json.loads(think(ThinkRequest(**request)).model_dump_json())


def test_validator_rejects_unknown_au_and_repairs_missing_muscle():
    request = ThinkRequest(emotion="happy", level=2)
    data = _facs_json(emotion="happy", level=2)
    data["action_units"].append({**data["action_units"][0], "au": 13})
    cot, result = validate(data, request)
    assert cot is None and result.outcome == "rejected"
    assert result.reasons == ["AU13 does not exist in the FACS knowledge base"]

    data = _facs_json(emotion="happy", level=2)
    data["action_units"][1]["muscle"] = ""
    data["action_units"][1]["name"] = "Smile"
    data["regions"]["mouth"] = ""
    cot, result = validate(data, request)
    assert result.outcome == "repaired", result
    assert (
        cot.action_units[1].muscle == "zygomaticus major" and cot.action_units[1].name == "Lip Corner Puller"
    )
    assert "AU12" in cot.regions.mouth
    assert len(result.changes) == 3
    assert {u.au for u in cot.action_units} == {6, 12}  # nothing invented


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda d: d["action_units"].pop(), "core AUs of happy missing"),
        (lambda d: d.update(global_description=""), "empty global description"),
        (lambda d: d["action_units"][0].update(intensity=7), "schema: action_units.0.intensity"),
        (
            lambda d: (
                d["action_units"].append({**d["action_units"][1], "au": 15, "intensity": "E"})
                or d["action_units"][1].update(intensity="D")
            ),
            "AU12 (D) contradicts AU15 (E)",
        ),
    ],
)
def test_validator_rejections(mutate, reason):
    data = _facs_json(emotion="happy", level=2)
    mutate(data)
    cot, result = validate(data, ThinkRequest(emotion="happy", level=2))
    assert cot is None and result.outcome == "rejected"
    assert any(reason in r for r in result.reasons), result.reasons


def test_validator_contempt_must_be_unilateral_and_evidence_excuses_missing_core():
    data = _facs_json(emotion="contempt", level=2)
    for unit in data["action_units"]:
        unit["side"] = "both"
    _, result = validate(data, ThinkRequest(emotion="contempt", level=2))
    assert result.outcome == "rejected" and "unilateral" in result.reasons[0]

    data = _facs_json(emotion="happy", level=2)
    data["action_units"] = [u for u in data["action_units"] if u["au"] != 6]
    evidence = (AUEvidence(au=6, mean=0.0, peak=0.1),)
    cot, result = validate(data, ThinkRequest(emotion="happy", level=2, evidence=evidence))
    assert cot is not None, result.reasons


def test_validator_rejects_aus_the_measurements_show_absent():
    data = _facs_json(emotion="happy", level=3)
    evidence = (AUEvidence(au=6, mean=0.0, peak=0.2), AUEvidence(au=12, mean=1.0, peak=3.0))
    cot, result = validate(data, ThinkRequest(emotion="happy", level=3, evidence=evidence))
    assert cot is None and result.reasons == ["AU6 annotated at D but measured absent (peak 0.2)"]
    # The facs engine, given the same evidence, leaves AU6 out and is accepted.
    (ann,) = FacsEngine().annotate([ThinkRequest(emotion="happy", level=3, evidence=evidence)])
    assert ann.validation.outcome == "accepted" and 6 not in {u.au for u in ann.cot.action_units}


def test_parse_rejects_truncated_and_invalid_output():
    assert "finish_reason=length" in parse(Generation(text='{"emotion": "ha', finish_reason="length"))[1][0]
    assert "invalid JSON" in parse(Generation(text="{nope", finish_reason="stop"))[1][0]
    assert "engine error" in parse(Generation(text="", error="timeout"))[1][0]
    assert parse(Generation(text='{"a": 1}', finish_reason="stop")) == ({"a": 1}, [])


def test_validator_fixes_request_metadata_and_drops_duplicates():
    data = _facs_json(emotion="sad", level=3)
    data["emotion"], data["intensity_level"] = "melancholy", 1
    data["action_units"].append(dict(data["action_units"][0]))
    cot, result = validate(data, ThinkRequest(emotion="sad", level=3))
    assert result.outcome == "repaired"
    assert cot.emotion == "sad" and cot.intensity_level == 3
    assert len(cot.action_units) == len(data["action_units"]) - 1


def test_schema_puts_reasoning_first_and_restricts_aus_to_the_kb():
    schema = decoding_schema()
    order = list(schema["properties"])
    assert order.index("reasoning") < order.index("global_description") < order.index("action_units")
    unit = schema["properties"]["action_units"]["items"]["properties"]
    assert unit["au"]["enum"] == sorted(KB.action_units)
    assert "$ref" not in json.dumps(schema)
    assert set(ChainOfThought.model_fields) == set(order)


def test_prompt_prefix_is_identical_and_few_shot_answers_validate():
    template = load_template()
    a = template.messages(ThinkRequest(emotion="angry", level=1))
    b = template.messages(
        ThinkRequest(text="a bittersweet smile", evidence=(AUEvidence(au=12, mean=1, peak=2),))
    )
    assert a[:-1] == b[:-1] and a[-1] != b[-1]
    assert "AU12 mean 1.0 peak 2.0" in b[-1]["content"] and "a bittersweet smile" in b[-1]["content"]
    assert all(f"AU{au} |" in template.system for au in KB.action_units)
    for shot in template.few_shot:
        ChainOfThought.model_validate_json(shot.assistant)
    assert template.hash == load_template().hash and template.hash.startswith("facs-cot-")


def test_custom_template_changes_the_annotation_version(tmp_path):
    from importlib import resources

    text = resources.files("annotation").joinpath("data/prompt_cot.yaml").read_text()
    custom = tmp_path / "t.yaml"
    custom.write_text(text.replace("thinking step by step", "reasoning carefully, step by step"))
    default, edited = FacsEngine(), FacsEngine(load_template(str(custom)))
    assert default.template.hash != edited.template.hash
    assert default.version != edited.version
    with pytest.raises(UserError, match="does not exist"):
        load_template(str(tmp_path / "missing.yaml"))


def test_provenance_is_complete_and_versions_track_sampling():
    from annotation.engines.vllm_engine import VLLMConfig, VLLMEngine

    (ann,) = FacsEngine().annotate([ThinkRequest(emotion="fear", level=1)])
    prov = ann.provenance.model_dump()
    assert all(
        prov[k]
        for k in (
            "annotation_version",
            "engine",
            "model_id",
            "template_hash",
            "schema_hash",
            "kb_version",
            "validator_version",
        )
    )
    assert prov["kb_version"] == KB.version
    # Engines are not started until they generate, so versions can be compared for free.
    greedy = VLLMEngine(VLLMConfig(model="some/model"))
    assert greedy.version == VLLMEngine(VLLMConfig(model="some/model")).version
    assert greedy.version != VLLMEngine(VLLMConfig(model="some/model", temperature=0.7)).version
    assert greedy.version != VLLMEngine(VLLMConfig(model="other/model")).version


class CountingFacsEngine(FacsEngine):
    """The facs engine, counting what reaches `generate` (to observe deduplication)."""

    calls: list[int] = []

    def generate(self, requests, sampling=None):
        self.calls.append(len(requests))
        return super().generate(requests, sampling)


def test_identical_requests_are_generated_once():
    engine = CountingFacsEngine()
    requests = [ThinkRequest(key=f"clip{i}", emotion="sad", level=2) for i in range(5)]
    requests.append(ThinkRequest(key="other", emotion="sad", level=3))
    anns = engine.annotate(requests)
    assert engine.calls == [2]
    assert [a.key for a in anns] == [r.key for r in requests]
    assert anns[0].cot == anns[4].cot != anns[5].cot


class FailsUntilSeedEngine(FacsEngine):
    """Fake for a fault we cannot cause on demand with a real LLM: a sampling model whose answer is
    unusable below seed `good_seed` and the reasoner's answer from it on (stands in for an LLM that
    fails some draws). Records each call's sampling."""

    retryable = True

    def __init__(self, good_seed: int):
        super().__init__()
        self.good_seed, self.seen = good_seed, []

    @property
    def sampling(self):
        return {"temperature": 0.0, "seed": 0}

    def generate(self, requests, sampling=None):
        self.seen.append((len(requests), sampling))
        if (sampling or self.sampling)["seed"] < self.good_seed:
            return [Generation(text='{"emotion": "sad", "lev', finish_reason="length") for _ in requests]
        return super().generate(requests, sampling)


def test_rejected_generations_are_retried_with_new_seeds_within_the_budget():
    from annotation.engines.base import judge_attempts

    requests = [ThinkRequest(key=f"c{i}", emotion="sad", level=1 + i) for i in range(3)]
    engine = FailsUntilSeedEngine(good_seed=2)
    attempts = engine.generate_with_retries(requests, retries=3, temperature=0.8)
    # Attempt 0 is the version's sampling; retries draw seed + k at the retry temperature, once per round.
    assert engine.seen == [
        (3, None),
        (3, {"temperature": 0.8, "seed": 1}),
        (3, {"temperature": 0.8, "seed": 2}),
    ]
    ann = judge_attempts(requests[0], attempts[0], engine.provenance())
    assert ann.accepted and ann.attempt == 2 and ann.sampling == {"temperature": 0.8, "seed": 2}
    assert [e.attempt for e in ann.earlier] == [0, 1] and all(e.reasons for e in ann.earlier)
    assert ann.provenance == engine.provenance()  # the version does not change with a retry
    # The budget: one retry is not enough here; both attempts are kept, the last one counts.
    short = FailsUntilSeedEngine(good_seed=2).generate_with_retries(requests[:1], retries=1)
    rejected = judge_attempts(requests[0], short[0], engine.provenance())
    assert not rejected.accepted and rejected.attempt == 1 and len(rejected.earlier) == 1
    # No budget: one generation; a continued redo starts at the attempt it is given.
    assert len(FailsUntilSeedEngine(good_seed=2).generate_with_retries(requests[:1])[0]) == 1
    later = FailsUntilSeedEngine(good_seed=2)
    assert later.generate_with_retries(requests[:1], first_attempts=[2])[0][0].attempt == 2
    assert later.seen == [(1, {"temperature": 0.7, "seed": 2})]

    # The deterministic reasoner is never retried: another attempt would repeat the first.
    class FailingFacs(FacsEngine):
        calls = 0

        def generate(self, requests, sampling=None):
            self.calls += 1
            return [Generation(text="", error="ValueError: no answer") for _ in requests]

    facs = FailingFacs()
    assert len(facs.generate_with_retries([ThinkRequest(emotion="sad", level=1)], retries=5)[0]) == 1
    assert facs.calls == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"emotion": "joyful"}, "unknown emotion 'joyful'"),
        ({"text": "   "}, "emotion text is empty"),
        ({"emotion": "happy", "level": 42}, "out of range"),
        ({}, "nothing to think about"),
        ({"evidence": (AUEvidence(au=12, mean=1, peak=2),), "level": 0}, "out of range"),
    ],
)
def test_bad_requests_raise_clear_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        ThinkRequest(**kwargs)


def test_bad_evidence_and_engine_names():
    with pytest.raises(UserError, match="AU99"):
        AUEvidence(au=99, mean=0, peak=1)
    with pytest.raises(UserError, match="below mean"):
        AUEvidence(au=12, mean=2, peak=1)
    with pytest.raises(UserError, match="unknown engine"):
        make_engine("gpt")
    with pytest.raises(UserError, match="no model settings"):
        make_engine("facs", model="x")


def test_think_cli_facs(tmp_path):
    env = offline_env(tmp_path / "net.log")
    proc = run_tbd("think", "contempt", "--level", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    ann = json.loads(proc.stdout)
    assert ann["validation"]["outcome"] == "accepted"
    assert {u["au"] for u in ann["cot"]["action_units"]} == {12, 14}
    assert "Lip Corner Puller" in proc.stderr and "zygomaticus major" in proc.stderr  # the summary table

    evidence = tmp_path / "ev.json"
    evidence.write_text(json.dumps([{"au": 12, "mean": 1.0, "peak": 2.5}]))
    proc = run_tbd(
        "think", "--text", "a bittersweet smile", "--evidence", str(evidence), "--json", "true", env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["request"]["evidence"][0]["au"] == 12

    for args, message in [
        (["joyful"], "unknown emotion"),
        (["--text", ""], "emotion text is empty"),
        (["happy", "--level", "9"], "out of range"),
        (["happy", "--think.engine", "vllm"], "needs a model (--think.model)"),
        (["happy", "--evidence", str(tmp_path / "none.json")], "does not exist"),
    ]:
        proc = run_tbd("think", *args, env=env)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "net.log").exists()
