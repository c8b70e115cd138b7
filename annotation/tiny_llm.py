"""A tiny chat LLM built locally (no downloads): the stand-in model for tests, the demo and benchmarks.

Random-initialised Qwen2 weights (a transformers config), a byte-level BPE tokenizer trained by the
`tokenizers` library on the FACS vocabulary and prompts, and a ChatML chat template, saved with
`save_pretrained` so vLLM, `vllm serve` and transformers load it like any hub checkpoint. Its outputs are
nonsense; under the CoT JSON schema they are still schema-valid, which is what the engines must prove.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _training_text() -> list[str]:
    """The tokenizer's corpus: every string the Think stage writes or reads."""
    from annotation.facs import load_kb
    from annotation.prompts import load_template
    from annotation.schema import decoding_schema

    kb = load_kb()
    template = load_template()
    lines = [template.system, json.dumps(decoding_schema())]
    for shot in template.few_shot:
        lines += [shot.user, shot.assistant]
    for au in kb.action_units.values():
        lines += [au.name, au.movement, *au.muscles]
    return lines


def build_tiny_llm(
    out: Path, *, vocab_size: int = 2048, hidden: int = 128, layers: int = 2, seed: int = 0
) -> Path:
    """Write the tiny model to `out` (idempotent: an existing complete build is kept)."""
    out = Path(out)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16384,
        tie_word_embeddings=True,
        eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"),
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    fast.save_pretrained(tmp)
    tmp.rename(out)
    log.info("built tiny LLM at %s (vocab %d, hidden %d, %d layers)", out, len(fast), hidden, layers)
    return out


@dataclass(frozen=True)
class TinyLLMConfig:
    out: Path  # the folder to write the model to (kept if already built)
    seed: int = 0


def build_from_config(config: TinyLLMConfig) -> str:
    path = build_tiny_llm(Path(config.out), seed=config.seed)
    return f"tiny LLM ready at {path} (random weights: outputs are schema-valid nonsense)"
