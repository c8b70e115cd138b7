"""The training data module on real shards of the demo corpus: alignment, windows, masks, text cache,
equal batches per rank and worker."""

import json
import shutil

import numpy as np
import pytest
import torch

from pipelines.data_folder import DataFolder
from tbd_core.errors import UserError
from tbd_lightning.data import ClipWindows, TBDDataModule, collate
from tbd_lightning.model import MAX_LOCAL


@pytest.fixture(scope="module")
def mead(datasets):
    return datasets["mead"]["data"], datasets["mead"]["annotate"]["version"]


def test_batches_hold_aligned_windows_masks_and_text(mead, tmp_path):
    data, version = mead
    dm = TBDDataModule(
        str(data), version, frames=8, batch_size=2, train_batches=3, text_cache=str(tmp_path / "text")
    )
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    b = batches[0]
    assert b["video"].shape == (2, 8, 3, 64, 64) and -1 <= b["video"].min() and b["video"].max() <= 1
    assert b["reference"].shape == (2, 3, 64, 64) and b["audio"].shape == (2, 8, 80)
    assert b["mask"].shape == (2, 1, 64, 64) and b["landmarks"].shape == (2, 8, 468, 3)  # static: no T copies
    assert b["global_text"].shape == (2, 384) and b["local_text"].shape == (2, MAX_LOCAL, 384)
    keys = [k for batch in batches for k in batch["key"]]
    assert all("_W003_" not in k for k in keys)  # W003 is the validation identity
    for batch in batches:
        for i, key in enumerate(batch["key"]):
            n_local = int(batch["local_valid"][i].sum())
            emotion = key.split("_")[2]
            assert (n_local > 0) == (emotion != "neutral")
            assert (batch["mask"][i].amax() > 0.5) == (n_local > 0)  # AU regions are masked in
            assert torch.allclose(batch["local_text"][i, n_local:], torch.zeros(1))
            # Each local token has its own region mask (inside the union), unused slots none.
            tokens = batch["local_masks"][i].float()  # (L, H, W), the same for every frame
            assert tokens.shape == (MAX_LOCAL, 64, 64) and not tokens[n_local:].any()
            assert (tokens.amax(0) <= batch["mask"][i, 0] + 1e-3).all()
            assert batch["label_text"][i].abs().sum() > 0
    val_keys = [k for batch in dm.val_dataloader() for k in batch["key"]]
    assert val_keys and all("_W003_" in k for k in val_keys)


def test_masks_come_at_the_latent_size(mead, tmp_path):
    """Through a VAE (8 px per latent cell) the loader makes every mask at the latent size (what the model
    and the sampler read), each cell the region's coverage of that cell, not a full-size raster per frame."""
    import torch.nn.functional as F

    data, version = mead
    kw = dict(frames=8, batch_size=2, train_batches=2, text_cache=str(tmp_path / "text"))
    full = next(iter(TBDDataModule(str(data), version, **kw).train_dataloader()))
    small = next(iter(TBDDataModule(str(data), version, latent_scale=8, **kw).train_dataloader()))
    assert full["key"] == small["key"]
    assert small["video"].shape == (2, 8, 3, 64, 64)  # frames stay at the pixel size
    assert small["mask"].shape == (2, 1, 8, 8) and small["mouth"].shape == (2, 8, 1, 8, 8)
    assert small["local_masks"].shape == (2, MAX_LOCAL, 8, 8)
    for name in ("mask", "local_masks"):
        pooled = F.adaptive_avg_pool2d(full[name].float(), 8)
        assert (pooled - small[name].float()).abs().max() < 0.1, name
    pooled = F.adaptive_avg_pool2d(full["mouth"].flatten(0, 1), 8)
    assert (pooled - small["mouth"].flatten(0, 1)).abs().max() < 0.1
    assert small["mouth"].amax() > 0.5


def test_every_rank_and_worker_gets_the_same_count_from_uneven_shards(mead, monkeypatch):
    data, version = mead
    shards = DataFolder(data).aligned_shards(version)  # 6 shards over 4 ranks: 2, 2, 1, 1
    counts = []
    for rank in range(4):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "4")
        ds = ClipWindows(shards, {"train", "val"}, frames=4, samples_per_rank=6, resample=True, seed=rank)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
        counts.append(sum(len(b["key"]) for b in loader))
    assert counts == [6, 6, 6, 6]


def test_text_embeddings_are_computed_once_per_sentence(tmp_path):
    from tbd_lightning.text import TextEmbedder

    first = TextEmbedder(cache_dir=tmp_path)
    a = first.embed(["lips parted", "", "lips parted", "cheeks lifted"])
    assert first.computed == 2 and np.array_equal(a[0], a[2]) and not a[1].any()
    assert np.allclose(np.linalg.norm(a[[0, 3]], axis=1), 1, atol=1e-5)
    second = TextEmbedder(cache_dir=tmp_path)  # a new process would see the same files
    assert np.array_equal(second.embed(["cheeks lifted"])[0], a[3]) and second.computed == 0


def test_misaligned_or_missing_annotation_shards_are_named(mead, tmp_path):
    data, version = mead
    copy = tmp_path / "data"
    shutil.copytree(data / "media", copy / "media")
    shutil.copytree(data / "annotations" / version, copy / "annotations" / version)
    manifest_path = copy / "annotations" / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][1]["keys"] = manifest["shards"][1]["keys"][::-1]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="shard-000001 of .* is misaligned"):
        DataFolder(copy).aligned_shards(version)
    manifest["shards"][1]["keys"] = manifest["shards"][1]["keys"][::-1]
    manifest["shards"] = manifest["shards"][:2]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="annotation shard shard-000002 of .* is missing"):
        DataFolder(copy).aligned_shards(version)
    with pytest.raises(UserError, match="annotation version ann-nope not found"):
        DataFolder(copy).aligned_shards("ann-nope")


