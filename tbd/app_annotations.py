"""The app's Annotations tab: two annotation versions of a data folder side by side, per clip (face crop,
both CoTs with the validator's reasons, the measured AU timeline against what each CoT requests), and
every version's quality report (`pipelines.annotation_report`, as `tbd annotations --report`)."""

from __future__ import annotations

import functools
import io
import tempfile
from pathlib import Path

import numpy as np

from tbd_core.errors import UserError

CLIP_COLUMNS = ["key", "emotion", "level", "outcome A", "outcome B", "reasons A", "reasons B"]
ANY = "(any)"


@functools.lru_cache(maxsize=8)
def _annotations(data: str, version: str) -> dict:
    """Key -> `Annotation` of one version, and key -> shard name (cached per folder and version)."""
    from pipelines.annotate import read_annotations
    from pipelines.data_folder import DataFolder

    folder, anns, shard_of = DataFolder(data), {}, {}
    for shard in folder.aligned_shards(version):
        for key, ann in read_annotations(folder.annotation_dir(version), shard.name).items():
            anns[key], shard_of[key] = ann, shard.name
    return {"anns": anns, "shard_of": shard_of}


def clip_rows(
    data: str, a: str, b: str | None, emotion: str = ANY, outcome: str = ANY, reason: str = ""
) -> list:
    """One row per clip of version `a` (and `b`), filtered by emotion, version A's outcome, and a reason
    substring (either version's)."""
    if not a:
        return []
    anns_a = _annotations(data, a)["anns"]
    anns_b = _annotations(data, b)["anns"] if b else {}
    rows = []
    for key, ann in anns_a.items():
        other = anns_b.get(key)
        reasons_a = "; ".join(ann.validation.reasons)
        reasons_b = "; ".join(other.validation.reasons) if other else ""
        if emotion != ANY and ann.request.emotion != emotion:
            continue
        if outcome != ANY and ann.validation.outcome != outcome:
            continue
        if reason and reason.lower() not in (reasons_a + " " + reasons_b).lower():
            continue
        rows.append([key, ann.request.emotion, ann.request.level, ann.validation.outcome,
                     other.validation.outcome if other else "", reasons_a, reasons_b])  # fmt: skip
    return rows


@functools.lru_cache(maxsize=8)
def _media(data: str) -> dict:
    """A folder's per-clip summaries, speaker baselines (as annotate's evidence uses) and frame rate."""
    from media.au_evidence import speaker_baselines
    from pipelines.data_folder import DataFolder

    folder = DataFolder(data)
    summaries = folder.media_summaries()
    return {"summaries": summaries, "baselines": speaker_baselines(summaries),
            "fps": int(folder.media_params()["media"]["fps"])}  # fmt: skip


def clip_view(data: str, a: str, b: str | None, key: str, out_dir: Path) -> tuple[str, str, str, str]:
    """(face-crop mp4 path, AU timeline PNG path, CoT A, CoT B) of one clip."""
    from media.au_evidence import clip_timeline
    from media.au_measure import plot_aus, requested_aus
    from pipelines.data_folder import DataFolder
    from pipelines.shards import ShardIndex
    from tbd.app_common import cot_markdown

    found = _annotations(data, a)
    if key not in found["anns"]:
        raise UserError(f"clip {key} is not in version {a}")
    folder = DataFolder(data)
    shard = ShardIndex(folder.media_dir / f"{found['shard_of'][key]}.tar")  # this clip's members only
    members = {ext: shard.read(key, ext) for ext in ("mp4", "au.npy")}
    shard.close()
    video = out_dir / f"{key}.mp4"
    video.write_bytes(members["mp4"])
    media = _media(data)
    summary = media["summaries"][key]
    timeline = clip_timeline(
        np.load(io.BytesIO(members["au.npy"])), summary, media["baselines"].get(summary["speaker"])
    )
    ann_a = found["anns"][key]
    ann_b = _annotations(data, b)["anns"].get(key) if b else None
    requested = requested_aus(ann_a.cot.model_dump(mode="json")) if ann_a.cot else {}
    plot = out_dir / f"{key}_aus.png"
    plot_aus(requested, timeline, media["fps"], plot)
    return str(video), str(plot), cot_markdown(ann_a, f"A {a}"), cot_markdown(ann_b, f"B {b}") if b else ""


