"""Annotate job (Ray Data + an engine): media shards -> annotation shards of one annotation version.

1. Requests from the media sidecars (no tar is opened): label + level + measured AU evidence
   (`media.au_evidence`, baseline = the speaker's neutral clips).
2. Identical requests are generated once: the distinct ones go through
   `ray.data.from_items(...).map_batches(EngineWorker, compute=ActorPoolStrategy(size=N))`; each worker holds one engine
   (`facs`, a `vllm.LLM`, or an `openai` client for a served endpoint).
3. The driver judges every generation (parse, validate, provenance; cheap) and writes
   `annotations/{version}/shard-*.tar` with the media shards' names and key order, one `{key}.cot.json`
   per clip (rejected ones included, so alignment is exact), plus sidecars, the manifest and
   `ledger/annotate-{version}.parquet`. Media shards are never touched: versions coexist.

Reruns resume (finished shards are verified and skipped); `only_rejected` regenerates just the rejected
annotations of a version's finished shards (e.g. after endpoint errors).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from annotation.engines.base import judge
from annotation.engines.spec import EngineSpec
from annotation.records import Annotation, Generation, ThinkRequest
from media.au_evidence import clip_evidence, speaker_baselines
from pipelines.data_folder import DataFolder
from pipelines.shards import finished, tar_members, write_manifest, write_shard
from tbd_core.faults import maybe_fail
from tbd_core.ray_init import init_ray
from tbd_core.records import Reject
from tbd_core.tracking import job_run, tracking_uri

log = logging.getLogger(__name__)


class AnnotateConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    data: Path  # the data folder (media shards from `tbd preprocess`)
    think: EngineSpec = EngineSpec()  # engine, model, template: a new one -> a new annotation version
    concurrency: int = 1  # engine workers (each holds a model)
    batch_size: int = 64  # requests per engine call
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    only_rejected: bool = False
    tracking_uri: str | None = None


class EngineWorker:
    """Ray Data callable class holding one engine; turns request rows into generation rows."""

    def __init__(self, spec: dict):
        self.engine = EngineSpec(**spec).make()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        requests = [ThinkRequest.model_validate_json(r) for r in batch["request"]]
        for r in requests:
            maybe_fail("annotate", r.key)
        gens = self.engine.generate(requests)
        return {"fingerprint": list(batch["fingerprint"]), "generation": [g.model_dump_json() for g in gens]}


def build_requests(folder: DataFolder) -> dict[str, ThinkRequest]:
    """Key -> request for every sample of the media shards."""
    summaries = folder.media_summaries()
    baselines = speaker_baselines(summaries)
    out = {}
    for key, s in summaries.items():
        labelled = s["emotion"] != "unknown"
        out[key] = ThinkRequest(
            key=key,
            emotion=s["emotion"],
            level=s["level"] if labelled else None,
            evidence=clip_evidence(s, baselines.get(s["speaker"])),
        )
    return out


def read_annotations(folder: Path, name: str) -> dict[str, Annotation]:
    return {k: Annotation.model_validate_json(m["cot.json"]) for k, m in tar_members(folder / f"{name}.tar")}


def generate_all(config: AnnotateConfig, requests: list[ThinkRequest]) -> dict[str, Generation]:
    """Fingerprint -> generation for the distinct requests, through Ray Data engine workers."""
    import ray

    unique: dict[str, ThinkRequest] = {}
    for r in requests:
        unique.setdefault(r.fingerprint(), r)
    if not unique:
        return {}
    init_ray()
    rows = [{"fingerprint": fp, "request": r.model_dump_json()} for fp, r in unique.items()]
    ds = ray.data.from_items(rows).map_batches(
        EngineWorker,
        fn_constructor_kwargs={"spec": config.think.model_dump()},
        batch_size=config.batch_size,
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),  # a fixed pool of N workers
        num_cpus=config.num_cpus_per_worker,
        num_gpus=config.num_gpus_per_worker or None,
    )
    out = {row["fingerprint"]: Generation.model_validate_json(row["generation"]) for row in ds.take_all()}
    log.info("annotate: %d requests, %d distinct, %d generated", len(requests), len(unique), len(out))
    return out


def run_annotate(config: AnnotateConfig) -> dict:
    folder = DataFolder(config.data)
    media = folder.media_manifest()
    # The driver's engine object only stamps provenance: LLM engines start their model lazily.
    engine = config.think.make()
    provenance = engine.provenance()
    version = provenance.annotation_version
    out_dir = folder.annotation_dir(version)
    requests = build_requests(folder)

    todo: dict[str, tuple[dict[str, Annotation], list[str]]] = {}  # shard -> (kept, keys to generate)
    for shard in media["shards"]:
        name, keys = shard["name"], shard["keys"]
        if finished(out_dir, name) is None:
            todo[name] = ({}, keys)
        elif config.only_rejected:
            kept = read_annotations(out_dir, name)
            redo = [k for k in keys if not kept[k].accepted]
            if redo:
                todo[name] = ({k: a for k, a in kept.items() if a.accepted}, redo)
    log.info(
        "annotate %s (%s): %d media shards, %d to write",
        version,
        config.think.engine,
        len(media["shards"]),
        len(todo),
    )

    params = {
        "version": version,
        "provenance": provenance.model_dump(),
        "only_rejected": config.only_rejected,
    }
    uri = tracking_uri(config.tracking_uri, config.data)
    with job_run(
        "annotate", uri, {**params, "concurrency": config.concurrency}, {"tbd.version": version}
    ) as mlflow:
        start = time.perf_counter()
        examples = engine.examples  # the few-shot answers its model is shown (copies are rejected)
        pending = [requests[k] for _, (_, keys) in todo.items() for k in keys]
        gens = generate_all(config, pending)
        wall = time.perf_counter() - start
        shard_keys_of = {s["name"]: s["keys"] for s in media["shards"]}
        for name, (kept, keys) in todo.items():
            shard_keys = shard_keys_of[name]
            fresh = {
                k: judge(requests[k], gens[requests[k].fingerprint()], provenance, examples) for k in keys
            }
            anns = {**kept, **fresh}
            rejects = [
                Reject(key=k, stage="annotate", reason="; ".join(anns[k].validation.reasons), source=version)
                for k in shard_keys
                if not anns[k].accepted
            ]
            members = [(k, {"cot.json": anns[k].model_dump_json().encode()}) for k in shard_keys]
            write_shard(out_dir, name, members, rejects)
        records = [finished(out_dir, s["name"]) for s in media["shards"]]
        if any(r is None for r in records):
            raise RuntimeError(f"annotation shards of {version} are incomplete after the run")
        outcomes = count_outcomes(out_dir, [r.name for r in records])
        rejects = [r for rec in records for r in rec.rejects]
        ledger = folder.write_ledger(folder.annotate_stage(version), rejects)
        manifest = write_manifest(
            out_dir, "annotation", params, records, outcomes=outcomes, media_sha256=_media_fingerprint(media)
        )
        metrics = {
            **{f"n_{k}": v for k, v in outcomes.items()},
            "requests": len(pending),
            "distinct_requests": len({r.fingerprint() for r in pending}),
            "wall_s": wall,
            "requests_per_s": len(pending) / wall if pending and wall > 0 else 0.0,
            "acceptance_rate": (outcomes["accepted"] + outcomes["repaired"]) / max(1, sum(outcomes.values())),
        }
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out_dir / "manifest.json"))
        mlflow.log_artifact(str(ledger))
    log.info("annotate %s: %s", version, metrics)
    return {"version": version, "manifest": manifest, "metrics": metrics}


def _media_fingerprint(media: dict) -> str:
    import hashlib

    return hashlib.sha256(
        json.dumps([(s["name"], s["sha256"]) for s in media["shards"]]).encode()
    ).hexdigest()


def count_outcomes(folder: Path, names: list[str]) -> dict[str, int]:
    counts = {"accepted": 0, "repaired": 0, "rejected": 0}
    for name in names:
        for ann in read_annotations(folder, name).values():
            counts[ann.validation.outcome] += 1
    return counts
