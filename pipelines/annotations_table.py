"""`tbd annotations --data DIR`: the annotation versions of a data folder, with counts and acceptance;
`--report true`: their quality (`pipelines.annotation_report`), also logged to MLflow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipelines.data_folder import DataFolder


@dataclass(frozen=True)
class AnnotationsConfig:
    data: Path  # the data folder
    json: bool = False  # print JSON rows instead of a table
    report: bool = False  # quality per version: rejections, AU agreement with the measurements, diversity
    tracking_uri: str | None = None  # for the report's MLflow run (default: beside the data)


def print_versions(config: AnnotationsConfig) -> int:
    if config.report:
        from pipelines.annotation_report import log_report, print_report, quality_report

        report = quality_report(config.data)
        print(json.dumps(report, indent=1)) if config.json else print_report(report)
        log_report(report, config.data, config.tracking_uri)
        return 0
    rows = DataFolder(config.data).version_rows()
    if config.json:
        print(json.dumps(rows, indent=1))
        return 0
    cols = ("version", "engine", "model", "samples", "accepted", "repaired", "rejected", "acceptance")
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    return 0
