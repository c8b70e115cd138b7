"""The LLM engines for real: vLLM in-process, and the openai engine against a local vLLM server, both
on the tiny locally built model. Its answers are nonsense, but under the schema they must parse; each
one is then accepted, repaired or rejected with reasons, and carries complete provenance."""

import json
import socket
import urllib.parse

import jsonschema
import pytest

from annotation.facs import MEAD_EMOTIONS
from annotation.records import AUEvidence, ThinkRequest
from annotation.schema import decoding_schema
from tests.conftest import offline_env, run_tbd

MAX_MODEL_LEN = 12288
MAX_TOKENS = 3072  # the schema's length bounds keep a full answer under this for the tiny tokenizer

REQUESTS = [ThinkRequest(key=f"{e}_{lvl}", emotion=e, level=lvl) for e in MEAD_EMOTIONS for lvl in (1, 3)][
    :12
] + [
    ThinkRequest(key="text", text="a bittersweet smile", level=2),
    ThinkRequest(
        key="hdtf", evidence=(AUEvidence(au=12, mean=1.0, peak=2.6), AUEvidence(au=26, mean=0.8, peak=2.0))
    ),
    ThinkRequest(key="dup", emotion="angry", level=1),  # same content as angry_1: generated once
]


def check_annotations(anns, route: str) -> None:
    assert [a.key for a in anns] == [r.key for r in REQUESTS]
    versions = {a.provenance.annotation_version for a in anns}
    assert len(versions) == 1 and versions.pop().startswith("ann-")
    for ann in anns:
        prov = ann.provenance
        assert prov.engine == "vllm" and prov.route == route
        assert prov.model_id and prov.template_hash and prov.schema_hash
        assert prov.kb_version.startswith("facs-") and prov.sampling["max_tokens"] == MAX_TOKENS
        assert ann.finish_reason in ("stop", "length"), ann.finish_reason
        if ann.finish_reason == "stop":
            # Constrained decoding: the raw text is JSON that satisfies the decoding schema.
            jsonschema.validate(json.loads(ann.raw), decoding_schema())
        if ann.validation.outcome == "rejected":
            assert ann.validation.reasons and ann.cot is None
        else:
            assert ann.cot is not None and not ann.validation.reasons
    stopped = sum(a.finish_reason == "stop" for a in anns)
    assert stopped >= len(anns) * 3 // 4, f"only {stopped}/{len(anns)} answers completed"
    by_key = {a.key: a for a in anns}
    assert by_key["dup"].raw == by_key["angry_1"].raw


@pytest.fixture(scope="module")
def vllm_engine(tiny_llm):
    from annotation.engines.vllm_engine import VLLMConfig, VLLMEngine

    engine = VLLMEngine(
        VLLMConfig(model=str(tiny_llm), max_model_len=MAX_MODEL_LEN, max_tokens=MAX_TOKENS, cpu_kvcache_gib=1)
    )
    yield engine
    engine.close()


def test_vllm_engine_outputs_are_schema_valid_and_judged(vllm_engine):
    anns = vllm_engine.annotate(REQUESTS)
    check_annotations(anns, "vllm")
    assert anns[0].provenance.model_id.startswith("tiny@")
    # Greedy decoding with a fixed seed is deterministic: a rerun gives the same raw text.
    again = vllm_engine.annotate(REQUESTS[:2])
    assert [a.raw for a in again] == [a.raw for a in anns[:2]]


