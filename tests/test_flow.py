"""The refusal_atlas flow on a tiny model: caching, incremental runs, retries, failures, Dask.

One Prefect test harness (a temporary server and database, the `prefect_harness` fixture of
conftest.py) serves the whole test session.
"""

from __future__ import annotations

import functools

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from refusal_atlas.storage import STATUS_DONE, AtlasStore
from refusal_atlas.tasks.prompts.sources import PromptSource
from refusal_atlas.tasks.settings import AtlasSettings, ClusterSettings, DirectionSettings, ModelSettings
from tests.tiny import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("flow-model") / "tiny")


def _prompts_file(path: Path, texts: list[str], label: str) -> Path:
    path.write_text("".join(json.dumps({"prompt": t, "label": label}) + "\n" for t in texts))
    return path


HARMFUL = [f"Explain how to break into house number {i} without a key." for i in range(12)]
HARMLESS = [f"Write a short poem about the number {i}." for i in range(8)]


def _settings(model_dir: Path, tmp_path: Path, sources: list[Path], **extra) -> AtlasSettings:
    return AtlasSettings(
        prompts=[PromptSource(path=str(p)) for p in sources],
        store=str(tmp_path / "atlas.zarr"),
        model=ModelSettings(name=str(model_dir)),
        directions=DirectionSettings(layers=[1, 2], steps=2),
        clustering=ClusterSettings(min_cluster_size=2, pca_dim=None, bootstraps=0, null_sets=0, heldout_fraction=0),
        evaluate=False,
        **extra,
    )


def _engine(settings: AtlasSettings):
    from refusal_atlas.tasks.engine.direction_engine import get_engine

    return get_engine(settings.model, settings.directions, settings.engine)


@pytest.mark.integration
def test_second_run_recomputes_nothing_and_new_prompts_only_are_computed(prefect_harness, model_dir, tmp_path):
    from refusal_atlas.flows.atlas import refusal_atlas

    harmful = _prompts_file(tmp_path / "harmful.jsonl", HARMFUL[:8], "harmful")
    harmless = _prompts_file(tmp_path / "harmless.jsonl", HARMLESS, "harmless")
    settings = _settings(model_dir, tmp_path, [harmful, harmless])
    first = refusal_atlas(settings)
    assert first["extraction"]["computed"] == 16 and first["extraction"]["failed"] == 0
    engine = _engine(settings)
    passes = engine.forward_passes

    second = refusal_atlas(settings)
    assert second["extraction"]["cached"] == 16 and second["extraction"]["computed"] == 0
    assert engine.forward_passes == passes, "a cached run must run no forward pass"

    _prompts_file(harmful, HARMFUL, "harmful")  # four more prompts in the same source
    third = refusal_atlas(settings)
    assert third["new"] == 4
    assert third["extraction"]["computed"] == 4 and third["extraction"]["cached"] == 16
    store = AtlasStore.open(settings.store)
    assert store.done_rows().size == 20


