"""The app's Generate tab: Think (CoT, AU table with editable intensities, regions on the portrait), then
Draw with the guidance settings, through `tbd_lightning.generate` (the code of `tbd generate`)."""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path

import numpy as np

from annotation.facs import INTENSITY_LETTERS, MEAD_EMOTIONS
from tbd_core.errors import UserError

log = logging.getLogger(__name__)

AU_COLUMNS = ["AU", "name", "intensity", "side", "region", "muscle"]
FREE_TEXT = "(free text)"
OVERLAY_SIZE = 256  # the regions are drawn on a crop of this size (same framing as the model's)


def emotion_choices() -> list[tuple[str, str]]:
    """The Emotion dropdown: (shown, value) for the MEAD labels, the compound expressions of Du et al. (PNAS
    2014; `annotation/facs_kb.yaml` compound_expressions, never a training label) and free text."""
    from annotation.facs import compound_text, load_kb

    compounds = [(f"{compound_text(name)} (compound)", name) for name in load_kb().compound_expressions]
    return [*((e, e) for e in MEAD_EMOTIONS), *compounds, (FREE_TEXT, FREE_TEXT)]


def _config(config, image, audio, emotion, level, text, out=None, seed=0, **guidance):
    """The `GenerateConfig` of the tab's inputs. A compound expression is requested by its name as free text
    ("sadly angry"): Think selects the compound's own AU set (facs-reasoner-5), which no label's prototype has."""
    from annotation.facs import compound_text, load_kb
    from tbd_lightning.generate import GenerateConfig
    from tbd_lightning.sampler import GuidanceConfig

    free = emotion == FREE_TEXT
    if free and not (text or "").strip():
        raise UserError("type a free-text emotion (or pick a label)")
    if emotion in load_kb().compound_expressions:
        free, text = True, compound_text(emotion)
    return GenerateConfig(
        image=Path(image) if image else Path(), audio=Path(audio) if audio else Path(),
        model=Path(config.model) if config.model else Path(), out=Path(out) if out else Path(),
        emotion="unknown" if free else emotion, level=int(level), text=text.strip() if free else None,
        think=config.think, guidance=GuidanceConfig(**guidance), device=config.device, seed=int(seed),
    )  # fmt: skip


def au_rows(cot) -> list[list]:
    return [[f"AU{u.au}", u.name, u.intensity, u.side, u.region, u.muscle] for u in cot.action_units]


def with_intensities(ann, rows) -> object:
    """The annotation with the intensities of the (possibly edited) AU table; a letter outside A-E or a
    changed AU list is a `UserError`."""
    from annotation.schema import ChainOfThought

    rows = rows.values.tolist() if hasattr(rows, "values") else list(rows)
    units = ann.cot.action_units
    if [str(r[0]) for r in rows] != [f"AU{u.au}" for u in units]:
        raise UserError("the AU table's rows changed; edit only the intensity column (or think again)")
    changed = []
    for u, row in zip(units, rows, strict=True):
        letter = str(row[2]).strip().upper()
        if letter not in INTENSITY_LETTERS:
            raise UserError(f"AU{u.au}: intensity {row[2]!r} is not one of {', '.join(INTENSITY_LETTERS)}")
        changed.append(u.model_copy(update={"intensity": letter}))
    cot = ChainOfThought.model_validate(ann.cot.model_copy(update={"action_units": changed}).model_dump())
    return ann.model_copy(update={"cot": cot})


