"""The conditioning check (`tbd check-conditioning`, run as a user runs it): a model overfit on a handful of
clips follows each condition it is given (speech moves the mouth with the new audio, the emotion text moves
the calibrated AUs towards the other emotion, the reference changes the identity), and the check fails for
each when that path is broken on purpose. Slow: an overfit of 4 clips (~6 min on 2 cores) and four checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.conditioning import CheckConfig
from tests.conftest import check_conditioning as check

pytestmark = pytest.mark.timeout(3600)  # the overfit (about 6 min unloaded) runs in the first test's setup


def test_a_failing_overfit_is_one_line_after_trains_own(datasets, tmp_path, netguard_log):
    """The check overfits through `tbd train`, as a user would run it; when that fails (here a denoiser field
    the config misspells) train's own line says why and the check adds one line, not its subprocess's
    traceback (before: `CalledProcessError` and 20 lines of stack)."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs/train/tiny.yaml").read_text())
    config["model"]["model_overrides"]["hedas"] = 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    proc, report = check(datasets["mead"]["data"], tmp_path / "check", netguard_log, "--train_config", str(bad),
                         "--steps", "1")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "model.model_overrides.hedas: not a field of the 'tiny' denoiser" in proc.stderr
    assert "the overfit's `tbd train --config" in proc.stderr.strip().splitlines()[-1] and report is None


@pytest.mark.slow
def test_an_overfit_model_follows_speech_text_and_reference(overfit):
    _, out, report = overfit
    effects = report["effects"]
    assert report["passed"], effects
    assert all(e["n"] == 4 and e["effect"] >= e["threshold"] for e in effects.values() if e["gating"])
    # The local edit (a sentence outside mouth and jaw removed) is measured on the sad clips (AU4 or AU1), not on
    # the happy ones (their only such AU, AU6, is not read at 48 px); reported only
    assert effects["local"]["n"] == 2 and not effects["local"]["gating"]
    rows = report["per_clip"]
    # The lip-sync proxy follows the new audio, not the old one.
    assert sum(r["sync_new_audio"] for r in rows) > sum(r["sync_old_audio"] for r in rows) + 0.4
    assert (out / "conditioning.png").is_file() and (out / "model" / "model_index.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["speech", "text", "reference"])
def test_the_check_fails_when_a_path_is_broken_on_purpose(overfit, path, netguard_log):
    data, out, _ = overfit
    # 12 frames a clip (the overfit's own check: 24): what each case asserts reads the same, in 146 s for the
    # three instead of 190 (2026-12-06, the suite's overfit: speech 0.436 and text 1.519 still act, the
    # reference cut reads 1e-4)
    proc, report = check(
        data,
        out.parent / path,
        netguard_log,
        "--model",
        str(out / "model"),
        "--break_path",
        path,
        max_frames=12,
    )
    assert proc.returncode == 1 and "conditioning check failed" in proc.stderr and path in proc.stderr
    effect = report["effects"][path]["effect"]
    # The broken condition changes nothing at all. With the reference cut, the other clip's landmarks still
    # place the pose and the regions the local text acts in (inputs of their own, outside the reference path):
    # 1.4e-4 of the references' difference (2026-11-30), 1.07e-3 once the tracker settled new detections
    # (CI, 2026-12-06): held under a hundredth of the bar the check gates the reference on.
    bar = CheckConfig.model_fields["thresholds"].default["reference"] / 100 if path == "reference" else 1e-6
    assert effect is None or abs(effect) < bar
    if path != "reference":  # without a reference there may be no face to measure the others on
        others = [e["passed"] for c, e in report["effects"].items() if c != path and e["gating"]]
        assert len(others) == 2 and all(others)  # the others still act
    if path == "text":  # the local sentences are cut too: the local edit then changes nothing at all
        local = report["effects"]["local"]
        assert local["n"] == 2 and abs(local["effect"]) < 1e-6 and not local["passed"], local
