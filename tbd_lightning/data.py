"""Training data: media shards zipped with one annotation version's shards, as fixed-length clip windows.

`DataFolder.aligned_shards` checks the two manifests (same shard names, same keys in the same order)
and refuses with the offending shard named. `ClipWindows` (a torch `IterableDataset`) splits shards by node and by
worker (`webdataset.split_by_node/worker`) and yields exactly `samples_per_rank` items per rank and
epoch: training resamples shards (seeded by rank, worker and epoch), evaluation cycles its shard subset
in order, so every rank runs the same number of batches and uneven shard counts cannot hang DDP.
Each item: a window of `frames` crop frames, a reference frame of another clip of the same speaker
(`ReferenceBank`), the window's audio features and landmarks, the annotated AUs' region masks drawn on the
reference's landmarks (static over the window, as at sampling: one (1, H, W) union and (L, H, W) per
token, expanded over frames by the module as views), the mouth of each target frame (a loss weight only),
and the CoT text (global sentence + one sentence per AU) as embeddings from `TextEmbedder`.
Rejected annotations are skipped.

Cost follows the window, not the clip: a shard is opened by its tar headers (`ShardIndex`) and only the
members of the clip being served are read; the clip's mp4 is decoded from the keyframe before the window
(preprocess writes one every 2 s), not from its start.
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
from pipelines.shards import ShardIndex, npy_member
from tbd_core.errors import UserError
from tbd_lightning.model import MAX_LOCAL
from tbd_lightning.references import ReferenceBank
from tbd_lightning.text import CotTexts, cot_token_regions


def decode_mp4(data: bytes) -> np.ndarray:
    import av

    from media.frames import to_rgb

    with av.open(io.BytesIO(data)) as container:
        return np.stack([to_rgb(f) for f in container.decode(video=0)])


def decode_frames(data: bytes, start: int, count: int, fps: float) -> np.ndarray:
    """Frames [start, start + count) of a shard's mp4 bytes, decoded from the keyframe before `start`."""
    from media.video_io import decode_window

    return decode_window(io.BytesIO(data), start, count, fps)


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
        references: ReferenceBank | None = None,
        region_masks: bool = True,
        keys: set[str] | None = None,
        latent_scale: int = 1,
        prompt_encoder: str | None = None,
        text_chunks: int = 1,
        global_text: str = "emotion",
    ):
        self.max_local, self.references, self.region_masks = max_local, references, region_masks
        self.latent_scale = latent_scale  # masks at the latent size: (size / latent_scale)^2 cells
        self.keys = keys  # only these clips (a handful to overfit), whatever their split
        self.shards, self.splits, self.frames, self.size = shards, splits, frames, size
        self.texts = CotTexts(text_encoder, text_cache, max_local, prompt_encoder, text_chunks, global_text)
        self.samples_per_rank, self.resample, self.seed = samples_per_rank, resample, seed
        self.epoch = 0

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
        media, anns = ShardIndex(shard.media_tar), ShardIndex(shard.annotation_tar)
        try:
            keys = list(shard.keys)
            if self.resample:
                rng.shuffle(keys)  # clips of a shard in a new order every epoch
            for key in keys:
                meta = json.loads(media.read(key, "json"))
                ann = json.loads(anns.read(key, "cot.json"))
                wanted = meta["split"] in self.splits if self.keys is None else key in self.keys
                if not wanted or ann["validation"]["outcome"] == "rejected":
                    continue
                members = {ext: media.read(key, ext) for ext in ("mp4", "landmarks.npy", "audio.npy")}
                yield self._window(key, members, meta, ann["cot"], rng)
        finally:
            media.close()
            anns.close()

    def _window(self, key: str, members: dict, meta: dict, cot: dict, rng: random.Random) -> dict:
        from media.au_measure import token_masks

        t_all = int(meta["frames"])
        if t_all < self.frames:
            raise UserError(f"{key}: {t_all} frames, fewer than the window of {self.frames}")
        start = rng.randrange(t_all - self.frames + 1) if self.resample else 0
        video = decode_frames(members["mp4"], start, self.frames, meta["fps"])  # only the window
        landmarks = npy_member(members["landmarks.npy"]).astype(np.float32)
        reference, reference_key, reference_lm = self._reference(key, meta, members, landmarks, start, rng)
        audio = npy_member(members["audio.npy"]).astype(np.float32)
        size = self.size or video.shape[1]
        # The regions the text acts in come from the reference, as at sampling (`TBDPipeline` has nothing
        # else): masks from the target's frames would tell the model the target's jaw drop and lip opening.
        token_regions = cot_token_regions(cot, self.max_local)
        cells = size // self.latent_scale  # masks at the latent size: the model reads them no finer
        union, per_token, _ = token_masks(reference_lm, size, token_regions, self.max_local, out=cells)
        # The mouth of each target frame only weights the loss (`mouth_weight`): never an input.
        mouth = [token_masks(landmarks[t], size, (), self.max_local, ("mouth",), out=cells)[2]["mouth"]
                 for t in range(start, start + self.frames)]  # fmt: skip
        window = slice(start, start + self.frames)
        to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        frames = self._pixels(to_tensor(video).permute(0, 3, 1, 2))  # (T, 3, H, W) in [-1, 1]
        item = {
            "key": key,
            "reference_key": reference_key,  # the clip the reference frame comes from
            "video": frames,
            "reference": self._pixels(to_tensor(reference).permute(2, 0, 1)[None])[0],
            "audio": to_tensor(audio[window]),
            "landmarks": to_tensor(landmarks[window]),
            # (1, h, w) union of the AUs' regions (and below, (L, h, w) each local token's) at the latent size:
            # the reference's, the same for every frame of the window (the module expands them as views)
            "mask": to_tensor(union)[None],
            "mouth": to_tensor(np.stack(mouth))[:, None],  # (T, 1, h, w)
            # global_text, label_text ("contempt, level 2": the label-only caption), local_text, local_valid
            **self.texts(cot),
        }
        if self.region_masks:  # without: each local token acts everywhere (the `no-masks` guidance mode)
            item["local_masks"] = to_tensor(per_token).half()
        return item

    def _reference(self, key: str, meta: dict, members: dict, landmarks: np.ndarray, start: int,
                   rng: random.Random):  # fmt: skip
        """(frame, key, landmarks): a frame of another clip of the same speaker (neutral first: see
        `ReferenceBank`), so the model cannot copy the target's expression; only a speaker with a single clip
        falls back to a frame of the target clip outside the window (named `{key}@same-clip`)."""
        side = meta["crop_box"]["out"]
        if self.references is not None:
            picked = self.references.pick(meta["speaker"], key, rng if self.resample else None)
            if picked is not None:
                frame = picked.frame
                if frame.shape[:2] != (side, side):
                    frame = np.asarray(
                        torch.nn.functional.interpolate(
                            torch.from_numpy(frame).permute(2, 0, 1)[None].float(),
                            size=(side, side),
                            mode="area",
                        )[0]
                        .permute(1, 2, 0)
                        .round()
                        .byte()
                    )
                return frame, picked.key, picked.landmarks
        t_all = int(meta["frames"])
        outside = [t for t in range(t_all) if t < start or t >= start + self.frames]
        ref_t = rng.choice(outside) if (outside and self.resample) else (outside[0] if outside else start)
        frame = decode_frames(members["mp4"], ref_t, 1, meta["fps"])[0]
        return frame, f"{key}@same-clip", landmarks[ref_t]

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float in [-1, 1], resized to `size` (area filter) when asked."""
        x = frames.float() / 127.5 - 1
        if self.size and x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="area")
        return x


def collate(items: list[dict]) -> dict:
    """Tensors stacked; strings (keys) as lists."""
    out = {k: torch.stack([i[k] for i in items]) for k, v in items[0].items() if torch.is_tensor(v)}
    out.update({k: [i[k] for i in items] for k, v in items[0].items() if not torch.is_tensor(v)})
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
        region_masks: bool = True,
        clips: list[str] | None = None,
        latent_scale: int = 1,
        prompt_encoder: str | None = None,
        text_chunks: int = 1,
        global_text: str = "emotion",
    ):
        """`size` resizes frames to size x size; None keeps the shards' crop size.
        `text_encoder`: a local sentence-transformers or CLIP folder; None = the offline MiniLM package.
        `max_local`: local sentences per sample; `tbd train` links it to the model's `max_local`.
        `region_masks`: False trains without per-token regions (each local sentence acts everywhere): the model
        that the `no-masks` guidance mode is for (recorded in the exported pipeline's `conditioning`).
        `clips`: train and validate on these clip keys only, whatever their split (overfitting a handful, as
        `tbd check-conditioning` does); references still come from every clip of their speakers.
        `latent_scale`: pixels per latent cell (1 in pixel space, 8 through SD's VAE); masks are made at the
        latent size. `prompt_encoder` (an SD folder) with `text_chunks`: the global and label texts as its text
        encoder's token states (`tbd_lightning.sd_text`). `global_text`: what the global condition is
        (`tbd_lightning.text.cot_sentences`). `tbd train` links these four to the model's."""
        super().__init__()
        self.save_hyperparameters()
        self.folder = DataFolder(data)
        self.version = self.folder.pick_version(version)
        self.hparams["version"] = self.version  # checkpointed resolved
        params = self.folder.media_params()
        # How the media were made (fps, crop, audio features): generation must make its inputs the same way.
        self.hparams["media"] = params["media"] if params else None
        self.shards = self.folder.aligned_shards(self.version)

    def setup(self, stage: str | None = None) -> None:
        """With SD's text encoder: every annotated global and label sentence fits its windows (checked on
        the tokenizer once, so a long sentence stops training before it starts, not hours in)."""
        if self.hparams.prompt_encoder:
            from tbd_lightning.sd_text import PromptEncoder
            from tbd_lightning.text import cot_sentences

            texts = []
            for shard in self.shards:
                for ann in self.folder.annotation_members(self.version, shard.name).values():
                    if ann["validation"]["outcome"] != "rejected":  # the global and the label-only sentence
                        texts += [cot_sentences(ann["cot"], 0, global_text=self.hparams.global_text)[0],
                                  cot_sentences(ann["cot"], 0, True)[0]]  # fmt: skip
            PromptEncoder.check_lengths(self.hparams.prompt_encoder, texts, self.hparams.text_chunks)

    def _dataset(self, splits: set[str], batches: int, resample: bool, seed: int) -> ClipWindows:
        """Only shards holding clips of `splits` are dealt to ranks and workers: a split that lives in a few
        shards (validation identities) must not leave a rank with nothing to read."""
        h = self.hparams
        per_shard = self.folder.shard_splits()
        shards = [s for s in self.shards if splits & set(per_shard[s.name])]
        bank_shards, bank_splits, keys = shards, splits, None
        if h.clips:
            keys = set(h.clips)
            missing = keys - {k for s in self.shards for k in s.keys}
            if missing:
                raise UserError(f"clips {sorted(missing)} are not in {self.folder.root}")
            shards = [s for s in self.shards if keys & set(s.keys)]
            bank_shards, bank_splits = self.shards, set(self.folder.split_counts())
        if not shards:
            raise UserError(f"no media shard holds clips of split(s) {sorted(splits)} in {self.folder.root}")
        return ClipWindows(
            shards, splits, frames=h.frames, samples_per_rank=batches * h.batch_size,
            resample=resample, seed=seed, text_cache=h.text_cache, size=h.size,
            text_encoder=h.text_encoder, max_local=h.max_local, region_masks=h.region_masks, keys=keys,
            latent_scale=h.latent_scale, prompt_encoder=h.prompt_encoder, text_chunks=h.text_chunks,
            global_text=h.global_text, references=ReferenceBank.build(self.folder, bank_shards, bank_splits),
        )  # fmt: skip

    def train_dataloader(self):
        """The epoch is set again at every epoch start (`TBDModule.on_train_epoch_start`): Lightning does not
        rebuild this loader, and a loader whose windows depend only on the epoch it was built in would
        replay epoch 0's clips, windows and references forever."""
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
