"""`tbd generate`: portrait + speech + emotion -> mp4 with the speech muxed, strip, AU plot; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from tests.conftest import offline_env, run_tbd


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image
    from skimage import data

    tmp = tmp_path_factory.mktemp("inputs")
    Image.fromarray(data.astronaut()).save(tmp / "astronaut.png")
    Image.fromarray(np.full((256, 256, 3), 127, np.uint8)).save(tmp / "wall.png")
    rate, seconds = 16000, 1.3
    t = np.arange(int(rate * seconds)) / rate
    speech = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wavfile.write(tmp / "speech.wav", rate, (speech * 32767).astype(np.int16))
    (tmp / "notes.wav").write_text("this is not audio")
    return {
        "face": tmp / "astronaut.png",
        "wall": tmp / "wall.png",
        "speech": tmp / "speech.wav",
        "text": tmp / "notes.wav",
    }


def generate(inputs, model, out, *extra, image="face", audio="speech", log):
    return run_tbd(
        "generate", "--image", str(inputs[image]), "--audio", str(inputs[audio]), "--model", str(model),
        "--out", str(out), "--guidance.steps", "3", *extra, env=offline_env(log), timeout=300,
    )  # fmt: skip


def test_generate_writes_mp4_with_audio_strip_and_au_plot(inputs, tiny_model, tmp_path, netguard_log):
    import av

    out = tmp_path / "contempt.mp4"
    proc = generate(inputs, tiny_model, out, "--emotion", "contempt", "--level", "2", log=netguard_log)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "denoising" in proc.stderr  # progress over denoising steps
    with av.open(str(out)) as container:
        assert container.streams.audio and container.streams.video
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        audio_s = float(container.streams.audio[0].duration * container.streams.audio[0].time_base)
    assert len(frames) == int(1.3 * 25) and frames[0].shape == (32, 32, 3)
    assert abs(audio_s - len(frames) / 25) < 0.1  # the speech is muxed, trimmed to the video
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["emotion"] == "contempt" and report["requested_aus"]  # thought first: AUs requested
    assert all(len(v) == len(frames) for v in report["measured_aus"].values())
    assert out.with_suffix(".png").stat().st_size > 0 and Path(report["au_plot"]).stat().st_size > 0

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_model.parent / 'mlflow.db'}")  # beside the model folder
    experiment = client.get_experiment_by_name("tbd-generate").experiment_id
    [run] = client.search_runs(experiment, filter_string="params.emotion = 'contempt'")
    assert run.data.tags["tbd.job"] == "generate" and run.data.params["emotion"] == "contempt"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "generated")} >= {
        "generated/contempt.mp4",
        "generated/contempt.png",
        "generated/contempt_aus.png",
        "generated/report.json",
    }


def test_label_only_ablation_uses_no_cot(inputs, tiny_model, tmp_path, netguard_log):
    out = tmp_path / "label.mp4"
    proc = generate(
        inputs,
        tiny_model,
        out,
        "--emotion",
        "happy",
        "--label_only",
        "true",
        "--guidance.mode",
        "single-stage",
        log=netguard_log,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["global_text"].startswith("happy") and report["local_text"] == []


@pytest.mark.parametrize(
    "image, audio, extra, message",
    [
        ("wall", "speech", ("--emotion", "happy"), "no face found"),
        ("face", "text", ("--emotion", "happy"), "unreadable audio"),
        ("face", "speech", ("--emotion", "furious"), "unknown emotion 'furious'"),
    ],
)
def test_bad_inputs_are_clear_errors(
    inputs, tiny_model, tmp_path, netguard_log, image, audio, extra, message
):
    proc = generate(
        inputs, tiny_model, tmp_path / "x.mp4", *extra, image=image, audio=audio, log=netguard_log
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "x.mp4").exists()
