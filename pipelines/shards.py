"""WebDataset shard sets: a fixed plan (keys -> shard names), deterministic tars written atomically with a
sidecar (keys, sha256, rejects, per-key summaries), verification for resume, and the set's manifest.

A shard is finished when its sidecar exists and the tar is the one the sidecar describes: the same size and
modification time as when it was written (no byte of the tar read, so a rerun over a finished folder costs
time in proportion to the new work), or, with `verify` (or a tar copied without its times), the same sha256.
A rerun skips finished shards and rebuilds the rest, so a crashed run resumed equals a clean run, byte for byte.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import webdataset as wds

from tbd_core.errors import UserError
from tbd_core.files import sha256_of as sha256_file
from tbd_core.records import Reject, ShardRecord

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def plan_shards(keys: list[str], clips_per_shard: int) -> list[tuple[str, list[str]]]:
    """Sorted keys cut into consecutive shards: membership is fixed before any clip is processed, so a
    reject leaves a gap in its own shard and never moves another clip."""
    keys = sorted(keys)
    return [
        (shard_name(i // clips_per_shard), keys[i : i + clips_per_shard])
        for i in range(0, len(keys), clips_per_shard)
    ]


def write_shard(
    folder: Path,
    name: str,
    samples: Iterable[tuple[str, dict[str, bytes]]],
    rejects: list[Reject],
    summaries: dict[str, dict] | None = None,
) -> ShardRecord:
    """Write `{name}.tar` (members in the given order, fixed mtime/owner: reproducible bytes) and then its
    sidecar `{name}.json`, each through a temp file and an atomic rename."""
    folder.mkdir(parents=True, exist_ok=True)
    tar, tmp = folder / f"{name}.tar", folder / f".{name}.tar.tmp"
    keys = []
    with open(tmp, "wb") as fh:
        writer = wds.TarWriter(fh, mtime=0.0)
        for key, members in samples:
            writer.write({"__key__": key, **members})
            keys.append(key)
        writer.close()
    os.replace(tmp, tar)
    record = ShardRecord(
        name=name, keys=keys, sha256=sha256_file(tar), bytes=tar.stat().st_size, rejects=rejects
    )
    _write_sidecar(folder, name, {"record": record.model_dump(), "summaries": summaries or {}})
    return record


def _write_sidecar(folder: Path, name: str, sidecar: dict) -> None:
    """The sidecar with the tar's stat as it is now (`stat`: size, mtime in ns), atomically."""
    st = (folder / f"{name}.tar").stat()
    sidecar = {**sidecar, "stat": {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}}
    tmp_json = folder / f".{name}.json.tmp"
    tmp_json.write_text(json.dumps(sidecar, sort_keys=True))
    os.replace(tmp_json, folder / f"{name}.json")


def finished(folder: Path, name: str, verify: bool = False) -> ShardRecord | None:
    """The shard's record if its sidecar exists and its tar is the one the sidecar describes, else None
    (a warning says why). The tar is recognised from its size and modification time as recorded when it was
    written (`stat`: no byte of it read); with `verify`, or when the times differ (a copy that did not keep
    them, an older sidecar without them), from its sha256 (the whole tar read), and a match records the
    tar's times for the next run."""
    sidecar_path, tar = folder / f"{name}.json", folder / f"{name}.tar"
    if not (sidecar_path.is_file() and tar.is_file()):
        return None
    sidecar = json.loads(sidecar_path.read_text())
    record, st = ShardRecord(**sidecar["record"]), tar.stat()
    if st.st_size != record.bytes:
        log.warning(
            "%s: %d bytes where its sidecar says %d; it will be rebuilt", tar, st.st_size, record.bytes
        )
        return None
    stat = sidecar.get("stat") or {}
    if not verify and stat.get("mtime_ns") == st.st_mtime_ns and stat.get("bytes") == st.st_size:
        return record
    if sha256_file(tar) != record.sha256:
        log.warning("%s: its sha256 does not match its sidecar's; it will be rebuilt", tar)
        return None
    if stat.get("mtime_ns") != st.st_mtime_ns:
        _write_sidecar(folder, name, sidecar)
    return record


def read_sidecar(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def write_manifest(folder: Path, kind: str, params: dict, records: list[ShardRecord], **extra) -> dict:
    """The shard set's manifest: parameters, shards (keys, sha256, bytes) and counts."""
    manifest = {
        "kind": kind,
        "params": params,
        "shards": [{"name": r.name, "keys": r.keys, "sha256": r.sha256, "bytes": r.bytes} for r in records],
        "samples": sum(len(r.keys) for r in records),
        "rejects": sum(len(r.rejects) for r in records),
        **extra,
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, folder / MANIFEST)
    return manifest


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{path} does not exist: the shard set is missing or unfinished")
    return json.loads(path.read_text())


def check_params(folder: Path, params: dict) -> None:
    """A rerun must use the settings the shards in `folder` were made with (else they would mix)."""
    path = folder / "params.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before != params:
            changed = sorted(k for k in set(before) | set(params) if before.get(k) != params.get(k))
            raise UserError(
                f"{folder} holds shards made with other settings ({', '.join(changed)}); use a new folder"
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(params, indent=1, sort_keys=True))


def read_params(folder: Path) -> dict | None:
    """The settings a shard set was made with (written by `check_params`), or None."""
    path = folder / "params.json"
    return json.loads(path.read_text()) if path.is_file() else None


def tar_members(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    """Read a shard back as (key, members) in order (for tests, tools and the annotate job)."""
    out: list[tuple[str, dict[str, bytes]]] = []
    # One explicit file: no node/worker splitting (a reader inside a DataLoader worker or a DDP rank
    # must still see the whole tar it asked for).
    tars = wds.WebDataset(
        str(path), shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False
    )
    for sample in tars:
        key = sample.pop("__key__")
        sample.pop("__url__", None)
        sample.pop("__local_path__", None)
        out.append((key, {k: v for k, v in sample.items() if isinstance(v, bytes)}))
    return out


def npy_member(data: bytes) -> np.ndarray:
    """A shard's `.npy` member (bytes as `write_shard` stored them) as an array; never unpickles."""
    return np.load(io.BytesIO(data), allow_pickle=False)


class ShardIndex:
    """Random access to one shard's samples without reading the tar: member offsets from its headers
    (`tarfile` seeks past the data), then only the members asked for are read. For training loaders that
    serve a window of a clip at a time; `tar_members` reads everything in order."""

    def __init__(self, path: Path):
        import tarfile

        self.path = Path(path)
        self._tar = tarfile.open(self.path)  # noqa: SIM115 - closed in `close`
        self.members: dict[str, dict[str, tarfile.TarInfo]] = {}
        for info in self._tar.getmembers():
            if info.isfile():
                key, _, ext = info.name.partition(".")
                self.members.setdefault(key, {})[ext] = info

    @property
    def keys(self) -> list[str]:
        return list(self.members)

    def read(self, key: str, ext: str) -> bytes:
        """One member's bytes (`mp4`, `landmarks.npy`, `json`, ...). KeyError names what is missing."""
        try:
            info = self.members[key][ext]
        except KeyError:
            raise KeyError(f"{self.path}: no member {key}.{ext}") from None
        return self._tar.extractfile(info).read()

    def close(self) -> None:
        self._tar.close()
