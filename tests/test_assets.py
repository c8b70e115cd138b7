import pytest

from tbd_core import assets
from tbd_core.errors import UserError


def test_registry_assets_resolve_and_match_their_sha256():
    for name, asset in assets.REGISTRY.items():
        if asset.optional:
            continue
        path = assets.resolve(name)
        assert path.exists(), name
        if asset.sha256:
            assert assets.sha256_of(path) == asset.sha256


def test_text_encoder_asset_is_the_packaged_model():
    path = assets.resolve("text_encoder")
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()


def test_missing_asset_error_names_the_asset_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TBD_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"face_mesh.*make setup"):
        assets.resolve("face_mesh")
    with pytest.raises(UserError, match=r"face_landmarker.*tbd assets set face_landmarker"):
        assets.resolve("face_landmarker")


def test_user_override_by_env_and_by_set(tmp_path, monkeypatch):
    monkeypatch.setenv("TBD_HOME", str(tmp_path))
    own = tmp_path / "face_landmarker.task"
    own.write_bytes(b"x")
    assets.set_user_path("face_landmarker", str(own))
    assert assets.resolve("face_landmarker") == own
    assets.set_user_path("face_landmarker", None)
    assert not assets.is_available("face_landmarker")
    monkeypatch.setenv("TBD_ASSET_FACE_LANDMARKER", str(tmp_path / "missing.task"))
    with pytest.raises(UserError, match="does not exist"):
        assets.resolve("face_landmarker")


def test_corrupt_asset_fails_its_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("TBD_HOME", str(tmp_path))
    bad = assets.default_path(assets.REGISTRY["face_detector"])
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match="sha256"):
        assets.resolve("face_detector")


def test_fetch_is_idempotent_when_assets_are_valid():
    before = {p: p.stat().st_mtime_ns for p in assets.fetch()}
    after = {p: p.stat().st_mtime_ns for p in assets.fetch()}
    assert before == after
