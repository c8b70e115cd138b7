"""Preprocess job (Ray Data): ingest manifest -> media shards + manifest + reject ledger.

Shards are the unit of work, of writing and of resume: `ray.data.from_items(pending shard plans)
.map_batches(ShardBuilder, batch_size=1, compute=ActorPoolStrategy(size=N))` where `ShardBuilder` is a callable class that
holds a `FaceAnalyzer` per worker, processes its shard's clips in key order and writes the tar +
sidecar itself (media bytes never travel through the object store or the driver). The driver then
assembles `media/manifest.json` and `ledger/preprocess.parquet` from all sidecars.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from media.clip_media import MediaConfig, process_clips, warm_up
from media.clip_spans import PART
from pipelines.data_folder import DataFolder
from pipelines.shards import check_params, finished, plan_shards, write_manifest, write_shard
from tbd_core.errors import UserError
from tbd_core.faults import maybe_fail
from tbd_core.ray_init import init_ray
from tbd_core.records import ClipRef, Reject
from tbd_core.terminal import quiet_worker
from tbd_core.tracking import job_run, record_run, tracking_uri

log = logging.getLogger(__name__)


class PreprocessConfig(BaseModel):
    """One config object for the job."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    data: Path  # the data folder of `tbd ingest`; its media shards are written there
    media: MediaConfig = MediaConfig()
    clips_per_shard: int = 16
    # ShardBuilder actors; None: as many as the cluster's CPUs hold at `num_cpus_per_worker` each (at most
    # one per shard to build). Each pins every library's pool to round(num_cpus_per_worker) threads, so N
    # workers use N x that many cores (`media.threads.pin_threads`).
    concurrency: int | None = None
    num_cpus_per_worker: float = 1.0
    tracking_uri: str | None = None
    # Re-hash every finished shard (the whole tar read) instead of recognising it from its size and
    # modification time (`pipelines.shards.finished`)
    verify: bool = False

    @property
    def folder(self) -> DataFolder:
        return DataFolder(self.data)


class ShardBuilder:
    """Ray Data callable class: builds and writes whole shards (one face analyzer per worker process)."""

    def __init__(self, media_dir: str, media: dict, threads: int = 1):
        from media.face import shared_analyzer
        from media.threads import pin_threads

        self.media_dir = Path(media_dir)
        self.config = MediaConfig(**media)
        pin_threads(threads)  # N workers use N cores, not N x every library's default pool
        quiet_worker()  # LiteRT's start-up lines, library lines to the worker's log file (tbd_core.terminal)
        self.analyzer = shared_analyzer()  # closed at the process's exit
        warm_up(self.config, self.analyzer)  # so that a shard's time is its work

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        names, frames, seconds = [], [], []
        for name, clips_json in zip(batch["name"], batch["clips"], strict=True):
            start = time.perf_counter()
            clips = [ClipRef.model_validate_json(c) for c in clips_json]
            samples, rejects, summaries, n_frames = [], [], {}, 0
            reached = (maybe_fail("preprocess", ref.key) or ref for ref in clips)
            for _, results in process_clips(reached, self.analyzer, self.config):
                for result in results:  # one per segment
                    if isinstance(result, Reject):
                        rejects.append(result)
                        continue
                    samples.append((result.key, result.members()))
                    summaries[result.key] = result.summary()
                    n_frames += result.meta["frames"]
            write_shard(self.media_dir, str(name), samples, rejects, summaries)
            names.append(str(name))
            frames.append(n_frames)
            seconds.append(time.perf_counter() - start)
        return {"name": names, "frames": frames, "seconds": seconds}


def threads_per_worker(config: PreprocessConfig) -> int:
    return max(1, round(config.num_cpus_per_worker))


