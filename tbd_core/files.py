"""Files every stage writes the same way: content hashes, atomic writes, parquet tables of typed rows."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
from pydantic import BaseModel


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a hidden temp file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_parquet(path: Path, rows: list[dict], model: type[BaseModel]) -> None:
    """Write rows atomically (temp file + rename); an empty table keeps the model's columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=list(model.model_fields))
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def read_parquet(path: Path, model: type[BaseModel]) -> list:
    """Rows of a table written by `write_parquet`, as `model` records (NaN -> None)."""
    frame = pd.read_parquet(path)
    return [
        model(**{k: (None if pd.isna(v) else v) for k, v in row.items()}) for row in frame.to_dict("records")
    ]
