"""The conditioning check (`tbd check-conditioning`): a model overfit on a handful of clips follows each
condition it is given (speech moves the mouth with the new audio, the emotion text moves the calibrated AUs
towards the other emotion, the reference changes the identity), and the check fails for each when that
path is broken on purpose. Slow: an overfit of 4 clips (~4 min on 2 cores) and four checks."""

from __future__ import annotations

import pytest

CLIPS = ["mead_W001_happy_3_000", "mead_W001_sad_3_000", "mead_W002_happy_3_000", "mead_W002_sad_3_000"]


@pytest.fixture(scope="module")
def checked(datasets, tmp_path_factory):
    from evaluation.conditioning import CheckConfig, run_check

    data = datasets["mead"]["data"]
    out = tmp_path_factory.mktemp("check")
    config = CheckConfig(data=data, clips=CLIPS, steps=300, max_frames=24, out=out / "overfit",
                         tracking_uri=f"sqlite:///{out / 'mlflow.db'}")  # fmt: skip
    return config, run_check(config)


@pytest.mark.slow
def test_an_overfit_model_follows_speech_text_and_reference(checked):
    config, report = checked
    effects = report["effects"]
    assert report["passed"], effects
    assert all(e["n"] == 4 and e["effect"] >= e["threshold"] for e in effects.values())
    rows = report["per_clip"]
    # The lip-sync proxy follows the new audio, not the old one.
    assert sum(r["sync_new_audio"] for r in rows) > sum(r["sync_old_audio"] for r in rows) + 0.4
    assert (config.out / "conditioning.png").is_file() and (
        config.out / "model" / "model_index.json"
    ).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["speech", "text", "reference"])
def test_the_check_fails_when_a_path_is_broken_on_purpose(checked, path):
    from evaluation.conditioning import check

    config, _ = checked
    broken = config.model_copy(
        update={"model": config.out / "model", "break_path": path, "out": config.out.parent / path}
    )
    with pytest.raises(SystemExit, match=path):
        check(broken)
    import json

    report = json.loads((broken.out / "conditioning.json").read_text())
    effect = report["effects"][path]["effect"]
    assert effect is None or abs(effect) < 1e-6  # the broken condition changes nothing at all
    if path != "reference":  # without a reference there may be no face to measure the others on
        assert all(e["passed"] for c, e in report["effects"].items() if c != path)  # the others still act
