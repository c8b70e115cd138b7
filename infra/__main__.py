"""`python -m infra render|validate|submit` (from the checkout): the Kubernetes overlays, offline checks, Ray job
submission. Cluster tooling, not a `tbd` command: it needs the source checkout (manifests, configs, Dockerfile)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

import yaml

from infra import images
from infra import tooling as infra


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("render", help="print an overlay's manifests (kubectl kustomize)")
    r.add_argument("overlay", help=f"one of: {', '.join(infra.overlays())}, or a kustomization folder")
    v = sub.add_parser("validate", help="validate overlays, launcher configs and image pins offline")
    v.add_argument("overlays", nargs="*", help="default: every overlay")
    v.add_argument("--k8s-version", default=infra.K8S_VERSION)
    s = sub.add_parser(
        "submit", help="run a RayJob's entrypoint on a Ray cluster (ray job submit --working-dir .)"
    )
    s.add_argument("job", help="cluster-check, preprocess, annotate, train")
    s.add_argument("--address", required=True, help="the dashboard, e.g. http://127.0.0.1:8265")
    s.add_argument("--overlay", help="take the job from this overlay (default: the base manifests)")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env_vars")
    s.add_argument("--no-wait", action="store_true")
    s.add_argument("--dry-run", action="store_true", help="print the command only")
    s.add_argument(
        "--args", default="", help="appended to the entrypoint (a repeated flag overrides its value)"
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "render":
        print(yaml.safe_dump_all(infra.render(args.overlay), sort_keys=False), end="")
        return 0
    if args.action == "validate":
        problems = []
        for overlay in args.overlays or infra.overlays():
            docs = infra.render(overlay)
            found = infra.validate(docs, args.k8s_version)
            print(f"overlay {overlay}: {len(docs)} objects, {len(found) or 'no'} problems")
            problems += [f"{overlay}: {p}" for p in found]
        for path in sorted((infra.INFRA / "ray").glob("*.yaml")):
            found = infra.validate_launcher(path)
            print(f"launcher {path.name}: {len(found) or 'no'} problems")
            problems += found
        found = images.image_problems()
        print(f"images: {len(found) or 'no'} problems")
        problems += found
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1 if problems else 0
    env = dict(kv.split("=", 1) for kv in args.env)
    job = infra.submission(args.job, args.overlay, shlex.split(args.args), env)
    command = job.command(args.address, wait=not args.no_wait)
    print("+ " + " ".join(command[:-1]) + f" {job.entrypoint!r}", file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(command, cwd=infra.REPO).returncode


def main(argv: list[str] | None = None) -> int:
    import logging

    from tbd_core.errors import UserError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m infra", description=__doc__.split("\n")[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as err:
        print(f"infra: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