def regions_image(image: str, cot, margin: float) -> np.ndarray:
    """The portrait's face crop with each region that local guidance touches tinted and named."""
    import cv2

    from media.au_measure import token_masks
    from media.inputs import prepare_portrait

    portrait = prepare_portrait(Path(image), OVERLAY_SIZE, margin)
    regions = tuple(dict.fromkeys(u.region for u in cot.action_units))
    if not regions:
        return portrait.crop
    out = portrait.crop.astype(np.float32)
    _, masks, _ = token_masks(portrait.landmarks, OVERLAY_SIZE, regions, len(regions))
    for i, mask in enumerate(masks):
        color = np.array(_COLORS[i % len(_COLORS)], np.float32)
        out = np.where(mask[..., None] > 0.5, 0.55 * out + 0.45 * color, out)
    out = np.ascontiguousarray(out.clip(0, 255).astype(np.uint8))
    for region, mask in zip(regions, masks, strict=True):
        ys, xs = np.nonzero(mask > 0.5)
        if len(xs):
            cv2.putText(out, region, (int(xs.min()), int(ys.min()) + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    return out


_COLORS = ((230, 60, 60), (60, 160, 230), (60, 200, 90), (230, 180, 40), (180, 80, 220), (40, 200, 200))


@functools.cache
def _engine(spec):
    """One engine per spec for the server's life (an LLM engine starts once, not per click)."""
    return spec.make()


@functools.cache
def _pipeline(model: str, device: str | None):
    from tbd_lightning.generate import GenerateConfig, load_pipeline

    return load_pipeline(
        GenerateConfig(image=Path(), audio=Path(), model=Path(model), out=Path(), device=device)
    )


def generate_tab(config) -> None:
    import gradio as gr

    from media.clip_media import MediaConfig
    from tbd.app_common import cot_markdown, user_errors
    from tbd_lightning.generate import generate, think

    media = _pipeline(str(config.model), config.device).media_config if config.model else MediaConfig()
    margin = media.crop_margin  # the regions are drawn on the crop the model sees

    @user_errors
    def on_think(image, audio, emotion, level, text):
        if not image:
            raise UserError("upload a portrait first")
        ann = think(_config(config, image, audio, emotion, level, text), engine=_engine(config.think))
        return (
            cot_markdown(ann, "Chain of thought", au_table=False),  # the AUs are in the editable table
            au_rows(ann.cot),
            regions_image(image, ann.cot, margin),
            ann.model_dump_json(),
        )

    @user_errors
    def on_draw(image, audio, emotion, level, text, state, table, steps, audio_scale, global_scale,
                local_scale, switch, mode, motion_frames, seed, progress=gr.Progress()):  # noqa: B008 (Gradio's pattern)  # fmt: skip
        from annotation.records import Annotation

        if config.model is None:
            raise UserError("no model: start the app with --model DIR (a folder written by `tbd export`)")
        if not image or not audio:
            raise UserError("upload a portrait and a speech file first")
        if not state:
            raise UserError("press Think first: Draw uses the CoT shown (with your edits)")
        ann = with_intensities(Annotation.model_validate_json(state), table)
        out = Path(tempfile.mkdtemp(prefix="tbd-app-")) / "generated.mp4"
        cfg = _config(config, image, audio, emotion, level, text, out, steps=int(steps), audio_scale=audio_scale,
                      global_scale=global_scale, local_scale=local_scale, switch=switch, mode=mode,
                      motion_frames=int(motion_frames), seed=seed)  # fmt: skip
        total = int(steps)

        def step_end(_pipe, step, _t, _tensors):
            progress((step + 1, total), desc="denoising", unit="steps")

        report = generate(
            cfg, ann=ann, pipe=_pipeline(str(config.model), config.device), callback_on_step_end=step_end
        )
        drawn = ", ".join(f"AU{u.au} {u.intensity}" for u in ann.cot.action_units)
        summary = (f"{report['frames']} frames, {report['seconds']} s at {report['fps']} fps, {report['windows']} "
                   f"window(s); drawn with {drawn}")  # fmt: skip
        return report["video"], report["strip"], report["au_plot"], summary

    with gr.Row():
        with gr.Column():
            image = gr.Image(
                label="Portrait", type="filepath", value=_existing(config.portrait), elem_id="portrait"
            )
            audio = gr.Audio(label="Speech", type="filepath", sources=["upload", "microphone"],
                             value=_existing(config.speech), elem_id="speech")  # fmt: skip
        with gr.Column():
            emotion = gr.Dropdown(emotion_choices(), value="happy", label="Emotion", elem_id="emotion")
            level = gr.Slider(1, 3, value=2, step=1, label="Level", elem_id="level")
            text = gr.Textbox(
                label="Free text (with '(free text)')", placeholder="a bittersweet smile", elem_id="text"
            )
            think_btn = gr.Button("Think", variant="primary", elem_id="think")
    with gr.Row():
        cot_md = gr.Markdown(elem_id="cot")
        regions = gr.Image(label="Regions local guidance touches", interactive=False, elem_id="regions")
    table = gr.Dataframe(headers=AU_COLUMNS, label="Action units (edit the intensity, A-E)", interactive=True,
                         static_columns=[0, 1, 3, 4, 5], elem_id="au-table")  # fmt: skip
    state = gr.State("")
    with gr.Accordion("Guidance", open=True):
        with gr.Row():
            steps = gr.Slider(1, 100, value=20, step=1, label="steps", elem_id="steps")
            mode = gr.Dropdown(["progressive", "cfg", "single-stage"], value="progressive", label="mode")
            seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
            motion_frames = gr.Slider(0, 8, value=2, step=1, label="motion frames", elem_id="motion-frames")
        with gr.Row():
            audio_scale = gr.Slider(1, 8, value=3.5, step=0.5, label="audio scale")
            global_scale = gr.Slider(1, 8, value=3.0, step=0.5, label="global scale")
            local_scale = gr.Slider(1, 8, value=3.0, step=0.5, label="local scale")
            switch = gr.Slider(0, 1, value=0.4, step=0.05, label="switch point")
    draw_btn = gr.Button("Draw", variant="primary", elem_id="draw")
    summary = gr.Markdown(elem_id="draw-summary")
    with gr.Row():
        video = gr.Video(label="Generated", elem_id="video", autoplay=True)
        with gr.Column():
            strip = gr.Image(label="Strip", interactive=False, elem_id="strip")
            au_plot = gr.Image(label="Requested vs measured AUs", interactive=False, elem_id="au-plot")

    inputs = [image, audio, emotion, level, text]
    think_btn.click(on_think, inputs, [cot_md, table, regions, state])
    draw_btn.click(on_draw, [*inputs, state, table, steps, audio_scale, global_scale, local_scale, switch, mode,
                             motion_frames, seed], [video, strip, au_plot, summary])  # fmt: skip


def _existing(path) -> str | None:
    return str(path) if path and Path(path).is_file() else None
