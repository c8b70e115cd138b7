"""`tbd annotations --data DIR --report true`: the quality of every annotation version of a data folder.

Per version: outcomes, the most frequent rejection reasons, agreement of the CoTs' AUs with the AU activity
measured on the clips (precision: annotated AUs that were measured present, of the annotated AUs that
were measured at all; recall: measured-present AUs that were annotated; intensity error: |FACS letter
(A=1..E=5) - measured peak| over annotated, measured AUs), diversity (distinct global sentences / accepted
clips: a model that copies one answer scores near 0), the mean length of the raw outputs, and retries
(clips given more than one attempt, and of those the ones accepted in the end). Logged to
MLflow as one run (metrics prefixed by version) with the JSON.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from annotation.facs import intensity_value
from annotation.faithfulness import measured_peaks
from annotation.reasoner import PRESENT_PEAK
from annotation.records import Annotation
from pipelines.data_folder import DataFolder


def _reason_kind(reason: str) -> str:
    """A reason without its numbers and names, so that like reasons count together."""
    head = reason.split(":")[0] if reason.startswith(("schema", "invalid JSON", "engine error")) else reason
    return re.sub(r"(?<![A-Za-z\d])\d+(?:\.\d+)?", "N", head)[:100]  # AU ids (AU12) stay, values go


def version_quality(annotations: list[Annotation]) -> dict:
    outcomes = Counter(a.validation.outcome for a in annotations)
    reasons = Counter(_reason_kind(r) for a in annotations if not a.accepted for r in a.validation.reasons)
    hits = annotated_measured = present = 0
    errors = []
    for a in annotations:
        if a.cot is None or not a.request.evidence:
            continue
        peaks = {au: peak for au, (peak, _) in measured_peaks(a.request).items()}
        chosen = {u.au: intensity_value(u.intensity) for u in a.cot.action_units}
        measured_present = {au for au, p in peaks.items() if p >= PRESENT_PEAK}
        annotated_measured += sum(au in peaks for au in chosen)
        hits += len(measured_present & set(chosen))
        present += len(measured_present)
        errors += [abs(v - peaks[au]) for au, v in chosen.items() if au in peaks]
    accepted = [a for a in annotations if a.cot is not None]
    return {
        "samples": len(annotations),
        **{o: outcomes.get(o, 0) for o in ("accepted", "repaired", "rejected")},
        "top_rejections": reasons.most_common(5),
        "au_precision": hits / annotated_measured if annotated_measured else None,
        "au_recall": hits / present if present else None,
        "au_intensity_error": float(np.mean(errors)) if errors else None,
        "diversity": len({a.cot.global_description for a in accepted}) / len(accepted) if accepted else None,
        "mean_output_chars": float(np.mean([len(a.raw) for a in annotations])) if annotations else None,
        "retried": sum(bool(a.earlier) for a in annotations),
        "accepted_after_retry": sum(bool(a.earlier) and a.accepted for a in annotations),
    }


def quality_report(data: Path) -> dict[str, dict]:
    """Version -> its quality row (plus engine and model)."""
    folder = DataFolder(data)
    report = {}
    for row in folder.version_rows():
        version = row["version"]
        anns = [Annotation.model_validate(m) for shard in folder.aligned_shards(version)
                for m in folder.annotation_members(version, shard.name).values()]  # fmt: skip
        report[version] = {"engine": row["engine"], "model": row["model"], **version_quality(anns)}
    return report


def print_report(report: dict[str, dict]) -> None:
    cols = ("engine", "model", "samples", "accepted", "repaired", "rejected", "au_precision", "au_recall",
            "au_intensity_error", "diversity", "mean_output_chars", "retried", "accepted_after_retry")  # fmt: skip
    fmt = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = [[version, *(fmt(r[c]) for c in cols)] for version, r in report.items()]
    header = ["version", *cols]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    for version, r in report.items():
        for reason, n in r["top_rejections"]:
            print(f"  {version} rejected {n}x: {reason}")


def log_report(report: dict[str, dict], data: Path, tracking: str | None = None) -> None:
    import tempfile

    from tbd_core.tracking import job_run, tracking_uri

    with job_run("annotation-report", tracking_uri(tracking, data), {"data": str(data)}) as mlflow:
        for version, r in report.items():
            mlflow.log_metrics({f"{version}/{k}": v for k, v in r.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "annotation_report.json"
            path.write_text(json.dumps(report, indent=1))
            mlflow.log_artifact(str(path))
