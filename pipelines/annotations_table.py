"""`tbd annotations --data DIR`: the annotation versions of a data folder, with counts and acceptance."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipelines.data_folder import DataFolder


@dataclass(frozen=True)
class AnnotationsConfig:
    data: Path  # the data folder
    json: bool = False  # print JSON rows instead of a table


def print_versions(config: AnnotationsConfig) -> int:
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
