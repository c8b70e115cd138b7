"""Training data: media shards zipped with one annotation version's shards, as fixed-length clip windows.

`DataFolder.aligned_shards` checks the two manifests (same shard names, same keys in the same order)
and refuses with the offending shard named. `ClipWindows` (a torch `IterableDataset`) splits shards by node and by
worker (`webdataset.split_by_node/worker`) and yields exactly `samples_per_rank` items per rank and
epoch: training resamples shards (seeded by rank, worker and epoch), evaluation cycles its shard subset
in order, so every rank runs the same number of batches and uneven shard counts cannot hang DDP.
Each item: a window of `frames` crop frames, the reference frame from another time of the same clip,
its audio features, landmarks, the soft union mask of the annotated AUs' regions, and the CoT text
(global sentence + one sentence per AU) as embeddings from `TextEmbedder`. Rejected annotations are
skipped.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipelines.data_folder import AlignedShard, DataFolder
from pipelines.shards import tar_members
from tbd_core.errors import UserError
from tbd_lightning.model import MAX_LOCAL
from tbd_lightning.text import cot_regions, cot_sentences


def decode_mp4(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class ClipWindows(IterableDataset):
    """Fixed-count, rank- and worker-split stream of clip windows (see module docstring)."""

    def __init__(
        self,
        shards: list[AlignedShard],
        splits: set[str],
        frames: int = 8,
        samples_per_rank: int = 64,
        resample: bool = True,
        seed: int = 0,
        text_cache: str | None = None,
        size: int | None = None,
        text_encoder: str | None = None,
        max_local: int = MAX_LOCAL,
    ):
        self.max_local = max_local
        self.shards, self.splits, self.frames, self.size = shards, splits, frames, size
        self.text_encoder = text_encoder
        self.samples_per_rank, self.resample, self.seed = samples_per_rank, resample, seed
        self.text_cache = text_cache
        self.epoch = 0
        self._embedder = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> list:
        import webdataset as wds

        mine = list(wds.split_by_worker(wds.split_by_node(list(range(len(self.shards))))))
        return mine or list(range(len(self.shards)))  # fewer shards than workers: share (still counted)

    def _count(self) -> int:
        info = get_worker_info()
        n_workers = info.num_workers if info else 1
        wid = info.id if info else 0
        return self.samples_per_rank // n_workers + (wid < self.samples_per_rank % n_workers)

    def __iter__(self) -> Iterator[dict]:
        from webdataset.utils import pytorch_worker_info

        rank, _, worker, _ = pytorch_worker_info()
        rng = random.Random(hash((self.seed, rank, worker, self.epoch)))
        mine, count, produced = self._my_shards(), self._count(), 0
        while produced < count:
            order = [rng.choice(mine) for _ in mine] if self.resample else mine
            yielded_any = False
            for index in order:
                for item in self._shard_items(index, rng):
                    yield item
                    yielded_any = True
                    produced += 1
                    if produced >= count:
                        return
            if not yielded_any:
                raise UserError(f"no usable samples (splits {sorted(self.splits)}) in this rank's shards")

    def _shard_items(self, index: int, rng: random.Random) -> Iterator[dict]:
        shard = self.shards[index]
        media, anns = dict(tar_members(shard.media_tar)), dict(tar_members(shard.annotation_tar))
        for key in shard.keys:
            meta = json.loads(media[key]["json"])
            ann = json.loads(anns[key]["cot.json"])
            if meta["split"] not in self.splits or ann["validation"]["outcome"] == "rejected":
                continue
            yield self._window(key, media[key], meta, ann["cot"], rng)

    @property
    def embedder(self):
        if self._embedder is None:
            from tbd_lightning.text import TextEmbedder

            self._embedder = TextEmbedder(self.text_encoder, cache_dir=self.text_cache)
        return self._embedder

    def _window(self, key: str, members: dict, meta: dict, cot: dict, rng: random.Random) -> dict:
        from media.face import region_masks

        video = decode_mp4(members["mp4"])
        t_all = len(video)
        if t_all < self.frames:
            raise UserError(f"{key}: {t_all} frames, fewer than the window of {self.frames}")
        start = rng.randrange(t_all - self.frames + 1) if self.resample else 0
        # The reference frame comes from outside the window when the clip allows it.
        outside = [t for t in range(t_all) if t < start or t >= start + self.frames]
        ref_t = rng.choice(outside) if (outside and self.resample) else (outside[0] if outside else start)
        landmarks = _npy(members["landmarks.npy"]).astype(np.float32)
        audio = _npy(members["audio.npy"]).astype(np.float32)
        size = self.size or video.shape[1]
        regions = cot_regions(cot)
        masks, mouth = [], []
        for t in range(start, start + self.frames):
            per_region = region_masks(
                landmarks[t, :, :2] * size, size, size, tuple(dict.fromkeys((*regions, "mouth")))
            )
            masks.append(
                np.max(np.stack([per_region[r] for r in regions]), 0)
                if regions
                else np.zeros((size, size), np.float32)
            )
            mouth.append(per_region["mouth"])
        global_text, local = cot_sentences(cot, self.max_local)
        texts = self.embedder.embed([global_text, *local])
        local_emb = np.zeros((self.max_local, texts.shape[1]), np.float32)
        local_emb[: len(local)] = texts[1:]
        window = slice(start, start + self.frames)
        to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        frames = self._pixels(to_tensor(video[window]).permute(0, 3, 1, 2))  # (T, 3, H, W) in [-1, 1]
        return {
            "key": key,
            "video": frames,
            "reference": self._pixels(to_tensor(video[ref_t]).permute(2, 0, 1)[None])[0],
            "audio": to_tensor(audio[window]),
            "landmarks": to_tensor(landmarks[window]),
            "mask": to_tensor(np.stack(masks))[:, None],  # (T, 1, H, W): union of the AUs' regions
            "mouth": to_tensor(np.stack(mouth))[:, None],  # (T, 1, H, W)
            "global_text": to_tensor(texts[0]),
            "local_text": to_tensor(local_emb),
            "local_valid": torch.arange(self.max_local) < len(local),
        }

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float in [-1, 1], resized to `size` (area filter) when asked."""
        x = frames.float() / 127.5 - 1
        if self.size and x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="area")
        return x


