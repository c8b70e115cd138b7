"""Annotation throughput on the real job: vLLM versus transformers `generate`, prefix cache on versus off.

Every engine gets the annotate job's requests: the project's prompt template (system prompt, few-shot
examples, the request with its measured AU evidence), the CoT's JSON schema enforced, greedy, each CoT
generated to its full length (until the JSON closes, at most `--max-tokens`, the job's limit).
- vLLM: the job's own engine (`VLLMEngine`: guidance backend, compact JSON, its CPU dtype), with
  prefix caching on (the job's setting) and off, each started and warmed up before it is timed.
- transformers: `generate` on all requests in one left-padded batch, each request's own schema
  (`annotation.grounded_schema`, compiled once per distinct schema) enforced by xgrammar's logits processor
  (compact JSON too), the engine's repetition penalty, in its CPU dtype (`--hf-dtype` to change).
Also the cost of building the schemas and how many are distinct (what a cache by schema would save).
Model: the `instruct_llm` asset (SmolLM2-135M-Instruct, built by `make setup`) unless `--model`.
Requests: `--data DIR` reads the real requests of a preprocessed data folder; otherwise the job's
request shape is synthesised (MEAD labels and levels, evidence for every AU a landmark proxy measures).
Prints requests/s and generated tokens/s per engine, the ratios, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from annotation.engines.base import judge
from annotation.engines.vllm_engine import VLLMConfig, VLLMEngine, cpu_dtype
from annotation.facs import MEAD_EMOTIONS
from annotation.prompts import load_template
from annotation.records import AUEvidence, Generation, ThinkRequest
from media.au_calibration import channel_au
from media.au_calibration import load as load_calibration


def synthetic_requests(n: int) -> list[ThinkRequest]:
    """The job's request shape: a label and level (or none, as for HDTF) and evidence for every AU the
    calibrated measure can see (at the largest face size it was fitted at)."""
    rng = np.random.default_rng(0)
    measured = sorted({channel_au(c) for c in load_calibration().view(None).measurable()})
    out = []
    for i in range(n):
        emotion = MEAD_EMOTIONS[i % len(MEAD_EMOTIONS)] if i % 4 else "unknown"
        level = None if emotion == "unknown" else (1 if emotion == "neutral" else 1 + i % 3)
        evidence = []
        for au, side in measured:
            peak = float(np.round(rng.gamma(1.5, 0.8), 2).clip(0, 5))
            evidence.append(
                AUEvidence(au=au, side=side, peak=peak, mean=round(peak * rng.uniform(0.2, 0.7), 2))
            )
        out.append(ThinkRequest(key=f"r{i}", emotion=emotion, level=level, evidence=tuple(evidence)))
    return out


def data_requests(data: Path, n: int) -> list[ThinkRequest]:
    from pipelines.annotate import build_requests
    from pipelines.data_folder import DataFolder

    requests = list(build_requests(DataFolder(data)).values())
    return [requests[i % len(requests)].model_copy(update={"key": f"r{i}"}) for i in range(n)]


def outcome_counts(engine: VLLMEngine, requests, texts: list[str]) -> dict[str, int]:
    prov = engine.provenance()
    counts = {"accepted": 0, "repaired": 0, "rejected": 0}
    for r, t in zip(requests, texts, strict=True):
        counts[judge(r, Generation(text=t), prov, engine.examples).validation.outcome] += 1
    return counts


def run_vllm(model: str, requests, max_tokens: int, prefix_caching: bool) -> tuple[float, list[str]]:
    engine = VLLMEngine(VLLMConfig(model=model, max_tokens=max_tokens, enable_prefix_caching=prefix_caching))
    try:
        engine.generate(requests[:1])  # start the engine and warm it up (with caching: the shared prefix)
        start = time.perf_counter()
        texts = [g.text for g in engine.generate(requests)]
        return time.perf_counter() - start, texts
    finally:
        engine.close()


def run_transformers(model: str, requests, max_tokens: int, dtype: str) -> tuple[float, list[str]]:
    import torch
    import xgrammar as xgr
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from xgrammar.contrib.hf import LogitsProcessor

    from annotation.grounded_schema import request_schema

    template = load_template()
    tok = AutoTokenizer.from_pretrained(model, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=AutoConfig.from_pretrained(model).vocab_size)
    compiler, compiled = xgr.GrammarCompiler(info), {}  # one grammar per distinct schema (cached by text)
    schemas = [json.dumps(request_schema(r), sort_keys=True) for r in requests]
    for text in schemas:
        if text not in compiled:
            compiled[text] = compiler.compile_json_schema(text, any_whitespace=False)
    grammars = [compiled[text] for text in schemas]
    prompts = [
        tok.apply_chat_template(template.messages(r), tokenize=False, add_generation_prompt=True)
        for r in requests
    ]

    def generate(batch: list[str], limit: int = max_tokens) -> list[str]:
        grammar = grammars[: len(batch)]  # each request under its own schema, as the vLLM engine runs
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = lm.generate(
                **enc,
                do_sample=False,
                repetition_penalty=VLLMConfig.model_fields["repetition_penalty"].default,
                max_new_tokens=limit,
                logits_processor=[LogitsProcessor(grammar)],  # one per call (it keeps matcher state)
                pad_token_id=tok.pad_token_id,
            )
        return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    generate(prompts[:1], 8)  # warm-up
    start = time.perf_counter()
    texts = generate(prompts)
    return time.perf_counter() - start, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: the instruct_llm asset)")
    ap.add_argument("--data", type=Path, help="a preprocessed data folder whose real requests to use")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=VLLMConfig.model_fields["max_tokens"].default)
    ap.add_argument("--hf-dtype", default=cpu_dtype())
    args = ap.parse_args()

    if args.model is None:
        from tbd_core.assets import resolve

        args.model = str(resolve("instruct_llm"))
    requests = data_requests(args.data, args.requests) if args.data else synthetic_requests(args.requests)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    template = load_template()

    def tokens(texts: list[str]) -> int:
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    prompts = [
        tok.apply_chat_template(template.messages(r), tokenize=False, add_generation_prompt=True)
        for r in requests
    ]
    prompt_tokens = tokens(prompts) / len(prompts)

    from annotation.grounded_schema import request_schema

    start = time.perf_counter()
    schemas = [json.dumps(request_schema(r), sort_keys=True) for r in requests]
    schema_ms = (time.perf_counter() - start) * 1000 / len(requests)
    distinct = len(set(schemas))
    print(f"schema per request: {schema_ms:.2f} ms to build; {distinct} distinct of {len(requests)} "
          f"(a cache by schema text would hit {1 - distinct / len(requests):.0%})")  # fmt: skip

    rows = {}
    for name, run in (
        ("vllm", lambda: run_vllm(args.model, requests, args.max_tokens, True)),
        ("vllm_no_prefix_cache", lambda: run_vllm(args.model, requests, args.max_tokens, False)),
        ("transformers", lambda: run_transformers(args.model, requests, args.max_tokens, args.hf_dtype)),
    ):
        seconds, texts = run()
        rows[name] = {"s": seconds, "texts": texts, "tokens": tokens(texts)}
        print(
            f"{name:22s}: {len(requests) / seconds:7.3f} requests/s, {rows[name]['tokens'] / seconds:8.1f} tokens/s"
        )
    judge_engine = VLLMEngine(VLLMConfig(model=args.model, max_tokens=args.max_tokens))
    same = np.mean(
        [a == b for a, b in zip(rows["vllm"]["texts"], rows["transformers"]["texts"], strict=True)]
    )
    result = {
        "benchmark": "annotate",
        "model": Path(args.model).name,
        "requests": len(requests),
        "source": str(args.data) if args.data else "synthetic",
        "mean_prompt_tokens": round(float(prompt_tokens), 1),
        "max_tokens": args.max_tokens,
        **{f"{k}_requests_per_s": round(len(requests) / r["s"], 3) for k, r in rows.items()},
        **{f"{k}_tokens_per_s": round(r["tokens"] / r["s"], 1) for k, r in rows.items()},
        **{f"{k}_mean_output_tokens": round(r["tokens"] / len(requests), 1) for k, r in rows.items()},
        "ratio": round(rows["transformers"]["s"] / rows["vllm"]["s"], 2),
        "tokens_ratio": round(
            (rows["vllm"]["tokens"] / rows["vllm"]["s"])
            / (rows["transformers"]["tokens"] / rows["transformers"]["s"]),
            2,
        ),
        "prefix_cache_ratio": round(rows["vllm_no_prefix_cache"]["s"] / rows["vllm"]["s"], 2),
        "identical_outputs_vllm_vs_transformers": round(float(same), 2),
        "vllm_outcomes": outcome_counts(judge_engine, requests, rows["vllm"]["texts"]),
        "transformers_outcomes": outcome_counts(judge_engine, requests, rows["transformers"]["texts"]),
        "transformers_dtype": args.hf_dtype,
        "schema_build_ms": round(schema_ms, 2),
        "distinct_schemas": distinct,
        "schema_cache_hit_rate": round(1 - distinct / len(requests), 3),
    }
    print(
        f"vLLM / transformers = {result['ratio']}x requests/s ({result['tokens_ratio']}x tokens/s); "
        f"prefix cache on / off = {result['prefix_cache_ratio']}x"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
