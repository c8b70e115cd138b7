"""`tbd app`: a local web app (Gradio) over the same functions as the CLI.

    tbd app --model out/demo/model --data '[out/demo/data/mead, out/demo/data/hdtf]'

Generate tab (`tbd.app_generate`): portrait + speech + emotion -> Think (the CoT, its AU table, the face
regions local guidance will touch, drawn on the portrait; intensities editable) -> Draw (guidance settings,
a progress bar per denoising step) -> the mp4 with sound, the strip, requested vs measured AUs. It calls
`tbd_lightning.generate.think` and `generate`, the functions of `tbd generate`.

Annotations tab (`tbd.app_annotations`): a data folder's annotation versions side by side per clip
(face crop, both CoTs, the validator's reasons, the measured AU timeline) and each version's quality
report (`pipelines.annotation_report`, as `tbd annotations --report`).

Served on 127.0.0.1 by default. Another address needs `--allow_remote true`: whoever reaches the port can
then run the model on this machine and read every clip and annotation of the data folders given.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from annotation.engines.spec import EngineSpec
from tbd_core.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppConfig:
    model: Path | None = None  # a folder written by `tbd export` (the Generate tab needs one)
    data: list[Path] = field(default_factory=list)  # data folders for the Annotations tab
    host: str = "127.0.0.1"  # the address to serve on (loopback only unless --allow_remote true)
    port: int = 7860  # the port (0: any free one)
    allow_remote: bool = False  # serve on a non-loopback address (exposes the model and the data)
    think: EngineSpec = field(default_factory=EngineSpec)  # the engine that thinks (facs by default)
    portrait: Path | None = None  # an example portrait offered in the Generate tab
    speech: Path | None = None  # an example speech file offered in the Generate tab
    device: str | None = None  # cuda when present, else cpu


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(config: AppConfig):
    """The `gr.Blocks` app (not yet served)."""
    import gradio as gr

    from tbd.app_annotations import annotations_tab
    from tbd.app_generate import generate_tab

    with gr.Blocks(title="Think-Before-Draw") as app:
        gr.Markdown("## Think-Before-Draw: think (FACS chain-of-thought), then draw the talking head")
        with gr.Tab("Generate", id="generate"):
            generate_tab(config)
        with gr.Tab("Annotations", id="annotations"):
            annotations_tab(config)
    return app


def serve(config: AppConfig) -> int:
    """Build and serve until interrupted; prints the URL."""
    if not _loopback(config.host) and not config.allow_remote:
        raise UserError(
            f"--host {config.host} would expose the app beyond this machine (anyone reaching the port can run "
            "the model here and read the data folders' clips); add --allow_remote true to do so"
        )
    if config.model is not None and not (Path(config.model) / "model_index.json").is_file():
        raise UserError(f"{config.model} is not a model folder written by `tbd export` (no model_index.json)")
    for data in config.data:
        if not Path(data).is_dir():
            raise UserError(f"data folder {data} does not exist")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry
    # Gradio checks its own URL over HTTP at start: behind a proxy (HTTP_PROXY) that request must not leave.
    for name in ("NO_PROXY", "no_proxy"):
        os.environ[name] = ",".join(
            filter(None, [os.environ.get(name), "127.0.0.1", "localhost", config.host])
        )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    app = build(config)
    app.queue(default_concurrency_limit=1)  # one draw at a time: the model and the face tracker are shared
    print(f"tbd app: http://{config.host}:{config.port or '<free port>'} (Ctrl-C stops it)", flush=True)
    import gradio as gr

    theme = gr.themes.Default(font=["sans-serif"], font_mono=["monospace"])  # no web fonts: offline
    app.launch(
        server_name=config.host, server_port=config.port or None, share=False, ssr_mode=False,
        show_error=True, quiet=True, theme=theme, footer_links=[],
        allowed_paths=[str(Path(d).resolve()) for d in config.data],
    )  # fmt: skip
    return 0
