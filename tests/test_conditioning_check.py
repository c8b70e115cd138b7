"""The conditioning check (`tbd check-conditioning`, run as a user runs it): a model overfit on a handful of
corpus 3's clips follows each condition it is given (speech moves the mouth with the new audio, the emotion
text moves the calibrated AUs towards the other emotion, the reference changes the identity, one local AU
sentence removed lowers that AU in its region and nothing outside it), and the check fails for each when that
path is broken on purpose. Slow: an overfit of 6 clips (~8 min on 2 cores) and five checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.conditioning import CheckConfig
from tests.conftest import check_conditioning as check

pytestmark = pytest.mark.timeout(3600)  # the overfit (about 9 min unloaded) runs in the first test's setup


def test_a_failing_overfit_is_one_line_after_trains_own(varied, tmp_path, netguard_log):
    """The check overfits through `tbd train`, as a user would run it; when that fails (here a denoiser field
    the config misspells) train's own line says why and the check adds one line, not its subprocess's
    traceback (before: `CalledProcessError` and 20 lines of stack)."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs/train/tiny.yaml").read_text())
    config["model"]["model_overrides"]["hedas"] = 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    proc, report = check(varied[1], tmp_path / "check", netguard_log, "--train_config", str(bad),
                         "--steps", "1")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "model.model_overrides.hedas: not a field of the 'tiny' denoiser" in proc.stderr
    assert "the overfit's `tbd train --config" in proc.stderr.strip().splitlines()[-1] and report is None


@pytest.mark.slow
def test_an_overfit_model_follows_speech_text_reference_and_local_text(overfit):
    _, out, report = overfit
    effects = report["effects"]
    assert report["passed"], effects
    assert all(e["effect"] >= e["threshold"] for e in effects.values()), effects
    # W002's one clip has no text partner (no other emotion of hers is checked)
    assert [effects[c]["n"] for c in ("speech", "text", "reference")] == [6, 5, 6]
    # The local edit: AU4's sentence removed from the sad takes that show it (clips 0 and 2; the other clip of
    # each take, the same sentence spoken, goes without it): their brows' AU4 falls by the declared 0.25 at
    # least, and the AUs of the other regions move by 0.15 at most
    rows = {r["key"]: r for r in report["per_clip"] if r.get("local") is not None}
    assert sorted(rows) == ["mead_W001_sad_3_000", "mead_W001_sad_3_002"], report["per_clip"]
    assert all(r["local_au"] == 4 and r["local"] >= 0.25 for r in rows.values()), rows
    # Its leak (mean |change| of the other regions' AUs) is reported, not gated: the bound declared for it,
    # 0.15, is not met by the real takes themselves (W001's sad take with AU4 against the one without: AU5
    # 0.01 vs 0.43, AU2 0.02 vs 0.34; the measure reads the lids and the outer brows with the lowered brow),
    # and overfits vary: 0.094 and 0.191 on two runs (2026-12-06). To validate on real takes, then gate.
    assert effects["local"]["leak"] is not None and not effects["local"]["gating"]
    # The lip-sync proxy follows the new audio, not the old one.
    rows = report["per_clip"]
    assert sum(r["sync_new_audio"] for r in rows) > sum(r["sync_old_audio"] for r in rows) + 0.4
    assert (out / "conditioning.png").is_file() and (out / "model" / "model_index.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["speech", "text", "reference", "local"])
def test_the_check_fails_when_a_path_is_broken_on_purpose(overfit, path, netguard_log):
    data, out, _ = overfit
    proc, report = check(
        data, out.parent / path, netguard_log, "--model", str(out / "model"), "--break_path", path
    )
    assert proc.returncode == 1 and "conditioning check failed" in proc.stderr and path in proc.stderr
    effect = report["effects"][path]["effect"]
    # The broken condition changes nothing at all. With the reference cut, the other clip's landmarks still
    # place the pose and the regions the local text acts in (inputs of their own, outside the reference path):
    # 1.4e-4 of the references' difference (2026-11-30), 1.07e-3 once the tracker settled new detections
    # (CI, 2026-12-06): held under a hundredth of the bar the check gates the reference on.
    bar = CheckConfig.model_fields["thresholds"].default["reference"] / 100 if path == "reference" else 1e-6
    assert effect is None or abs(effect) < bar
    # The others still act (at the overfit's 24 frames: at 12 its speech effect is 0.145 unbroken). Without a
    # reference there may be no face to measure them on. The local sentences of the mouth (AU12's, AU15's) act
    # where speech does: cut, the speech effect falls (0.30 -> 0.20, 2026-12-06), so it is not asserted there.
    others = {
        "speech": ("text", "reference"),
        "text": ("speech", "reference"),
        "local": ("text", "reference"),
    }
    for c in others.get(path, ()):
        assert report["effects"][c]["passed"], (c, report["effects"])
    if path in ("text", "local"):  # the local sentences are cut: the local edit then changes nothing at all
        local = report["effects"]["local"]
        assert local["n"] == 2 and abs(local["effect"]) < 1e-6 and not local["passed"], local


def test_the_local_edit_removes_only_a_sentence_the_label_is_also_seen_without():
    """`varied_aus`: a sad take with AU4 beside one without it has AU4 to remove, and nothing else (AU1 and AU15
    are in every sad clip; the mouth is left to speech); a label whose clips all carry the same AUs (the default
    demo corpus) has none, so its local edit is not made (n = 0) rather than asking for an AU its training
    never showed absent."""
    from evaluation.condition_effects import local_edit, varied_aus

    def cot(*aus):
        regions = {1: "brows", 4: "brows", 5: "eyes", 12: "mouth", 15: "mouth", 17: "jaw"}
        return {"action_units": [{"au": a, "region": regions[a]} for a in aus]}

    cots = {"sad0": cot(1, 4, 15), "sad1": cot(1, 15, 17), "happy0": cot(12), "happy1": cot(12)}
    emotions = {k: k[:-1] for k in cots}
    varied = varied_aus(cots, emotions)
    assert varied == {"sad0": {4}, "sad1": {17}, "happy0": set(), "happy1": set()}
    measurable = {1: 0.0, 2: 0.0, 4: 0.0, 5: 0.0, 12: 0.0}
    edited, au = local_edit(cots["sad0"], measurable, varied["sad0"])
    assert au == 4 and [u["au"] for u in edited["action_units"]] == [1, 15]
    assert local_edit(cots["sad1"], measurable, varied["sad1"]) is None  # AU17: jaw, and not measured
    assert local_edit(cots["happy0"], measurable, varied["happy0"]) is None
    assert varied_aus({"a": cot(1, 4, 15), "b": cot(1, 4, 15)}, {"a": "sad", "b": "sad"}) == {
        "a": set(),
        "b": set(),
    }