def worker_count(config: PreprocessConfig, shards: int) -> int:
    """ShardBuilder actors for `shards` shards to build: `concurrency`, or (None) the cluster's CPUs over
    `num_cpus_per_worker`; at most one per shard. Logged with the threads each runs."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    wanted = config.concurrency or max(1, int(cpus // config.num_cpus_per_worker))
    workers = max(1, min(wanted, shards))
    log.info(
        "preprocess: %d worker(s) x %d thread(s) each (%s; cluster: %g CPUs, %d shard(s) to build)",
        workers, threads_per_worker(config),
        f"--concurrency {config.concurrency}" if config.concurrency else f"{config.num_cpus_per_worker:g} CPUs per worker",
        cpus, shards,
    )  # fmt: skip
    return workers


def run_preprocess(config: PreprocessConfig) -> dict:
    """Build every missing or invalid shard, then write the manifest and the ledger. Idempotent."""
    import ray

    folder = config.folder
    media_dir = folder.media_dir
    clips = {c.key: c for c in folder.clips()}
    if config.media.audio_encoder and not Path(config.media.audio_encoder).is_dir():
        raise UserError(f"audio encoder folder {config.media.audio_encoder} does not exist")
    plan = plan_shards(list(clips), config.clips_per_shard)
    inputs = hashlib.sha256(json.dumps([clips[k].model_dump() for k in sorted(clips)]).encode()).hexdigest()
    params = {
        "media": config.media.model_dump(),
        "clips_per_shard": config.clips_per_shard,
        "clips": len(clips),
        "inputs_sha256": inputs,  # the ingest manifest: other clips or paths -> other shards
    }
    check_params(media_dir, params)
    pending = [(name, keys) for name, keys in plan if finished(media_dir, name, config.verify) is None]
    log.info("preprocess: %d clips in %d shards, %d to build", len(clips), len(plan), len(pending))

    uri = tracking_uri(config.tracking_uri, config.data)
    with job_run(
        "preprocess",
        uri,
        {**params, "concurrency": config.concurrency or "cluster", "data": str(config.data)},
        {"tbd.data": str(Path(config.data).resolve())},
    ) as mlflow:
        import psutil

        start, cpu_before = time.perf_counter(), psutil.cpu_times()
        built, workers = [], 0
        if pending:
            init_ray()
            workers = worker_count(config, len(pending))
            items = [{"name": n, "clips": [clips[k].model_dump_json() for k in keys]} for n, keys in pending]
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                ShardBuilder,
                fn_constructor_kwargs={
                    "media_dir": str(media_dir),
                    "media": config.media.model_dump(),
                    "threads": threads_per_worker(config),  # each library's pool, per worker
                },
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=workers),  # a fixed pool of N workers
                num_cpus=config.num_cpus_per_worker,
            )
            rows = tqdm(ds.iter_rows(), total=len(pending), desc="preprocess shards", unit="shard")
            built = list(rows)  # one row per shard built, as each worker finishes it
        wall = time.perf_counter() - start
        cpu_after = psutil.cpu_times()
        busy = sum(cpu_after) - cpu_after.idle - (sum(cpu_before) - cpu_before.idle)
        elapsed = sum(cpu_after) - sum(cpu_before)
        records = []
        for name, _keys in plan:
            record = finished(media_dir, name)
            if record is None:
                raise RuntimeError(f"shard {name} is missing after the run")
            records.append(record)
        rejects = [r for rec in records for r in rec.rejects]
        ledger = folder.write_ledger("preprocess", rejects)
        manifest = write_manifest(media_dir, "media", params, records)
        record_run(media_dir, uri)
        frames = sum(b["frames"] for b in built)
        metrics = {
            "workers": workers,
            "threads_per_worker": threads_per_worker(config),
            "clips": len(clips),
            "samples": manifest["samples"],
            "rejects": len(rejects),
            "shards": len(plan),
            "shards_built": len(built),
            "frames_built": frames,
            "wall_s": wall,
            "frames_per_s": frames / wall if wall > 0 and frames else 0.0,
            # Once the workers are up (model loading and Ray start-up excluded): frames over the workers'
            # summed shard-building time, times the number of workers.
            "worker_busy_s": sum(b["seconds"] for b in built),
            "steady_frames_per_s": frames
            * min(workers, max(1, len(built)))
            / max(1e-9, sum(b["seconds"] for b in built))
            if built
            else 0.0,
            "cpu_utilisation": busy / elapsed if elapsed > 0 else 0.0,  # all cores of the machine, 0-1
        }
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(media_dir / "manifest.json"))
        mlflow.log_artifact(str(ledger))
    log.info("preprocess: %s", metrics)
    unaccounted = set(clips) - {
        source_key(k) for r in records for k in (*r.keys, *(j.key for j in r.rejects))
    }
    assert not unaccounted, f"clips neither in the shards nor the ledger: {sorted(unaccounted)[:5]}"
    return {"manifest": manifest, "metrics": metrics}


def source_key(key: str) -> str:
    """The ingest key of a sample or reject key (`{key}_seg003`, `{key}_av-tail` -> `{key}`)."""
    return PART.sub("", key)