def test_the_reference_never_comes_from_the_target_clip(mead, tmp_path):
    """MEAD's emotional clips show the emotion from the first frame: the reference is a frame of a neutral
    clip of the same speaker (another clip when the target is neutral itself), in training and validation."""
    data, version = mead
    dm = TBDDataModule(
        str(data), version, frames=8, batch_size=2, train_batches=6, text_cache=str(tmp_path / "t")
    )
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            for key, ref in zip(batch["key"], batch["reference_key"], strict=True):
                assert ref != key and "@same-clip" not in ref
                assert ref.split("_")[1] == key.split("_")[1]  # the same speaker
                # The demo corpus has one neutral clip per speaker: every other clip's reference is it.
                assert ref.split("_")[2] == "neutral" or key.split("_")[2] == "neutral"


def test_the_reference_bank_decodes_a_reference_when_first_picked(mead, monkeypatch):
    """Training's start-up must not grow with the dataset (issue 39's rehearsal): building the bank reads
    sidecars only and decodes no frame; a reference is decoded when first picked, once, and is its clip's
    first frame with its first landmarks."""
    import io

    import tbd_lightning.references as references
    from pipelines.shards import ShardIndex
    from tbd_lightning.data import decode_mp4
    from tbd_lightning.references import ReferenceBank

    data, version = mead
    folder = DataFolder(data)
    decoded: list[bytes] = []
    first_frame = references.first_frame
    monkeypatch.setattr(references, "first_frame", lambda b: decoded.append(b) or first_frame(b))
    bank = ReferenceBank.build(folder, folder.aligned_shards(version), {"train", "val"})
    assert decoded == [] and bank.by_speaker
    speaker, keys = next(iter(bank.by_speaker.items()))
    target = next(
        k for s in folder.aligned_shards(version) for k in s.keys if f"_{speaker}_" in k and k not in keys[:1]
    )
    picked = bank.pick(speaker, target, None)
    assert picked.key == keys[0] and len(decoded) == 1
    assert bank.pick(speaker, target, None) is picked and len(decoded) == 1  # kept, not decoded again
    shard = next(s for s in folder.aligned_shards(version) if picked.key in s.keys)
    index = ShardIndex(shard.media_tar)
    np.testing.assert_array_equal(picked.frame, decode_mp4(index.read(picked.key, "mp4"))[0])
    lm = np.load(io.BytesIO(index.read(picked.key, "landmarks.npy")))[0].astype(np.float32)
    index.close()
    np.testing.assert_array_equal(picked.landmarks, lm)


def test_two_epochs_give_different_windows(mead, tmp_path):
    data, version = mead
    dm = TBDDataModule(
        str(data), version, frames=8, batch_size=2, train_batches=4, text_cache=str(tmp_path / "t")
    )
    loader = dm.train_dataloader()

    def epoch_signature(epoch):
        loader.dataset.set_epoch(epoch)
        return [(k, float(v[0, 0, 0, 0])) for b in loader for k, v in zip(b["key"], b["video"], strict=True)]

    first, again = epoch_signature(0), epoch_signature(0)
    assert first == again  # an epoch is reproducible
    assert epoch_signature(1) != first  # and the next one is not a replay

    from types import SimpleNamespace

    from tbd_lightning.module import TBDModule

    module = TBDModule(model_overrides={"block_channels": (16, 32), "attention_levels": (False, True)})
    module._trainer = SimpleNamespace(train_dataloader=loader, current_epoch=3)
    module.on_train_epoch_start()  # what Lightning calls at each epoch start: the loader is not rebuilt
    assert loader.dataset.epoch == 3


def test_region_masks_come_from_the_reference_not_the_target_frames(mead, tmp_path):
    """At sampling the AU regions can only come from the reference portrait; masks drawn on the target's
    frames would hand the model the target's jaw drop and lip opening (a shortcut absent at test time)."""
    from media.au_measure import token_masks
    from tbd_lightning.text import cot_token_regions

    data, version = mead
    dm = TBDDataModule(
        str(data), version, frames=8, batch_size=2, train_batches=4, text_cache=str(tmp_path / "t")
    )
    ds = dm.train_dataloader().dataset
    bank = {k: ds.references.load(k) for keys in ds.references.by_speaker.values() for k in keys}
    folder = DataFolder(data)
    cots = {k: a["cot"] for s in folder.aligned_shards(version) for k, a in folder.annotation_members(version, s.name).items()}  # fmt: skip
    checked = 0
    for item in ds:
        n_local = int(item["local_valid"].sum())
        if not n_local:
            continue
        ref = bank[item["reference_key"]]
        union, tokens, _ = token_masks(
            ref.landmarks, 64, cot_token_regions(cots[item["key"]], MAX_LOCAL), MAX_LOCAL
        )
        assert torch.equal(item["mask"][0], torch.from_numpy(union))
        assert torch.equal(item["local_masks"], torch.from_numpy(tokens).half())
        target = token_masks(
            item["landmarks"][0].numpy(), 64, cot_token_regions(cots[item["key"]], MAX_LOCAL), MAX_LOCAL
        )[0]
        assert not np.array_equal(target, union)  # the target's own face would give other masks
        checked += 1
    assert checked >= 4