def test_think_cli_with_vllm_offline(tiny_llm, tmp_path):
    log = tmp_path / "net.log"
    proc = run_tbd(
        "think", "happy", "--level", "2", "--think.engine", "vllm", "--think.model", str(tiny_llm),
        "--think.max_model_len", str(MAX_MODEL_LEN), "--think.max_tokens", str(MAX_TOKENS), "--json", "true",
        env={**offline_env(log), "VLLM_CPU_KVCACHE_SPACE": "1"},
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    ann = json.loads(proc.stdout)
    assert ann["provenance"]["engine"] == "vllm"
    assert ann["validation"]["outcome"] in ("accepted", "repaired", "rejected")
    assert (proc.returncode == 1) == (ann["validation"]["outcome"] == "rejected")
    assert not log.exists() or not log.read_text().strip(), log.read_text()


def test_openai_engine_against_a_local_vllm_server(tiny_llm, vllm_engine, tmp_path):
    """The openai route to a vLLM server serving the same folder is the same decoder: same model id,
    sampling and annotation version as the in-process engine, and (greedy) the same answers."""
    from annotation.engines import make_engine
    from annotation.engines.local_server import vllm_server

    with vllm_server(
        tiny_llm,
        served_name="tiny",
        max_model_len=MAX_MODEL_LEN,
        start_timeout_s=300,
        log_path=tmp_path / "serve.log",
    ) as server:
        with make_engine("openai", base_url=server.base_url, model="tiny", max_tokens=MAX_TOKENS) as engine:
            anns = engine.annotate(REQUESTS)
        port = urllib.parse.urlparse(server.base_url).port
    check_annotations(anns, "openai")
    assert anns[0].provenance.model_id == vllm_engine.model_id and vllm_engine.model_id.startswith("tiny@")
    assert anns[0].provenance.annotation_version == vllm_engine.version
    direct = vllm_engine.annotate(REQUESTS)
    same = sum(a.raw == b.raw for a, b in zip(anns, direct, strict=True))
    print(f"{same}/{len(anns)} answers identical to the in-process engine's")
    assert same >= len(anns) * 3 // 4
    print(f"served by {server.entrypoint}")
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the server is gone once the block exits


def test_ray_llm_runner_carries_the_vllm_engines_settings_and_validates_offline():
    """The Ray Data LLM route (GPU clusters) is configured from the in-process engine's own settings, so
    both write the same annotation version; the processor config is built and validated here, offline."""
    from annotation.engines.spec import EngineSpec
    from annotation.engines.vllm_engine import VLLMConfig, VLLMEngine
    from pipelines.annotate import AnnotateConfig, ray_llm_engine

    config = AnnotateConfig(
        data="unused",
        think=EngineSpec(engine="vllm", model="/models/qwen", max_tokens=900, tensor_parallel_size=2),
        runner="ray-llm",
        concurrency=3,
        batch_size=16,
        num_gpus_per_worker=1,
        accelerator_type="H100",
    )
    engine = ray_llm_engine(config)
    plain = VLLMEngine(VLLMConfig(model="/models/qwen", max_tokens=900, tensor_parallel_size=2))
    prov = engine.provenance()
    assert prov == plain.provenance().model_copy(update={"route": "ray-llm"})
    assert prov.engine == "vllm" and prov.annotation_version == plain.version
    proc = engine.processor_config()
    assert (proc.model_source, proc.concurrency, proc.batch_size, proc.accelerator_type) == (
        "/models/qwen",
        3,
        16,
        "H100",
    )
    assert {k: proc.engine_kwargs[k] for k in plain.engine_kwargs(True)} == plain.engine_kwargs(True)
    assert (
        proc.engine_kwargs["tensor_parallel_size"] == 2 and proc.engine_kwargs["trust_remote_code"] is False
    )
    assert proc.runtime_env["env_vars"]["VLLM_NO_USAGE_STATS"] == "1" and proc.should_continue_on_error
    # Per-request sampling: the schema enforced, the version's seed, a retry's seed and temperature.
    assert engine.request_sampling() == {
        "temperature": 0.0,
        "max_tokens": 900,
        "seed": 0,
        "repetition_penalty": 1.3,
        "structured_outputs": {"json": decoding_schema()},
    }
    from annotation.grounded_schema import request_schema

    sad = ThinkRequest(emotion="sad", level=2)
    assert engine.request_sampling(None, sad)["structured_outputs"]["json"] == request_schema(sad)  # its own
    retry = engine.request_sampling(engine.sampling_for(2))
    assert (retry["seed"], retry["temperature"]) == (2, 0.7)
    # On CPU a replica is a CPU bundle; wrong settings are clear errors.
    cpu = ray_llm_engine(config.model_copy(update={"num_gpus_per_worker": 0.0, "num_cpus_per_worker": 2.0}))
    assert cpu.processor_config().placement_group_config["bundles"][0]["CPU"] == 2.0
    assert not cpu.processor_config().placement_group_config["bundles"][0].get("GPU")
    from tbd_core.errors import UserError

    with pytest.raises(UserError, match="invalid Ray Data LLM settings"):
        ray_llm_engine(config.model_copy(update={"concurrency": 0})).processor_config()
    with pytest.raises(UserError, match="runs the vllm engine"):
        ray_llm_engine(config.model_copy(update={"think": EngineSpec()}))