def collate(items: list[dict]) -> dict:
    out = {k: torch.stack([i[k] for i in items]) for k in items[0] if k != "key"}
    out["key"] = [i["key"] for i in items]
    return out


try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - lightning is a pinned dependency
    pl = None


class TBDDataModule(pl.LightningDataModule):
    """Media + annotation shards -> fixed-size batches; every rank sees the same number of batches."""

    def __init__(
        self,
        data: str,
        version: str | None = None,
        frames: int = 8,
        batch_size: int = 2,
        num_workers: int = 0,
        train_batches: int = 16,
        val_batches: int = 2,
        seed: int = 0,
        text_cache: str | None = None,
        size: int | None = None,
        text_encoder: str | None = None,
        max_local: int = MAX_LOCAL,
    ):
        """`size` resizes frames (and rasterises masks) to size x size; None keeps the shards' crop size.
        `text_encoder`: a local sentence-transformers or CLIP folder; None = the offline MiniLM package.
        `max_local`: local sentences per sample; `tbd train` links it to the model's `max_local`."""
        super().__init__()
        self.save_hyperparameters()
        self.folder = DataFolder(data)
        self.version = self.folder.pick_version(version)
        self.hparams["version"] = self.version  # checkpointed resolved
        params = self.folder.media_params()
        # How the media were made (fps, crop, audio features): generation must make its inputs the same way.
        self.hparams["media"] = params["media"] if params else None
        self.shards = self.folder.aligned_shards(self.version)

    def _dataset(self, splits: set[str], batches: int, resample: bool, seed: int) -> ClipWindows:
        """Only shards holding clips of `splits` are dealt to ranks and workers: a split that lives in a few
        shards (validation identities) must not leave a rank with nothing to read."""
        h = self.hparams
        per_shard = self.folder.shard_splits()
        shards = [s for s in self.shards if splits & set(per_shard[s.name])]
        if not shards:
            raise UserError(f"no media shard holds clips of split(s) {sorted(splits)} in {self.folder.root}")
        return ClipWindows(
            shards, splits, frames=h.frames, samples_per_rank=batches * h.batch_size,
            resample=resample, seed=seed, text_cache=h.text_cache, size=h.size,
            text_encoder=h.text_encoder, max_local=h.max_local,
        )  # fmt: skip

    def train_dataloader(self):
        ds = self._dataset({"train"}, self.hparams.train_batches, True, self.hparams.seed)
        ds.set_epoch(self.trainer.current_epoch if self.trainer else 0)
        return self._loader(ds)

    def val_dataloader(self):
        counts = self.folder.split_counts()
        splits = (
            {"val"} if counts.get("val") else {"train"}
        )  # a corpus without val speakers validates on train
        return self._loader(self._dataset(splits, self.hparams.val_batches, False, self.hparams.seed + 1))

    def _loader(self, ds: ClipWindows):
        return torch.utils.data.DataLoader(
            ds, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers, collate_fn=collate,
            persistent_workers=False,
        )  # fmt: skip
