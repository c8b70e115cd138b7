"""What the app's tabs share (`tbd.app_generate`, `tbd.app_annotations`): turning a `UserError` into a
message in the page, and an annotation as Markdown."""

from __future__ import annotations

import functools
import logging

from tbd_core.errors import UserError

log = logging.getLogger("tbd.app")


class _PageWarnings(logging.Handler):
    """The input loaders' warnings (several faces, a rolled face) as warnings in the page too."""

    def emit(self, record: logging.LogRecord) -> None:
        import gradio as gr

        gr.Warning(record.getMessage())


def user_errors(fn):
    """For a tab's event handler: a `UserError` (or a bad setting) becomes a message in the page, the
    input loaders' warnings become warnings there; the server keeps running."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        import gradio as gr

        inputs, shown = logging.getLogger("media.inputs"), _PageWarnings(logging.WARNING)
        inputs.addHandler(shown)
        try:
            return fn(*args, **kwargs)
        except (UserError, ValueError) as err:
            log.info("app: %s", err)
            raise gr.Error(str(err), print_exception=False) from None
        finally:
            inputs.removeHandler(shown)

    return run


def cot_markdown(ann, title: str, au_table: bool = True) -> str:
    """An annotation as Markdown: outcome and provenance, the validator's reasons and changes, the CoT
    (label, global sentence, reasoning steps, and unless `au_table` is False its AUs), or the raw output
    of a rejected answer."""
    if ann is None:
        return f"### {title}\n\n(not in this version)"
    v, p = ann.validation, ann.provenance
    lines = [
        f"### {title}: {v.outcome}\n\n`{p.annotation_version}` · {p.engine} · {p.model_id} · attempt {ann.attempt}"
    ]
    lines += [f"- **rejected**: {r}" for r in v.reasons]
    lines += [f"- repaired: {c}" for c in v.changes]
    if ann.cot is None:
        lines.append(f"\nraw output ({ann.finish_reason}):\n\n```\n{ann.raw[:1500]}\n```")
        return "\n".join(lines)
    cot = ann.cot
    lines.append(f"\n**{cot.emotion}, level {cot.intensity_level}**: {cot.global_description}\n")
    lines += [f"{i}. {s}" for i, s in enumerate(cot.reasoning, 1)]
    if au_table:
        lines.append("\n| AU | name | int. | side | region |\n|---|---|---|---|---|")
        lines += [
            f"| AU{u.au} | {u.name} | {u.intensity} | {u.side} | {u.region} |" for u in cot.action_units
        ]
    return "\n".join(lines)
