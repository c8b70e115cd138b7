"""`tbd annotations --data DIR`: the annotation versions of a data folder, with counts and acceptance."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.annotate import list_versions


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    rows = list_versions(Path(args.data))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    cols = ("version", "engine", "model", "samples", "accepted", "repaired", "rejected", "acceptance")
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    return 0
