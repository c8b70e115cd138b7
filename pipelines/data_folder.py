"""The data folder: the one module that knows its layout. Every job reads and writes through `DataFolder`.

    DATA/manifest.parquet                 one `ClipRef` per clip (ingest)
    DATA/ledger/{stage}.parquet           rejects of a stage: ingest, preprocess, annotate-{version}
    DATA/media/                           media shard set (tars + sidecars + manifest.json + params.json)
    DATA/annotations/{version}/           one annotation shard set per version, aligned 1:1 with media/
    DATA/../mlflow.db                     the default MLflow store, shared with the folders beside it

Media are written once; annotation versions coexist beside them and never touch them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipelines import shards
from tbd_core.errors import UserError
from tbd_core.files import read_parquet, write_parquet
from tbd_core.records import ClipRef, Reject, ShardRecord

MANIFEST = "manifest.parquet"
LEDGER = "ledger"
MEDIA = "media"
ANNOTATIONS = "annotations"


@dataclass(frozen=True)
class AlignedShard:
    """One media shard and the same-named shard of an annotation version (keys in the same order)."""

    name: str
    media_tar: Path
    annotation_tar: Path
    keys: list[str]


class DataFolder:
    """Paths, manifests, ledgers, sidecars, annotation versions and the media <-> annotation alignment."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"DataFolder({str(self.root)!r})"

    # -- layout --------------------------------------------------------------------------------------
    @property
    def media_dir(self) -> Path:
        return self.root / MEDIA

    def annotation_dir(self, version: str) -> Path:
        return self.root / ANNOTATIONS / version

    def ledger_path(self, stage: str) -> Path:
        return self.root / LEDGER / f"{stage}.parquet"

    def annotate_stage(self, version: str) -> str:
        """The ledger name of an annotation version's rejects."""
        return f"annotate-{version}"

    # -- clip manifest and ledgers ---------------------------------------------------------------------
    def write_clips(self, clips: list[ClipRef]) -> Path:
        path = self.root / MANIFEST
        write_parquet(path, [c.model_dump() for c in clips], ClipRef)
        return path

    def clips(self) -> list[ClipRef]:
        path = self.root / MANIFEST
        if not path.is_file():
            raise UserError(f"{path} does not exist; run `tbd ingest` first")
        return read_parquet(path, ClipRef)

    def write_ledger(self, stage: str, rejects: list[Reject]) -> Path:
        path = self.ledger_path(stage)
        write_parquet(path, [r.model_dump() for r in rejects], Reject)
        return path

    def ledger(self, stage: str) -> list[Reject]:
        path = self.ledger_path(stage)
        return read_parquet(path, Reject) if path.is_file() else []

    # -- media shards ----------------------------------------------------------------------------------
    def media_manifest(self) -> dict:
        if not (self.media_dir / shards.MANIFEST).is_file():
            raise UserError(f"{self.media_dir} holds no finished media shards; run `tbd preprocess` first")
        return shards.read_manifest(self.media_dir)

    def media_params(self) -> dict | None:
        """How the media were made (the preprocess settings), or None before preprocess."""
        return shards.read_params(self.media_dir)

    def media_summaries(self) -> dict[str, dict]:
        """Per-key summaries of every media shard (from the sidecars; no tar is opened)."""
        out: dict[str, dict] = {}
        for shard in self.media_manifest()["shards"]:
            out.update(shards.read_sidecar(self.media_dir, shard["name"])["summaries"])
        return out

    def shard_splits(self) -> dict[str, dict[str, int]]:
        """Clips per split in each media shard: shard name -> split -> count."""
        out: dict[str, dict[str, int]] = {}
        for shard in self.media_manifest()["shards"]:
            counts = out.setdefault(shard["name"], {})
            for summary in shards.read_sidecar(self.media_dir, shard["name"])["summaries"].values():
                counts[summary["split"]] = counts.get(summary["split"], 0) + 1
        return out

    def split_counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for counts in self.shard_splits().values():
            for split, n in counts.items():
                total[split] = total.get(split, 0) + n
        return total

    # -- annotation versions ---------------------------------------------------------------------------
    def versions(self) -> list[str]:
        root = self.root / ANNOTATIONS
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / shards.MANIFEST).is_file())

    def pick_version(self, version: str | None) -> str:
        """The given version (it must exist), or the only one present."""
        versions = self.versions()
        if version:
            if version not in versions:
                raise UserError(
                    f"annotation version {version} not found in {self.root} (present: {versions})"
                )
            return version
        if len(versions) != 1:
            raise UserError(
                f"{self.root / ANNOTATIONS} holds {len(versions)} annotation versions {versions}; choose one"
            )
        return versions[0]

    def annotation_manifest(self, version: str) -> dict:
        return shards.read_manifest(self.annotation_dir(version))

    def version_rows(self) -> list[dict]:
        """Every annotation version with its engine, model, counts and acceptance rate."""
        if not (self.root / ANNOTATIONS).is_dir():
            raise UserError(
                f"{self.root / ANNOTATIONS} does not exist; run `tbd annotate --data {self.root}` first"
            )
        rows = []
        for version in self.versions():
            m = self.annotation_manifest(version)
            o, prov = m["outcomes"], m["params"]["provenance"]
            total = sum(o.values())
            rows.append(
                {
                    "version": version, "engine": prov["engine"], "model": prov["model_id"],
                    "template": prov["template_hash"], "samples": total, **o,
                    "acceptance": round((o["accepted"] + o["repaired"]) / total, 4) if total else 0.0,
                }
            )  # fmt: skip
        return rows

    def aligned_shards(self, version: str) -> list[AlignedShard]:
        """Media and annotation shards side by side; a clear error when the two sets do not align."""
        media = self.media_manifest()
        ann_dir = self.annotation_dir(version)
        if not ann_dir.is_dir():
            raise UserError(f"annotation version {version} not found under {ann_dir.parent}")
        ann = {s["name"]: s for s in shards.read_manifest(ann_dir)["shards"]}
        out = []
        for shard in media["shards"]:
            name = shard["name"]
            if name not in ann:
                raise UserError(f"annotation shard {name} of {version} is missing (media has it)")
            if ann[name]["keys"] != shard["keys"]:
                raise UserError(
                    f"annotation shard {name} of {version} is misaligned with the media shard (keys differ)"
                )
            out.append(
                AlignedShard(name, self.media_dir / f"{name}.tar", ann_dir / f"{name}.tar", shard["keys"])
            )
        extra = set(ann) - {s["name"] for s in media["shards"]}
        if extra:
            raise UserError(f"annotation shards {sorted(extra)} of {version} have no media shard")
        return out

    def finished_annotation(self, version: str, name: str) -> ShardRecord | None:
        return shards.finished(self.annotation_dir(version), name)

    def annotation_members(self, version: str, name: str) -> dict[str, dict]:
        """Key -> the annotation record (JSON as a dict) of one annotation shard."""
        tar = self.annotation_dir(version) / f"{name}.tar"
        return {k: json.loads(m["cot.json"]) for k, m in shards.tar_members(tar)}
