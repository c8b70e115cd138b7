"""The control experiment: does Draw follow the emotion text and the speech for a speaker it never saw?

    make control     # make demo's data, then this script: about 48 min on 2 cores (67 with the demo)
    python benchmarks/bench_control.py --out out/control [--steps 2500]

Trains the tiny model (`configs/train/tiny.yaml`, batch 4) on the demo corpus's training speakers for
`--steps` through `tbd train` (MLflow-tracked), exports it, and evaluates every validation clip (the last speaker,
never seen in training: another person, the astronaut) with `tbd evaluate --ablations` at matched guidance scales:
progressive, single-stage, global-only and cfg on one CoT (the clip's AU specification, the renderer's
request, through Think), label-only (the label as a caption), think-label (the CoT thought from the label
alone, as deployed), the real clips (the ceiling) and the still reference (the floor); no row is given
anything measured on its target (`evaluation.requests`). Prints one table: emotion accuracy (the counterfactual test:
nearest ground-truth render of the speaker's 8 emotions; the calibrated AU classifier; the FER2013 judge),
lip-sync proxy, identity similarity, AU-trajectory error against the renderer's ground truth, AU F1 and
leakage against the AU specification each clip was rendered from (issue 38), each with its
bootstrap 95 % interval; paired differences (bootstrap 95 % interval of per-clip differences) of every mode
against progressive and against the still; the issue's acceptance lines; one JSON line. With the corpus's
compound expressions, the same rows on them (`tbd evaluate --compound true`); with `--within_label_clips N`,
progressive and label-only alone on N validation clips (`--only_rows`: the larger paired sample).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.compound import category  # noqa: E402
from evaluation.report import aggregate, bootstrap_interval, mean_by, separable  # noqa: E402

METRICS = {
    "counterfactual_correct": "counterfactual",
    "emotion_correct": "AU classifier",
    "fer_accuracy": "FER2013",
    "sync_corr": "lip-sync",
    "identity_similarity": "identity",
    "au_gt_error": "AU traj. err",
    "au_f1": "AU F1",  # against the clip's AU specification (issue 38, `evaluation.au_request`)
    "au_leakage": "AU leakage",
}
GUIDANCE = ("--guidance.audio_scale", "2", "--guidance.global_scale", "2", "--guidance.local_scale", "2")


def tbd(*args: str) -> None:
    start = time.time()
    print(f"$ tbd {' '.join(args)}", flush=True)
    subprocess.run([str(Path(sys.executable).parent / "tbd"), *args], check=True, stdout=subprocess.DEVNULL)
    print(f"  ({(time.time() - start) / 60:.1f} min)", flush=True)


def evaluate(args, name: str, *extra: str, max_clips: int | None = None) -> None:
    """`tbd evaluate --ablations` of OUT/model on `max_clips` (default `--max_clips`) validation clips at matched
    guidance scales, into OUT/`name`, with the `extra` options."""
    out, n = Path(args.out), args.max_clips if max_clips is None else max_clips
    tbd("evaluate", "--model", str(out / "model"), "--data", args.data, "--split", "val", "--max_clips", str(n),
        "--max_frames", str(args.max_frames), "--guidance.steps", str(args.guidance_steps), *GUIDANCE,
        "--ablations", "true", "--groundtruth", args.corpus, "--out", str(out / name), *extra)  # fmt: skip


def lower_bound(rows: list[dict], metric: str) -> float | None:
    values = [r[metric] for r in rows if r.get(metric) is not None]
    return bootstrap_interval(values)[0] if len(values) > 1 else None


def print_report(report: dict, unit: str = "clip") -> dict:
    """The rows' table (mean [bootstrap 95 %] per metric) and the paired differences that involve
    progressive, label-only or the still; returns the paired differences per metric."""
    results, per_clip = report["results"], report["per_clip"]
    for mode, info in report["information"].items():
        print(f"  {mode:16s} was given: {info}")
    if report.get("au_f1_label_prototype") is not None:
        print(f"  AU F1 of the label's FACS prototype drawn perfectly: {report['au_f1_label_prototype']:.3f} "
              "(what a label alone can request)")  # fmt: skip
    print(f"{'row':16s}" + "".join(f"{name:>24s}" for name in METRICS.values()))
    for mode, r in results.items():
        cells = []
        for m in METRICS:
            v, ci = r.get(m), r.get(f"{m}_ci95")
            cells.append("-" if v is None else f"{v:.3f}" + (f" [{ci[0]:.2f},{ci[1]:.2f}]" if ci else ""))
        print(f"{mode:16s}" + "".join(f"{c:>24s}" for c in cells))
    paired = {m: separable(results, m, per_clip)["paired"] for m in METRICS}
    print(f"\npaired differences (mean [95 %], per {unit}, same seeds):")
    for m, pairs in paired.items():
        for pair, p in pairs.items():
            a, b = pair.split(" - ")
            if {"progressive", "label-only", "reference-still"} & {a, b}:
                flag = " *" if p["told_apart"] else ""
                print(f"  {METRICS[m]:14s} {pair:34s} {p['mean']:+.3f} [{p['ci95'][0]:+.3f},{p['ci95'][1]:+.3f}] "
                      f"first higher on {p['favour']} of {p['differ']} {unit}s that differ, sign p {p['sign_p']:.3f}{flag}")  # fmt: skip
    return paired


def au_f1_checks(report: dict, paired: dict, what: str) -> dict[str, bool]:
    """Issue 38's acceptance on one clip set: does each CoT design beat label-only on AU F1 (against each
    clip's AU specification, every row against its own neutral) with a paired interval above 0 and the sign
    test over the clips that differ below 0.05 (`evaluation.report.separable`'s `told_apart`)?"""
    checks = {}
    for design in [
        d for d in ("progressive", "single-stage", "global-only", "cfg") if d in report["results"]
    ]:
        pair = paired["au_f1"].get(f"{design} - label-only")
        checks[f"{what}: {design} beats label-only on AU F1 (paired interval above 0, sign test)"] = bool(
            pair and pair["told_apart"] and pair["mean"] > 0
        )
    if paired["au_f1"]:
        print(f"issue 38, {what} (AU F1; label's prototype drawn perfectly: "
              f"{report.get('au_f1_label_prototype') or float('nan'):.3f}):")  # fmt: skip
        for name, ok in checks.items():
            print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return checks if paired["au_f1"] else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="out/demo/data/mead", help="the demo's mead data folder (make demo)")
    ap.add_argument("--corpus", default="out/demo/corpus", help="the demo corpus (ground truth)")
    ap.add_argument("--out", default="out/control")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--version", help="annotation version to train on (needed when the folder holds several)")
    ap.add_argument("--max_frames", type=int, default=24)
    ap.add_argument("--region_weight", type=float,
                    help="the loss's weight inside the CoT's AU regions (default: configs/train/tiny.yaml's)")  # fmt: skip
    ap.add_argument("--branches", help="the guidance branches trained, e.g. '{none: 0.1, a: 0.1, ag: 0.1, label: "
                    "0.35}' (default: configs/train/tiny.yaml's, where the label caption is 5 %% of the batches)")  # fmt: skip
    ap.add_argument("--max_clips", type=int, default=100, help="validation clips, spread over the split")
    ap.add_argument("--guidance_steps", type=int, default=8)
    ap.add_argument("--within_label_clips", type=int, default=0,
                    help="then progressive and label-only alone on this many validation clips (0: none)")  # fmt: skip
    ap.add_argument("--skip_training", action="store_true", help="evaluate OUT/model as it is")
    ap.add_argument("--report_only", action="store_true",
                    help="print the tables of OUT's existing evaluation reports (no training, no evaluation)")  # fmt: skip
    args = ap.parse_args()
    out, data = Path(args.out), Path(args.data)
    if not (data / "media").is_dir():
        raise SystemExit(f"{data} has no media shards: run `make demo` first (or give --data)")
    start = time.time()
    if not (args.skip_training or args.report_only):
        if (out / "train").exists():  # this script's own run: a new one starts afresh
            print(f"removing the previous run's {out / 'train'}", flush=True)
            shutil.rmtree(out / "train")
        tbd("train", "--config", str(ROOT / "configs/train/tiny.yaml"), "--data.data", str(data),
            "--trainer.default_root_dir", str(out / "train"), "--data.text_cache", str(out / "text-cache"),
            "--trainer.max_steps", str(args.steps), "--data.batch_size", str(args.batch_size),
            "--data.train_batches", str(args.steps), *(("--data.version", args.version) if args.version else ()),
            *(("--model.region_weight", str(args.region_weight)) if args.region_weight is not None else ()),
            *(("--model.branches", args.branches) if args.branches else ()))  # fmt: skip
        tbd("export", str(out / "train/checkpoints/last.ckpt"), str(out / "model"))
    if not args.report_only:
        evaluate(args, "evaluation")
    report = json.loads((out / "evaluation" / "evaluation.json").read_text())
    results, per_clip = report["results"], report["per_clip"]
    print(f"\ncontrol experiment: {len(report['clips'])} validation clips of a held-out speaker, "
          f"{'the model as it was' if args.skip_training or args.report_only else f'{args.steps} training steps'}; "
          "mean [bootstrap 95 %]")  # fmt: skip
    paired = print_report(report)
    prog = per_clip.get("progressive", [])
    sync = paired["sync_corr"].get("progressive - reference-still")
    real_id, prog_id = (
        results["real"].get("identity_similarity"),
        results["progressive"].get("identity_similarity"),
    )
    checks = {
        "counterfactual accuracy lower bound > 0.25": (lower_bound(prog, "counterfactual_correct") or 0)
        > 0.25,
        "calibrated classifier accuracy lower bound > 0.25": (lower_bound(prog, "emotion_correct") or 0)
        > 0.25,
        "lip-sync above the still (paired interval excludes 0)": bool(sync and sync["ci95"][0] > 0),
        "identity similarity within 10 % of the real clips'": bool(
            real_id and prog_id and prog_id >= 0.9 * real_id
        ),
    }
    print("\nacceptance (issue 24):")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    checks |= au_f1_checks(report, paired, "within-label variants")
    compound = None
    if any(
        c["layout"] == "compound"
        for c in json.loads((Path(args.corpus) / "corpus.json").read_text())["clips"]
    ):
        if not args.report_only:
            evaluate(args, "evaluation-compound", "--compound", "true")
        compound = json.loads((out / "evaluation-compound" / "evaluation.json").read_text())
        print(f"\ncompound expressions (Du et al. 2014, never trained): {len(compound['clips'])} clips of the "
              "held-out speaker; mean [bootstrap 95 %]")  # fmt: skip
        clip_paired = print_report(compound)
        # A compound's clips share one request (Think reads its name): the designs are compared by compound.
        by_category = mean_by(compound["per_clip"], category)
        print(f"\nthe same, one row per compound expression ({len(by_category['real'])} requests; a compound's "
              "clips share its request, so the acceptance compares compounds, not clips):")  # fmt: skip
        compound_paired = print_report(
            {
                **compound,
                "per_clip": by_category,
                "results": {m: aggregate(r) for m, r in by_category.items()},
            },
            unit="compound",
        )
        checks |= au_f1_checks(compound, compound_paired, "compound expressions, by compound")
    within = None
    if args.within_label_clips:
        if not args.report_only:
            evaluate(args, "evaluation-within", "--only_rows", "[progressive, label-only]",
                     max_clips=args.within_label_clips)  # fmt: skip
        within = json.loads((out / "evaluation-within" / "evaluation.json").read_text())
        print(f"\nwithin-label variants, the larger sample: {len(within['clips'])} clips of the held-out speaker, "
              "progressive and label-only alone; mean [bootstrap 95 %]")  # fmt: skip
        within_paired = print_report(within)
        checks |= au_f1_checks(within, within_paired, f"within-label variants ({len(within['clips'])} clips)")
    line = {"benchmark": "control", "steps": None if args.skip_training or args.report_only else args.steps,
            "clips": len(report["clips"]),
            "minutes": round((time.time() - start) / 60, 1),
            "rows": {mode: {m: r.get(m) for m in METRICS} for mode, r in results.items()},
            "information": report["information"], "paired": paired,
            "lower_bounds": {m: lower_bound(prog, m) for m in ("counterfactual_correct", "emotion_correct")},
            "sync_progressive_minus_still": sync, "checks": checks,
            "au_f1_label_prototype": report.get("au_f1_label_prototype"),
            "compound": None if compound is None else {
                "clips": len(compound["clips"]), "rows": {mode: {m: r.get(m) for m in METRICS}
                                                          for mode, r in compound["results"].items()},
                "paired_au_f1": compound_paired["au_f1"], "paired_au_f1_by_clip": clip_paired["au_f1"],
                "au_f1_label_prototype": compound.get("au_f1_label_prototype")},
            "within_label": None if within is None else {
                "clips": len(within["clips"]), "rows": {mode: {m: r.get(m) for m in METRICS}
                                                        for mode, r in within["results"].items()},
                "paired_au_f1": within_paired["au_f1"],
                "au_f1_label_prototype": within.get("au_f1_label_prototype")}}  # fmt: skip
    (out / "control.json").write_text(json.dumps(line, indent=2))
    print(json.dumps(line, default=lambda x: float(x) if isinstance(x, np.floating) else str(x)))


if __name__ == "__main__":
    main()
