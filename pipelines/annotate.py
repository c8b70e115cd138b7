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

Retries, within a budget: a clip whose generation is rejected is generated again up to `retries` more
times, attempt k sampling with seed + k at `retry_temperature` (greedy decoding would repeat itself);
the rejected attempts stay in the annotation (`earlier`), the version is unchanged (its provenance is
attempt 0's sampling; each annotation records its own). The rule reasoner is deterministic and never retried.

Reruns resume (finished shards are verified and skipped); `only_rejected` regenerates just the rejected
annotations of a version's finished shards: with `retries` 0 the same attempt again (e.g. after endpoint
errors), otherwise up to `retries` new attempts, numbered on from the stored ones.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from annotation.engines.base import RETRY_TEMPERATURE, judge_attempts
from annotation.engines.spec import EngineSpec
from annotation.records import Annotation, Generation, ThinkRequest
from media.au_evidence import clip_evidence, speaker_baselines
from pipelines.data_folder import DataFolder
from pipelines.shards import finished, tar_members, write_manifest, write_shard
from tbd_core.errors import UserError
from tbd_core.faults import maybe_fail
from tbd_core.ray_init import init_ray
from tbd_core.records import Reject
from tbd_core.terminal import quiet_worker
from tbd_core.tracking import job_run, record_run, run_ref, tracking_uri

log = logging.getLogger(__name__)


class AnnotateConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    data: Path  # the data folder (media shards from `tbd preprocess`)
    think: EngineSpec = EngineSpec()  # engine, model, template: a new one -> a new annotation version
    concurrency: int = 1  # engine workers (each holds a model)
    batch_size: int = Field(default=64, ge=1)  # requests per engine call
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    # "actors": a fixed pool of engine actors (any engine); "ray-llm": Ray Data LLM's vLLM processor
    # (vllm engine, GPU clusters: `concurrency` replicas, tensor parallel from the engine settings)
    runner: Literal["actors", "ray-llm"] = "actors"
    accelerator_type: str | None = None  # ray-llm: e.g. "H100"
    only_rejected: bool = False
    retries: int = Field(default=0, ge=0)  # extra attempts per rejected clip in this run (the budget)
    retry_temperature: float = Field(default=RETRY_TEMPERATURE, gt=0.0)
    tracking_uri: str | None = None


class EngineWorker:
    """Ray Data callable class holding one engine; turns request rows into rows of attempts
    (retrying rejected generations within the budget)."""

    def __init__(self, spec: dict, retry_temperature: float = RETRY_TEMPERATURE):
        quiet_worker()  # native and library lines to the worker's log file (tbd_core.terminal)
        self.engine = EngineSpec(**spec).make()
        self.retry_temperature = retry_temperature

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        requests = [ThinkRequest.model_validate_json(r) for r in batch["request"]]
        for r in requests:
            maybe_fail("annotate", r.key)
        attempts = self.engine.generate_with_retries(
            requests,
            [int(a) for a in batch["attempt"]],
            [int(b) for b in batch["budget"]],
            self.retry_temperature,
        )
        return {
            "fingerprint": list(batch["fingerprint"]),
            "attempts": [json.dumps([g.model_dump() for g in gens]) for gens in attempts],
        }


def ray_llm_engine(config: AnnotateConfig):
    """The `ray-llm` runner's engine: the vllm engine's settings, run by Ray Data LLM."""
    from annotation.engines.vllm_engine import VLLMConfig
    from annotation.prompts import load_template
    from pipelines.annotate_ray_llm import RayLLMEngine

    if config.think.engine != "vllm":
        raise UserError(f"--runner ray-llm runs the vllm engine; got --think.engine {config.think.engine}")
    return RayLLMEngine(
        VLLMConfig(**config.think.engine_config()),
        load_template(config.think.template),
        replicas=config.concurrency,
        batch_size=config.batch_size,
        gpu=config.num_gpus_per_worker > 0,
        accelerator_type=config.accelerator_type,
        cpus_per_replica=config.num_cpus_per_worker,
    )


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