def test_transient_failure_is_retried_and_a_hopeless_prompt_fails_alone(prefect_harness, model_dir, tmp_path, monkeypatch):
    from refusal_atlas.flows.atlas import refusal_atlas
    from refusal_atlas.tasks.steps.prefect_tasks import extract_prompt

    too_long = "word " * 400  # longer than the tiny model's 256-token context
    harmful = _prompts_file(tmp_path / "harmful.jsonl", HARMFUL[:6] + [too_long], "harmful")
    harmless = _prompts_file(tmp_path / "harmless.jsonl", HARMLESS[:4], "harmless")
    settings = _settings(model_dir, tmp_path, [harmful, harmless])
    flaky_id = None
    calls: dict[str, int] = {}
    real = extract_prompt.fn

    @functools.wraps(real)  # the task binds its parameters by its function's signature
    def flaky(prompt_id, *args, **kwargs):
        calls[prompt_id] = calls.get(prompt_id, 0) + 1
        if prompt_id == flaky_id and calls[prompt_id] == 1:
            raise OSError("injected: the disk hiccupped")
        return real(prompt_id, *args, **kwargs)

    from refusal_atlas.tasks.prompts.records import prompt_id

    flaky_id = prompt_id(HARMFUL[0])
    monkeypatch.setattr(extract_prompt, "fn", flaky)
    result = refusal_atlas(settings)
    assert calls[flaky_id] == 2, "the transient failure must be retried once"
    assert result["extraction"]["failed"] == 1
    (failure,) = result["extraction"]["failures"]
    assert "tokens, more than the model's context of" in failure["reason"]
    assert calls[prompt_id(too_long.strip())] == 1, "a prompt that cannot fit is not retried"

    store = AtlasStore.open(settings.store)
    assert store.done_rows().size == 10
    (row, reason), = store.errors().items()
    assert "more than the model's context" in reason
    flaky_row = store.row_of(flaky_id)
    data = store.read_rows([flaky_row], ("direction", "status"))
    assert data["status"][0] == 1 and np.isfinite(data["direction"]).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on loopback."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    # No PYTHONPATH: workers find refusal_atlas as installed, as a user's workers do.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bin_dir = Path(sys.executable).parent
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, cwd=tmp_path, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "8",
                                           "--no-dashboard", "--nworkers", "1"], env=env, cwd=tmp_path,
                                          start_new_session=True, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        from distributed import Client

        deadline = time.monotonic() + 90
        with Client(address, timeout=60) as client:
            while len(client.scheduler_info()["workers"]) < 2:
                assert time.monotonic() < deadline, "two dask workers did not join the scheduler in 90 s"
                time.sleep(0.5)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_dask_workers_give_the_thread_runner_directions(prefect_harness, model_dir, tmp_path, dask_cluster):
    from refusal_atlas.flows.atlas import refusal_atlas

    harmful = _prompts_file(tmp_path / "harmful.jsonl", HARMFUL[:6], "harmful")
    harmless = _prompts_file(tmp_path / "harmless.jsonl", HARMLESS[:2], "harmless")
    threads = _settings(model_dir, tmp_path / "threads", [harmful, harmless])
    on_dask = _settings(model_dir, tmp_path / "dask", [harmful, harmless], runner="dask", dask_address=dask_cluster)
    refusal_atlas(threads)
    result = refusal_atlas(on_dask)
    assert result["extraction"]["computed"] == 8 and result["extraction"]["failed"] == 0
    a = AtlasStore.open(threads.store).to_xarray()
    b = AtlasStore.open(on_dask.store).to_xarray()
    left = a["direction"].sortby(a["prompt_id"]).values
    right = b["direction"].sortby(b["prompt_id"]).values
    finite = np.isfinite(left).all(axis=-1)
    assert finite.sum() == 12  # 6 harmful prompts at 2 layers
    cos = (left[finite] * right[finite]).sum(-1) / np.linalg.norm(left[finite], axis=-1) / np.linalg.norm(right[finite], axis=-1)
    assert cos.min() >= 0.999


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_cli_run_on_its_own_local_dask_cluster(prefect_harness, model_dir, tmp_path):
    """`refusal-atlas run --dask` starts a LocalCluster whose worker processes import the package
    as installed. The working directory holds a folder named `storage` (as ~/.prefect holds one):
    a bare `import storage` in a worker would pick it up as a namespace package and fail."""
    from tests.robustness_support import command_env, harness_api_url

    (tmp_path / "storage").mkdir()
    harmful = _prompts_file(tmp_path / "harmful.jsonl", HARMFUL[:4], "harmful")
    harmless = _prompts_file(tmp_path / "harmless.jsonl", HARMLESS[:2], "harmless")
    command = [str(Path(sys.executable).parent / "refusal-atlas"), "run", "--dask", "--dask-workers", "1",
               "--threads", "4", "--model", str(model_dir), "--layers", "1", "--steps", "1", "--no-evaluate",
               "--cluster-min-cluster-size", "2", "--cluster-pca-dim", "none", "--cluster-bootstraps", "0",
               "--cluster-null-sets", "0", "--cluster-heldout-fraction", "0", "--store", str(tmp_path / "dask.zarr"), "--prompts", str(harmful), str(harmless)]
    result = subprocess.run(command, cwd=tmp_path, env=command_env(tmp_path / "prefect-home", harness_api_url()),
                            capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    store = AtlasStore.open(str(tmp_path / "dask.zarr"))
    assert int((store.status() == STATUS_DONE).sum()) == 6


def _artifacts(flow_run_id):
    """Artifacts of a flow run and of its subflow runs, through the API."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        ids = [flow_run_id, *(c.id for c in children)]
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))


def test_artifacts_have_the_expected_keys_and_content(prefect_harness, model_dir, tmp_path):
    from refusal_atlas.flows.atlas import refusal_atlas

    harmful = _prompts_file(tmp_path / "harmful.jsonl", HARMFUL, "harmful")
    harmless = _prompts_file(tmp_path / "harmless.jsonl", HARMLESS, "harmless")
    settings = _settings(model_dir, tmp_path, [harmful, harmless], report_dir=str(tmp_path / "report"))
    state = refusal_atlas(settings, return_state=True)
    assert state.is_completed()
    result = state.result()
    artifacts = _artifacts(state.state_details.flow_run_id)
    by_key = {a.key: a for a in artifacts if a.key}
    assert {"refusal-atlas-report", "refusal-atlas-clusters", "refusal-atlas-report-html"} <= set(by_key)

    report = str(by_key["refusal-atlas-report"].data)
    assert "| prompts | new | computed | cached | already stored | failed |" in report
    assert f"| {len(HARMFUL) + len(HARMLESS)} | {len(HARMFUL) + len(HARMLESS)} |" in report
    assert "Raw and residual clustering side by side" in report and "data:image/png;base64," in report

    table = json.loads(by_key["refusal-atlas-clusters"].data)
    assert table and {"space", "cluster", "size", "examples"} <= set(table[0])
    clusters = result["clusters"]["spaces"]
    assert sum(1 for row in table if row.get("cluster") is not None) == sum(s["n_clusters"] for s in clusters.values())

    html = Path(result["report"])
    assert html.is_file() and html.parent == tmp_path / "report"
    assert str(html) in str(by_key["refusal-atlas-report-html"].data)

    progress = [a for a in artifacts if a.type == "progress"]
    assert len(progress) == 1 and float(progress[0].data) == 100.0


@pytest.mark.parametrize(("given", "expected"), [(None, "false"), ("true", "true")])
def test_importing_the_flows_turns_the_temporary_servers_telemetry_off_unless_the_user_chose(given, expected):
    """Flows called from a notebook or a script start Prefect's temporary server as the command
    line does, so the flows package, not the command line, sets the telemetry default; a value
    the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    if given is not None:
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = given
    code = "import os, refusal_atlas.flows; print(os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