def report_rows(data: str) -> list[list]:
    from pipelines.annotation_report import quality_report

    rows = []
    for version, r in quality_report(Path(data)).items():
        top = "; ".join(f"{k} ({n})" for k, n in r["top_rejections"][:3])
        rows.append([version, r["engine"], r["model"], r["samples"], r["accepted"], r["repaired"], r["rejected"],
                     _round(r["au_precision"]), _round(r["au_recall"]), _round(r["diversity"]), top])  # fmt: skip
    return rows


def _round(x):
    return None if x is None else round(x, 2)


REPORT_COLUMNS = ["version", "engine", "model", "samples", "accepted", "repaired", "rejected", "AU precision",
                  "AU recall", "diversity", "top rejection reasons"]  # fmt: skip


def annotations_tab(config) -> None:
    import gradio as gr

    from annotation.facs import MEAD_EMOTIONS
    from pipelines.data_folder import DataFolder
    from tbd.app_common import user_errors

    datas = [str(Path(d)) for d in config.data]
    out_dir = Path(tempfile.mkdtemp(prefix="tbd-app-annotations-"))

    def versions(data):
        return DataFolder(data).versions() if data else []

    @user_errors
    def on_data(data):
        vs = versions(data)
        a = vs[0] if vs else None
        b = vs[1] if len(vs) > 1 else None
        return (
            gr.update(choices=vs, value=a),
            gr.update(choices=[None, *vs], value=b),
            report_rows(data) if data else [],
        )

    @user_errors
    def on_filter(data, a, b, emotion, outcome, reason):
        rows = clip_rows(data, a, b, emotion, outcome, reason)
        keys = [r[0] for r in rows]
        return rows, gr.update(choices=keys, value=keys[0] if keys else None)

    @user_errors
    def on_clip(data, a, b, key):
        if not key:
            return None, None, "", ""
        return clip_view(data, a, b, key, out_dir)

    # The first folder is shown filled in when the page opens.
    first = datas[0] if datas else None
    vs = versions(first)
    first_a, first_b = (vs[0] if vs else None), (vs[1] if len(vs) > 1 else None)
    rows = clip_rows(first, first_a, first_b) if first else []
    with gr.Row():
        data = gr.Dropdown(datas, value=first, label="Data folder", elem_id="ann-data")
        a = gr.Dropdown(vs, value=first_a, label="Version A", elem_id="ann-a")
        b = gr.Dropdown([None, *vs], value=first_b, label="Version B", elem_id="ann-b")
    with gr.Row():
        emotion = gr.Dropdown(
            [ANY, *MEAD_EMOTIONS, "unknown"], value=ANY, label="Emotion", elem_id="ann-emotion"
        )
        outcome = gr.Dropdown([ANY, "accepted", "repaired", "rejected"], value=ANY, label="Outcome (A)",
                              elem_id="ann-outcome")  # fmt: skip
        reason = gr.Textbox(label="Reason contains", elem_id="ann-reason")
    clips = gr.Dataframe(rows or None, headers=CLIP_COLUMNS, label="Clips", interactive=False, wrap=True,
                         elem_id="ann-clips")  # fmt: skip
    key = gr.Dropdown([r[0] for r in rows], value=None, label="Clip", elem_id="ann-key")
    with gr.Row():
        video = gr.Video(label="Face crop", elem_id="ann-video")
        plot = gr.Image(
            label="Measured AUs (lines) vs A's request (dashed)", interactive=False, elem_id="ann-plot"
        )
    with gr.Row():
        cot_a = gr.Markdown(elem_id="ann-cot-a")
        cot_b = gr.Markdown(elem_id="ann-cot-b")
    report = gr.Dataframe(report_rows(first) if vs else None, headers=REPORT_COLUMNS, wrap=True,
                          label="Quality report per version", interactive=False, elem_id="ann-report")  # fmt: skip

    filters = [data, a, b, emotion, outcome, reason]
    data.change(on_data, data, [a, b, report])
    for control in (a, b, emotion, outcome):
        control.change(on_filter, filters, [clips, key])
    reason.submit(on_filter, filters, [clips, key])
    key.change(on_clip, [data, a, b, key], [video, plot, cot_a, cot_b])