def generate_all(
    config: AnnotateConfig, requests: list[ThinkRequest], redo: dict[str, int] | None = None
) -> dict[str, list[Generation]]:
    """Fingerprint -> attempts (oldest first) for the distinct requests, through Ray Data engine
    workers. `redo` (key -> stored attempt) marks redone clips: with a retry budget they go on at the
    next attempt (which counts against the budget), without one they repeat the stored attempt."""
    import ray

    unique: dict[str, ThinkRequest] = {}
    start: dict[str, int] = {}
    budget: dict[str, int] = {}
    for r in requests:
        fp = r.fingerprint()
        unique.setdefault(fp, r)
        if redo and r.key in redo:
            first, left = redo[r.key] + (1 if config.retries else 0), max(0, config.retries - 1)
        else:
            first, left = 0, config.retries
        start[fp], budget[fp] = max(start.get(fp, 0), first), min(budget.get(fp, left), left)
    if not unique:
        return {}
    if config.runner == "ray-llm":
        fps = list(unique)
        engine = ray_llm_engine(config)
        attempts = engine.generate_with_retries(
            [unique[fp] for fp in fps],
            [start[fp] for fp in fps],
            [budget[fp] for fp in fps],
            config.retry_temperature,
        )
        return dict(zip(fps, attempts, strict=True))
    init_ray()
    rows = [
        {"fingerprint": fp, "request": r.model_dump_json(), "attempt": start[fp], "budget": budget[fp]}
        for fp, r in unique.items()
    ]
    ds = ray.data.from_items(rows).map_batches(
        EngineWorker,
        fn_constructor_kwargs={
            "spec": config.think.model_dump(),
            "retry_temperature": config.retry_temperature,
        },
        batch_size=config.batch_size,
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),  # a fixed pool of N workers
        num_cpus=config.num_cpus_per_worker,
        num_gpus=config.num_gpus_per_worker or None,
    )
    out = {
        row["fingerprint"]: [Generation.model_validate(g) for g in json.loads(row["attempts"])]
        for row in tqdm(
            ds.iter_rows(), total=len(rows), desc=f"annotate ({config.think.engine})", unit="clip"
        )
    }
    log.info(
        "annotate: %d requests, %d distinct, %d generations (retries included)",
        len(requests),
        len(unique),
        sum(len(a) for a in out.values()),
    )
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
    replaced: dict[str, Annotation] = {}  # only_rejected: the rejected annotations being redone
    for shard in media["shards"]:
        name, keys = shard["name"], shard["keys"]
        if finished(out_dir, name) is None:
            todo[name] = ({}, keys)
        elif config.only_rejected:
            kept = read_annotations(out_dir, name)
            redo = [k for k in keys if not kept[k].accepted]
            if redo:
                todo[name] = ({k: a for k, a in kept.items() if a.accepted}, redo)
                replaced.update({k: kept[k] for k in redo})
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
        "retries": config.retries,
        "retry_temperature": config.retry_temperature,
    }
    uri = tracking_uri(config.tracking_uri, config.data)
    tags = {
        "tbd.version": version,
        "tbd.preprocess_run": run_ref(folder.media_dir),
        "tbd.data": str(folder.root.resolve()),
    }
    with job_run("annotate", uri, {**params, "concurrency": config.concurrency}, tags) as mlflow:
        start = time.perf_counter()
        examples = engine.examples  # the few-shot answers its model is shown (copies are rejected)
        pending = [requests[k] for _, (_, keys) in todo.items() for k in keys]
        gens = generate_all(config, pending, {k: a.attempt for k, a in replaced.items()})
        wall = time.perf_counter() - start
        shard_keys_of = {s["name"]: s["keys"] for s in media["shards"]}
        generated: dict[str, Annotation] = {}
        for name, (kept, keys) in todo.items():
            shard_keys = shard_keys_of[name]
            fresh = {
                k: judge_attempts(
                    requests[k],
                    gens[requests[k].fingerprint()],
                    provenance,
                    examples,
                    replaced.get(k),
                )
                for k in keys
            }
            generated.update(fresh)
            anns = {**kept, **fresh}
            rejects = [
                Reject(key=k, stage="annotate", reason=reject_reason(anns[k]), source=version)
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
            out_dir,
            "annotation",
            params,
            records,
            outcomes=outcomes,
            media_sha256=_media_fingerprint(media),
        )
        record_run(out_dir, uri)
        metrics = {
            **{f"n_{k}": v for k, v in outcomes.items()},
            "requests": len(pending),
            "distinct_requests": len({r.fingerprint() for r in pending}),
            "generations": sum(len(a) for a in gens.values()),
            "retried": sum(bool(a.earlier) for a in generated.values()),  # as the quality report counts
            "accepted_after_retry": sum(a.accepted and a.attempt > 0 for a in generated.values()),
            "wall_s": wall,
            "requests_per_s": len(pending) / wall if pending and wall > 0 else 0.0,
            "acceptance_rate": (outcomes["accepted"] + outcomes["repaired"]) / max(1, sum(outcomes.values())),
        }
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out_dir / "manifest.json"))
        mlflow.log_artifact(str(ledger))
    log.info("annotate %s: %s", version, metrics)
    return {"version": version, "manifest": manifest, "metrics": metrics}


def reject_reason(ann: Annotation) -> str:
    reason = "; ".join(ann.validation.reasons)
    tries = len(ann.earlier) + 1
    return f"{reason} (all {tries} attempts rejected)" if tries > 1 else reason


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
