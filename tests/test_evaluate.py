"""`tbd evaluate` on the demo shards: scoring plumbing on real clips, the ablation table, JSON and MLflow."""

from __future__ import annotations

import json

import pytest

from evaluation.evaluate import EvaluateConfig, emotion_classifier, groundtruth_index, load_clips, score_clip
from tests.conftest import offline_env, run_tbd


@pytest.fixture(scope="module")
def mead(datasets):
    return datasets["mead"]["data"], datasets["mead"]["annotate"]["version"]


def test_a_real_clip_scored_against_itself(mead, demo_corpus):
    """Generated = the real clip: ideal fidelity, the face re-found in every frame, landmarks within a pixel
    or two, the lip-sync proxy and AU errors computed (against the CoT and the corpus ground truth)."""
    data, version = mead
    config = EvaluateConfig(model=data, data=data, version=version, split="val", max_clips=1, max_frames=40)
    [clip] = load_clips(config, size=64, version=version)
    clf, baselines = emotion_classifier(data)
    gt = groundtruth_index(demo_corpus).get(clip.meta["video"])
    assert gt is not None and gt.is_file()
    requested = {u["au"]: 3.0 for u in clip.cot["action_units"]}
    row, measured = score_clip(clip, clip.frames, requested, gt, clf, baselines)
    assert row["psnr"] == 100.0 and row["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert row["face_rate"] == 1.0 and row["lmd_full"] < 2.0 and row["lmd_mouth"] < 2.0
    assert -6 <= row["sync_offset"] <= 6 and -1 <= row["sync_corr"] <= 1
    assert row["au_control_error"] is not None and row["au_gt_error"] is not None and row["au_gt_error"] < 2.5
    assert row["emotion_correct"] in (0.0, 1.0)
    assert all(len(series) == len(clip.frames) for series in measured.values())


def test_evaluate_ablation_table_json_and_mlflow(mead, demo_corpus, tiny_model, tmp_path, netguard_log):
    import mlflow
    import torch

    data, version = mead
    db = tmp_path / "mlflow.db"
    # Small local stand-ins for user-supplied InceptionV3 / I3D / AlexNet weights, as TorchScript files.
    torch.manual_seed(0)
    pool = [torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=8), *pool)).save(tmp_path / "fid.pt")
    video_net = torch.nn.Sequential(
        torch.nn.Conv3d(3, 4, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten()
    )
    torch.jit.script(video_net).save(tmp_path / "fvd.pt")
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))).save(
        tmp_path / "lpips.pt"
    )  # one feature map
    proc = run_tbd(
        "evaluate", "--model", str(tiny_model), "--data", str(data), "--version", version, "--split", "val",
        "--max_clips", "2", "--max_frames", "8", "--guidance.steps", "2", "--ablations", "true", "--out", str(tmp_path / "eval"),
        "--groundtruth", str(demo_corpus), "--tracking_uri", f"sqlite:///{db}", "--fid_net", str(tmp_path / "fid.pt"),
        "--fvd_net", str(tmp_path / "fvd.pt"), "--lpips_net", str(tmp_path / "lpips.pt"),
        env=offline_env(netguard_log), timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for mode in ("progressive", "single-stage", "label-only", "no-masks"):
        assert mode in proc.stderr  # one table row per mode
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert set(report["results"]) == {"progressive", "single-stage", "label-only", "no-masks"}
    assert report["guidance"]["steps"] == 2 and report["version"] == version
    assert all(r["clips"] == 2 and 0 < r["psnr"] < 100 for r in report["results"].values())
    assert all(r["fid"] >= 0 and r["fvd"] >= 0 and r["lpips"] > 0 for r in report["results"].values())
    assert len({tuple(c["key"] for c in rows) for rows in report["per_clip"].values()}) == 1  # same clips
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    [run] = client.search_runs(client.get_experiment_by_name("think-before-draw").experiment_id)
    assert (
        run.data.tags["tbd.job"] == "evaluate"
        and "psnr" in run.data.metrics
        and "no-masks/psnr" in run.data.metrics
    )
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} == {
        "evaluation/evaluation.json",
        "evaluation/strip.png",
        "evaluation/au_timeline.png",
    }


def test_no_clips_of_the_split_is_a_clear_error(mead, tiny_model, netguard_log):
    data, version = mead
    proc = run_tbd(
        "evaluate",
        "--model",
        str(tiny_model),
        "--data",
        str(data),
        "--split",
        "test",
        env=offline_env(netguard_log),
    )
    assert proc.returncode == 2 and "no usable clips of split 'test'" in proc.stderr, proc.stderr[-2000:]
