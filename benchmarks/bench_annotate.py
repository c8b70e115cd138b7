"""Annotation throughput: vLLM versus transformers `generate`, and vLLM's prefix cache on versus off.

The same model (the tiny local LLM unless `--model PATH`) and the same 64 CoT prompts (system prompt +
few-shot + request, as the annotate job sends them), greedy, exactly `--max-tokens` new tokens each
(EOS ignored so both do identical work). Prefix caching: a warm engine with the cache on versus an
engine with it off. Prints prompts/s and ratios, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from annotation.facs import MEAD_EMOTIONS
from annotation.prompts import load_template
from annotation.records import AUEvidence, ThinkRequest

N_PROMPTS = 64


def requests() -> list[ThinkRequest]:
    out = []
    for i in range(N_PROMPTS):
        emotion = MEAD_EMOTIONS[i % len(MEAD_EMOTIONS)]
        level = 1 if emotion == "neutral" else 1 + i % 3
        evidence = (AUEvidence(au=12, mean=0.1 * (i % 10), peak=0.2 * (i % 10) + 0.5),) if i % 2 else ()
        out.append(ThinkRequest(key=f"r{i}", emotion=emotion, level=level, evidence=evidence))
    return out


def bench_transformers(model: str, prompts: list[str], max_tokens: int, batch: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            out = lm.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                pad_token_id=tok.pad_token_id,
            )
            assert out.shape[1] - enc["input_ids"].shape[1] == max_tokens
    return len(prompts) / (time.perf_counter() - start)


def bench_vllm(
    model: str, conversations: list, max_tokens: int, prefix_caching: bool, max_model_len: int
) -> float:
    from vllm import LLM, SamplingParams

    from annotation.engines.vllm_engine import vllm_env

    for k, v in {**vllm_env(), "VLLM_CPU_KVCACHE_SPACE": "2"}.items():
        os.environ.setdefault(k, v)
    llm = LLM(
        model=model,
        dtype="bfloat16",
        enforce_eager=True,
        max_model_len=max_model_len,
        enable_prefix_caching=prefix_caching,
        seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.chat(conversations[:1], params, use_tqdm=False)  # warm-up (and, with caching, the shared prefix)
    start = time.perf_counter()
    outs = llm.chat(conversations, params, use_tqdm=False)
    rate = len(conversations) / (time.perf_counter() - start)
    assert all(len(o.outputs[0].token_ids) == max_tokens for o in outs)
    llm.llm_engine.engine_core.shutdown()
    del llm
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: the tiny local LLM, built on the fly)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hf-batch", type=int, default=16)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    if args.model is None:
        from annotation.tiny_llm import build_tiny_llm

        args.model = str(build_tiny_llm(Path(tmp.name) / "tiny"))
    template = load_template()
    conversations = [template.messages(r) for r in requests()]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    prompt_tokens = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts) / len(prompts)
    max_model_len = int(prompt_tokens) + args.max_tokens + 256

    hf = bench_transformers(args.model, prompts, args.max_tokens, args.hf_batch)
    cached = bench_vllm(args.model, conversations, args.max_tokens, True, max_model_len)
    uncached = bench_vllm(args.model, conversations, args.max_tokens, False, max_model_len)
    result = {
        "benchmark": "annotate",
        "prompts": len(prompts),
        "mean_prompt_tokens": round(prompt_tokens, 1),
        "max_tokens": args.max_tokens,
        "transformers_prompts_per_s": round(hf, 2),
        "vllm_prompts_per_s": round(cached, 2),
        "vllm_no_prefix_cache_prompts_per_s": round(uncached, 2),
        "ratio": round(cached / hf, 2),
        "prefix_cache_ratio": round(cached / uncached, 2),
        "model": Path(args.model).name,
    }
    print(f"transformers generate : {hf:8.2f} prompts/s (batch {args.hf_batch})")
    print(f"vLLM, prefix cache on : {cached:8.2f} prompts/s")
    print(f"vLLM, prefix cache off: {uncached:8.2f} prompts/s")
    print(
        f"vLLM / transformers = {result['ratio']}x ; prefix cache on / off = {result['prefix_cache_ratio']}x"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
