"""Pipeline jobs on the demo corpus, through the real CLI, real Ray, real WebDataset tars, offline:
ingest -> preprocess (media shards) -> annotate (annotation shards), bad inputs, crash + resume."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from media.video_io import write_m4a, write_mp4
from pipelines.annotate import read_annotations
from pipelines.data_folder import DataFolder
from pipelines.shards import read_manifest, sha256_file, tar_members
from tests.conftest import PREPROCESS_ARGS, local_ray_head, offline_env, run_tbd, tbd_ok


def ledger(data: Path, stage_file: str) -> pd.DataFrame:
    return pd.read_parquet(data / "ledger" / f"{stage_file}.parquet")


@pytest.mark.parametrize("dataset", ["mead", "hdtf"])
def test_every_clip_ends_in_shards_or_ledger_and_shards_align(datasets, dataset, demo_corpus, netguard_log):
    data = datasets[dataset]["data"]
    manifest = pd.read_parquet(data / "manifest.parquet")
    corpus = json.loads((demo_corpus / "corpus.json").read_text())
    n_files = sum(c["layout"] == dataset for c in corpus["clips"])
    assert len(manifest) + len(ledger(data, "ingest")) == n_files

    media = read_manifest(data / "media")
    assert media["samples"] + len(ledger(data, "preprocess")) == len(manifest)
    assert media["samples"] == len(manifest)  # the demo corpus is clean
    for shard in media["shards"]:
        assert sha256_file(data / "media" / f"{shard['name']}.tar") == shard["sha256"]
        assert shard["keys"] == sorted(shard["keys"])

    version = datasets[dataset]["annotate"]["version"]
    ann = read_manifest(data / "annotations" / version)
    assert [(s["name"], s["keys"]) for s in ann["shards"]] == [
        (s["name"], s["keys"]) for s in media["shards"]
    ]
    assert sum(ann["outcomes"].values()) == media["samples"]
    assert ann["outcomes"]["rejected"] == len(ledger(data, f"annotate-{version}"))
    assert not netguard_log.exists() or not netguard_log.read_text().strip(), netguard_log.read_text()


def test_media_samples_hold_the_documented_members(datasets, analyzer, tmp_path):
    data = datasets["mead"]["data"]
    name = read_manifest(data / "media")["shards"][0]["name"]
    key, members = tar_members(data / "media" / f"{name}.tar")[0]
    assert set(members) == {"mp4", "wav", "landmarks.npy", "au.npy", "audio.npy", "json"}
    assert "." not in key
    meta = json.loads(members["json"])
    from io import BytesIO

    lm = np.load(BytesIO(members["landmarks.npy"]))
    au = np.load(BytesIO(members["au.npy"]))
    mel = np.load(BytesIO(members["audio.npy"]))
    assert lm.shape == (meta["frames"], 468, 3) and lm.dtype == np.float16
    assert 0 <= lm[..., :2].min() and lm[..., :2].max() <= 1
    assert au.shape == (meta["frames"], len(meta["au_names"])) and mel.shape == (meta["frames"], 80)
    assert meta["fps"] == 25 and meta["face_fraction"] >= 0.8 and meta["key"] == key
    assert members["mp4"][4:8] == b"ftyp" and members["wav"][:4] == b"RIFF"
    # The stored landmarks are where the face is in the stored crop video: re-detect on frame 0.
    from media.video_io import read_frames

    (tmp_path / "crop.mp4").write_bytes(members["mp4"])
    frames, fps = read_frames(tmp_path / "crop.mp4")
    assert fps == 25 and frames.shape[:3] == (meta["frames"], 64, 64)
    result = analyzer.analyze(np.kron(frames[0], np.ones((4, 4, 1), np.uint8)))  # upscaled for the detector
    assert result.found
    redetected = result.mesh.landmarks[:, :2] / 256
    assert np.abs(redetected - lm[0, :, :2].astype(float)).mean() < 0.02


def test_jobs_are_tracked_in_one_store_with_linked_runs(datasets):
    """Data folders side by side share one store; each stage has its experiment; the annotate run names
    the preprocess run that made its media; artifacts sit beside the store, not in the working directory."""
    import mlflow

    from tbd_core.tracking import run_ref, tracking_uri

    [uri] = {tracking_uri(None, d["data"]) for d in datasets.values()}
    client = mlflow.MlflowClient(uri)  # (not mlflow.set_tracking_uri: it sets the variable for later tests)
    experiments = [client.get_experiment_by_name(n).experiment_id for n in ("tbd-preprocess", "tbd-annotate")]
    for dataset in ("mead", "hdtf"):
        data = datasets[dataset]["data"]
        runs = client.search_runs(experiments, filter_string=f"tags.`tbd.data` = '{data.resolve()}'")
        by_job = {r.data.tags["tbd.job"]: r for r in runs}
        assert set(by_job) == {"preprocess", "annotate"} and len(runs) == 2
        pre, ann = by_job["preprocess"], by_job["annotate"]
        assert client.get_experiment(pre.info.experiment_id).name == "tbd-preprocess"
        assert pre.data.metrics["samples"] == read_manifest(data / "media")["samples"]
        assert pre.data.metrics["frames_per_s"] > 0
        version = datasets[dataset]["annotate"]["version"]
        assert ann.data.params["version"] == version
        assert run_ref(data / "media") == pre.info.run_id
        assert ann.data.tags["tbd.preprocess_run"] == pre.info.run_id
        assert run_ref(data / "annotations" / version) == ann.info.run_id
        artifacts = {a.path for a in client.list_artifacts(pre.info.run_id)}
        assert {"manifest.json", "preprocess.parquet"} <= artifacts
        assert pre.info.artifact_uri.startswith(Path(data.parent.resolve(), "mlartifacts").as_uri())


def test_shards_read_back_with_ray_data(datasets):
    import ray

    data = datasets["hdtf"]["data"]
    media = read_manifest(data / "media")
    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        tars = [str(data / "media" / f"{s['name']}.tar") for s in media["shards"]]
        rows = ray.data.read_webdataset(tars, decoder=None).take_all()
    finally:
        ray.shutdown()
    assert sorted(r["__key__"] for r in rows) == sorted(k for s in media["shards"] for k in s["keys"])


def test_annotations_carry_evidence_and_provenance(datasets):
    data = datasets["mead"]["data"]
    version = datasets["mead"]["annotate"]["version"]
    shard = read_manifest(data / "annotations" / version)["shards"][0]
    anns = {
        k: json.loads(m["cot.json"])
        for k, m in tar_members(data / "annotations" / version / f"{shard['name']}.tar")
    }
    assert list(anns) == shard["keys"]
    for key, ann in anns.items():
        assert ann["provenance"]["annotation_version"] == version
        assert ann["request"]["evidence"], key  # measured AU evidence went into the request
        assert ann["request"]["emotion"] in key


def test_regenerate_with_vllm_adds_a_version_and_leaves_media_untouched(datasets, tiny_llm, netguard_log):
    data = datasets["hdtf"]["data"]
    before = {p.name: sha256_file(p) for p in (data / "media").glob("*.tar")}
    args = ("--think.model", str(tiny_llm), "--think.max_model_len", "12288", "--think.max_tokens", "3072")
    result = tbd_ok(
        "annotate",
        "--data",
        str(data),
        "--think.engine",
        "vllm",
        *args,
        log=netguard_log,
        env_extra={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert result["version"] != datasets["hdtf"]["annotate"]["version"]
    assert {p.name: sha256_file(p) for p in (data / "media").glob("*.tar")} == before
    proc = run_tbd("annotations", "--data", str(data), "--json", "true", env=offline_env(netguard_log))
    versions = {row["version"]: row for row in json.loads(proc.stdout)}
    assert set(versions) == {result["version"], datasets["hdtf"]["annotate"]["version"]}
    row = versions[result["version"]]
    assert row["engine"] == "vllm" and row["samples"] == read_manifest(data / "media")["samples"]
    assert row["accepted"] + row["repaired"] + row["rejected"] == row["samples"]
    rejected = ledger(data, f"annotate-{result['version']}")
    assert len(rejected) == row["rejected"] and all(rejected["reason"].str.len() > 0)
    # A rerun is a no-op: every annotation shard is verified and kept.
    again = tbd_ok("annotate", "--data", str(data), "--think.engine", "vllm", *args, log=netguard_log)
    assert again["version"] == result["version"] and again["requests"] == 0
    # --only-rejected with a retry budget of 1 regenerates exactly the rejected annotations, once each,
    # at attempt 1 (seed + 1, sampled); the rejected attempt 0 stays in the annotation.
    before_redo = annotations_of(data, result["version"])
    redo = tbd_ok(
        "annotate",
        "--data",
        str(data),
        "--think.engine",
        "vllm",
        *args,
        "--only_rejected",
        "true",
        "--retries",
        "1",
        log=netguard_log,
    )
    assert redo["requests"] == row["rejected"] and redo["generations"] == redo["distinct_requests"]
    after = annotations_of(data, result["version"])
    assert set(after) == set(before_redo)
    redone = [k for k, a in before_redo.items() if a.validation.outcome == "rejected"]
    assert len(redone) == row["rejected"]
    for k, a in after.items():
        if k not in redone:
            assert a == before_redo[k]  # accepted ones are kept as they were
            continue
        assert a.attempt == 1 and a.sampling["seed"] == 1 and a.sampling["temperature"] == 0.7
        assert [(e.attempt, e.raw) for e in a.earlier] == [(0, before_redo[k].raw)]
        assert a.earlier[0].reasons == before_redo[k].validation.reasons
        assert a.provenance.annotation_version == result["version"]
    if redone:
        assert any(after[k].raw != before_redo[k].raw for k in redone)  # another draw, not a replay
        reasons = ledger(data, f"annotate-{result['version']}")["reason"]
        assert len(reasons) == redo["n_rejected"]
        assert all("(all 2 attempts rejected)" in r for r in reasons)


def annotations_of(data: Path, version: str) -> dict:
    folder = DataFolder(data).annotation_dir(version)
    return {
        k: a for tar in sorted(folder.glob("*.tar")) for k, a in read_annotations(folder, tar.stem).items()
    }


def test_bad_inputs_end_in_the_ledger_with_stage_and_reason(demo_corpus, tmp_path, netguard_log):
    root = tmp_path / "mead"
    good = sorted((demo_corpus / "mead" / "W001").glob("video/front/happy/level_*/000.mp4"))
    for i, video in enumerate(good):  # two good clips
        for kind, src in (
            ("video/front", video),
            ("audio", Path(str(video).replace("video/front", "audio")).with_suffix(".m4a")),
        ):
            dst = root / "S001" / kind / "happy" / f"level_{i + 1}" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)

    def clip(name: str, emotion: str = "sad"):
        video = root / "S002" / "video" / "front" / emotion / "level_1" / f"{name}.mp4"
        audio = root / "S002" / "audio" / emotion / "level_1" / f"{name}.m4a"
        video.parent.mkdir(parents=True, exist_ok=True)
        audio.parent.mkdir(parents=True, exist_ok=True)
        return video, audio

    video, audio = clip("001")  # corrupt mp4
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    shutil.copy(root / "S001" / "audio" / "happy" / "level_1" / "000.m4a", audio)
    video, audio = clip("002")  # zero-byte mp4
    video.write_bytes(b"")
    shutil.copy(root / "S001" / "audio" / "happy" / "level_1" / "000.m4a", audio)
    video, audio = clip("003")  # silent audio
    shutil.copy(good[0], video)
    write_m4a(audio, np.zeros(32000, np.float32))
    video, audio = clip("004")  # no face: textured noise frames
    rng = np.random.default_rng(0)
    write_mp4(video, rng.integers(0, 255, (50, 128, 128, 3), dtype=np.uint8))
    shutil.copy(root / "S001" / "audio" / "happy" / "level_1" / "000.m4a", audio)
    video, _ = clip("005", emotion="bored")  # an emotion MEAD does not have
    shutil.copy(good[0], video)

    data = tmp_path / "data"
    tbd_ok("ingest", "--dataset", "mead", "--root", str(root), "--out", str(data), log=netguard_log)
    metrics = tbd_ok("preprocess", "--data", str(data), *PREPROCESS_ARGS, log=netguard_log)
    assert metrics["samples"] == 2 and metrics["rejects"] == 4
    rejects = {row.key.split("_")[-1]: row for row in ledger(data, "preprocess").itertuples()}
    assert rejects["001"].stage == "decode" and "unreadable video" in rejects["001"].reason
    assert rejects["002"].stage == "decode"
    assert rejects["003"].stage == "audio" and "silent audio" in rejects["003"].reason
    assert rejects["004"].stage == "face" and "no face in" in rejects["004"].reason
    ingest_rejects = ledger(data, "ingest")
    assert (
        list(ingest_rejects["stage"]) == ["ingest"]
        and "unknown emotion folder 'bored'" in ingest_rejects["reason"][0]
    )
    annotated = tbd_ok("annotate", "--data", str(data), log=netguard_log)
    assert annotated["n_accepted"] + annotated["n_repaired"] + annotated["n_rejected"] == 2


def test_crash_midway_then_resume_equals_a_clean_run(datasets, tmp_path, netguard_log):
    clean = datasets["mead"]["data"]
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(clean / "manifest.parquet", data / "manifest.parquet")
    last_shard = read_manifest(clean / "media")["shards"][-1]
    fault = f"preprocess:{last_shard['keys'][1]}"
    proc = run_tbd(
        "preprocess",
        "--data",
        str(data),
        *PREPROCESS_ARGS,
        env={**offline_env(netguard_log), "TBD_INJECT_FAULT": fault},
    )
    assert proc.returncode != 0 and "InjectedFault" in proc.stderr
    assert not (data / "media" / "manifest.json").exists()
    assert not (data / "media" / f"{last_shard['name']}.json").exists()
    survived = len(list((data / "media").glob("shard-*.json")))
    assert survived >= 1  # shards finished before the crash stay finished
    resumed = tbd_ok("preprocess", "--data", str(data), *PREPROCESS_ARGS, log=netguard_log)
    assert resumed["shards_built"] == resumed["shards"] - survived
    assert read_manifest(data / "media") == read_manifest(clean / "media")


def test_a_rerun_over_a_finished_folder_reads_almost_none_of_its_shards(datasets, tmp_path):
    """Resume in time proportional to the new work (issue 39): a rerun of preprocess over a finished folder
    recognises each shard from its sidecar and the tar's size and modification time. Every file the rerun
    opens is seen by an audit hook; the tars it opens add up to under 1 % of the shards' bytes (the old
    resume hashed every tar twice: 200 %). With `verify` it reads them all; a tar changed in place (same
    size, a new time) is caught by its sha256."""
    import sys

    from pipelines.preprocess import PreprocessConfig, run_preprocess
    from pipelines.shards import finished

    data = tmp_path / "data"
    shutil.copytree(datasets["mead"]["data"], data)  # copy2: the tars keep their modification times
    media = data / "media"
    shards = {str(p.resolve()): p.stat().st_size for p in media.glob("*.tar")}
    opened: list[str] = []
    recording = [False]  # the hook outlives the test (audit hooks cannot be removed)

    def hook(event, args):
        if recording[0] and event == "open" and isinstance(args[0], str | Path):
            opened.append(str(Path(args[0]).resolve()))

    sys.addaudithook(hook)

    def rerun(verify: bool) -> tuple[float, dict]:
        opened.clear()
        recording[0] = True
        try:
            config = PreprocessConfig(data=data, media={"crop_size": 64}, clips_per_shard=8, verify=verify)
            metrics = run_preprocess(config)["metrics"]
        finally:
            recording[0] = False
        return sum(shards.get(path, 0) for path in opened) / sum(shards.values()), metrics

    fraction, metrics = rerun(verify=False)
    assert metrics["shards_built"] == 0 and fraction < 0.01, fraction
    verified, metrics = rerun(verify=True)
    assert metrics["shards_built"] == 0 and verified >= 1.0, verified
    assert read_manifest(media) == read_manifest(datasets["mead"]["data"] / "media")
    tar = media / "shard-000000.tar"
    body = bytearray(tar.read_bytes())
    body[-1024] ^= 0xFF  # one byte flipped, the same size, a new modification time
    tar.write_bytes(bytes(body))
    assert finished(media, "shard-000000") is None


def test_preprocess_workers_default_to_the_clusters_cpus_and_say_so(tmp_path, caplog):
    """Without `--concurrency` the preprocess job runs as many workers as the cluster's CPUs hold at
    `num_cpus_per_worker` each (at most one per shard to build), each library pinned to that many threads,
    and its log says so (issue 39: the default was a fixed 2 workers on any cluster)."""
    import logging

    import ray

    from pipelines.preprocess import PreprocessConfig, threads_per_worker, worker_count
    from tbd_core.ray_init import init_ray

    init_ray()
    cpus = int(ray.cluster_resources()["CPU"])
    config = PreprocessConfig(data=tmp_path)
    with caplog.at_level(logging.INFO, logger="pipelines.preprocess"):
        assert worker_count(config, shards=1000) == cpus
    assert f"{cpus} worker(s) x 1 thread(s) each" in caplog.text and f"cluster: {cpus} CPUs" in caplog.text
    assert worker_count(config, shards=1) == 1  # never more workers than shards to build
    halves = config.model_copy(update={"num_cpus_per_worker": 2.0})
    assert worker_count(halves, shards=1000) == max(1, cpus // 2) and threads_per_worker(halves) == 2
    assert worker_count(config.model_copy(update={"concurrency": 3}), shards=1000) == 3  # asked for: as asked


def test_ingest_splits_by_speaker_deterministically_with_overrides(demo_corpus, tmp_path):
    from pipelines.ingest import IngestConfig, ingest

    base = IngestConfig(dataset="mead", root=demo_corpus / "mead", out=tmp_path / "a")
    first, _ = ingest(base)
    again, _ = ingest(base.model_copy(update={"out": tmp_path / "b"}))
    assert first == again
    by_speaker = {}
    for clip in first:
        by_speaker.setdefault(clip.speaker, set()).add(clip.split)
    assert all(len(s) == 1 for s in by_speaker.values())  # a speaker never straddles splits
    pinned, _ = ingest(base.model_copy(update={"out": tmp_path / "c", "split_overrides": {"W003": "val"}}))
    assert {c.split for c in pinned if c.speaker == "W003"} == {"val"}
    assert [c.split for c in pinned if c.speaker != "W003"] == [c.split for c in first if c.speaker != "W003"]


def test_ingest_finds_every_clip_whatever_the_case_and_lists_the_rest(demo_corpus, tmp_path):
    """`002.MP4` with `002.M4A` is a clip; a stray file is in the ledger; `Zoë` and `Zoé` keep two keys."""
    from pipelines.ingest import IngestConfig, discover_hdtf, ingest

    src = demo_corpus / "mead" / "W001"
    root = tmp_path / "mead"
    level = root / "W001" / "video" / "front" / "happy" / "level_1"
    audio = root / "W001" / "audio" / "happy" / "level_1"
    level.mkdir(parents=True)
    audio.mkdir(parents=True)
    shutil.copy(src / "video/front/happy/level_1/000.mp4", level / "001.mp4")
    shutil.copy(src / "audio/happy/level_1/000.m4a", audio / "001.m4a")
    shutil.copy(src / "video/front/happy/level_1/000.mp4", level / "002.MP4")
    shutil.copy(src / "audio/happy/level_1/000.m4a", audio / "002.M4A")
    (level / "notes.txt").write_text("not a clip")
    clips, rejects = ingest(IngestConfig(dataset="mead", root=root, out=tmp_path / "data"))
    assert [c.clip for c in clips] == ["001", "002"] and clips[1].audio.endswith("002.M4A")
    assert [(r.stage, r.reason) for r in rejects] == [
        ("ingest", "not a clip: .txt file where .mp4 files are expected")
    ]

    hdtf = tmp_path / "hdtf"
    hdtf.mkdir()
    for name in ("WRA_Zoë_000.mp4", "WRA_Zoé_000.MP4"):
        shutil.copy(src / "video/front/happy/level_1/000.mp4", hdtf / name)
    found, _ = discover_hdtf(IngestConfig(dataset="hdtf", root=hdtf, out=tmp_path / "h"))
    assert len({c.key for c in found}) == 2 and all(c.key.startswith("hdtf_WRA_Zo-") for c in found)


def test_ingest_and_preprocess_errors_are_clear(tmp_path, netguard_log):
    env = offline_env(netguard_log)
    (tmp_path / "empty").mkdir()
    proc = run_tbd(
        "ingest",
        "--dataset",
        "hdtf",
        "--root",
        str(tmp_path / "empty"),
        "--out",
        str(tmp_path / "o"),
        env=env,
    )
    assert proc.returncode == 2 and "expected {WRA|WDA|RD}_{Name}_{nnn}.mp4" in proc.stderr
    proc = run_tbd(
        "ingest",
        "--dataset",
        "mead",
        "--root",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--split_overrides",
        "{W1: dev}",
        env=env,
    )
    assert proc.returncode == 2 and "split_overrides" in proc.stderr and "dev" in proc.stderr
    proc = run_tbd("preprocess", "--data", str(tmp_path / "nowhere"), env=env)
    assert proc.returncode == 2 and "run `tbd ingest` first" in proc.stderr


def test_ray_job_submit_runs_preprocess_on_a_local_head(datasets, tmp_path):
    """The cluster path: a local Ray head (started here, killed after), `ray job submit --working-dir`."""
    import subprocess
    import sys

    clean = datasets["hdtf"]["data"]
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(clean / "manifest.parquet", data / "manifest.parquet")
    bin_dir = Path(sys.executable).parent
    with local_ray_head() as (address, env):
        excludes = json.dumps({"excludes": [".venv", ".git", "out", "tests", "*.egg-info"]})
        repo = Path(__file__).resolve().parent.parent
        job = subprocess.run(
            [str(bin_dir / "ray"), "job", "submit", "--address", address, "--working-dir", str(repo),
             "--runtime-env-json", excludes, "--",
             "python", "-m", "tbd", "preprocess", "--data", str(data), *PREPROCESS_ARGS],
            env=env, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout + job.stderr
    assert read_manifest(data / "media") == read_manifest(clean / "media")


def test_audio_features_from_a_local_pretrained_encoder(datasets, tmp_path, netguard_log):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    encoder = tmp_path / "w2v"
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    Wav2Vec2Model(config).save_pretrained(encoder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000).save_pretrained(encoder)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(datasets["hdtf"]["data"] / "manifest.parquet", data / "manifest.parquet")
    args = ("--media.crop_size", "64", "--concurrency", "1")
    proc = run_tbd(
        "preprocess",
        "--data",
        str(data),
        *args,
        "--media.audio_encoder",
        str(tmp_path / "none"),
        env=offline_env(netguard_log),
    )
    assert proc.returncode == 2 and "audio encoder folder" in proc.stderr
    tbd_ok("preprocess", "--data", str(data), *args, "--media.audio_encoder", str(encoder), log=netguard_log)
    shard = read_manifest(data / "media")["shards"][0]
    from io import BytesIO

    for _key, members in tar_members(data / "media" / f"{shard['name']}.tar"):
        meta = json.loads(members["json"])
        feats = np.load(BytesIO(members["audio.npy"]))
        assert feats.shape == (meta["frames"], 32) and meta["audio_features"] == "encoder:w2v"
        assert np.isfinite(feats.astype(np.float32)).all() and feats.std() > 0


NATIVE_NOISE = ("INFO: [environment.cc", "Created TensorFlow Lite", "core_worker.cc", "InitGoogle")
# Library lines a user cannot act on (`tbd_core.terminal`): Ray Data's progress blocks and start lines, Ray's
# token notice, MLflow's database set-up
LIBRARY_NOISE = ("logging_progress", "Running Dataset", "streaming_executor", "Token authentication",
                 "mlflow.store.db")  # fmt: skip


def test_native_library_lines_go_to_the_log_not_the_terminal(demo_corpus, tmp_path, netguard_log):
    """LiteRT's start-up lines (driver and Ray workers), Ray's C++ `E` lines and the libraries' INFO/WARNING
    lines are kept in the log files (`tbd_core.native_log`, `tbd_core.terminal`), not printed; our jobs'
    own lines, their progress bars and results still are."""
    data, logs = tmp_path / "data", tmp_path / "logs"
    env = {**offline_env(netguard_log), "TBD_LOG_DIR": str(logs)}
    printed = ""
    for args in (
        ("ingest", "--dataset", "hdtf", "--root", str(demo_corpus / "hdtf"), "--out", str(data)),
        ("preprocess", "--data", str(data), *PREPROCESS_ARGS),
        ("annotate", "--data", str(data)),
        ("face", str(demo_corpus / "portraits" / "heldout" / "Astronaut.png")),
    ):
        proc = run_tbd(*args, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        printed += proc.stdout + proc.stderr
    assert "MLflow run" in printed and "preprocess:" in printed  # the jobs' own logging is shown
    assert "preprocess shards: 100%" in printed and "annotate (facs): 100%" in printed  # and their progress
    shown = [line for line in printed.splitlines() if any(n in line for n in NATIVE_NOISE + LIBRARY_NOISE)]
    assert not shown, shown[:5]
    kept = "".join(p.read_text(errors="replace") for p in logs.glob("native-*.log"))
    assert "Created TensorFlow Lite" in kept or "LiteRT" in kept
    assert "streaming_executor" in kept or "Starting execution of Dataset" in kept  # Ray Data's, kept
