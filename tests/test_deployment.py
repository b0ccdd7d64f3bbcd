"""Deployments on a real Prefect server, their runs, and the UI in a real browser.

The integration test starts `prefect server start` on loopback with its own home and SQLite
database, registers the `refusal-atlas-nightly` deployment from deployments/prefect.yaml on a
process work pool, starts a worker, triggers a run, then serves the same settings on a short
interval schedule (`refusal-atlas serve --interval`) and checks that the scheduled run found every
prompt already done. It opens the first run's page in headless Chromium, takes a screenshot, and
at the end checks that no process it started is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
DEPLOYMENT = "refusal-atlas-nightly"
FLOW_NAME = "refusal-atlas"
POOL = "refusal-atlas-pool"
SERVE_NAME = "refusal-atlas-test-interval"
REPORT_KEY = "refusal-atlas-report"
CLUSTERS_KEY = "refusal-atlas-clusters"
PROMPTS = 20
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
)
# Where the screenshot is copied for people to look at (runs/ is git-ignored).
SCREENSHOT_COPY = ROOT / "runs" / "ui-screenshot.png"
PREFECT = Path(sys.executable).with_name("prefect")


# --- the project file, checked without a server -------------------------------------------------


def _nightly() -> dict:
    project = yaml.safe_load(PREFECT_FILE.read_text())
    matches = [d for d in project["deployments"] if d["name"] == DEPLOYMENT]
    assert len(matches) == 1, f"{PREFECT_FILE} must define the deployment {DEPLOYMENT!r} exactly once"
    return {**matches[0], "_project": project}


def test_prefect_yaml_parameters_are_valid_settings():
    """The deployment's parameters must be an AtlasSettings object the flow accepts, so that a
    renamed or removed settings field fails here rather than at 03:00 on the server."""
    from refusal_atlas.tasks.prompts.sources import PromptSource
    from refusal_atlas.tasks.settings import AtlasSettings

    nightly = _nightly()
    assert set(nightly["parameters"]) == {"settings"}, "the flow's only parameter is `settings`"
    settings = AtlasSettings.model_validate(nightly["parameters"]["settings"])
    assert settings.prompts == [PromptSource(path="default")], "the nightly run reads the default prompts"
    assert settings.store and "://" not in settings.store, "a local store path, relative to the project root"


def test_the_shipped_settings_files_are_valid_and_differ_only_where_they_say():
    """deployments/demo.json (what `make demo` runs) and deployments/recovery.json (the recovery
    benchmark's) must load as AtlasSettings and differ only where the demo saves time: the
    recovery benchmark reads every held-out planted prompt, 10 held-out prompts a cluster for
    specificity, scores the size-matched subsets by bypass too (criterion 4's null for
    bypass), and draws 200 structureless sets and bootstraps (p in steps of 1/201: at 20 the
    verdict's "beyond the null" turned on a single draw); the demo reads 75, 5, scores them by
    induce only, and keeps the default 20. Both evaluate each cluster
    through its difference in means (chosen on the organism's training prompts), and compute
    directions with the representation benchmarks/bench_recovery_representation.py picks on the
    validation prompts (organism-validation: never held out), K = 8 steps of 0.1
    at layer 18, and cluster them with the setting benchmarks/bench_recovery_verdict_rule.py's rule
    picks on the same prompts: 16 PCA dimensions, min_cluster_size 8, min_samples 3."""
    import copy
    import json

    from refusal_atlas.tasks.settings import AtlasSettings

    demo, recovery = (json.loads((ROOT / "deployments" / name).read_text()) for name in ("demo.json", "recovery.json"))
    for raw in (demo, recovery):
        assert AtlasSettings.model_validate(raw).evaluation.cluster_vector == "diff_in_means"
        clustering = {k: v for k, v in raw["clustering"].items() if k != "null_sets"}
        assert clustering == {"pca_dim": 16, "min_cluster_size": 8, "min_samples": 3}
        assert raw["directions"] == {"layers": [18], "steps": 8, "eta": 0.1}
    assert not AtlasSettings.model_validate(demo).evaluation.controls_bypass
    scaled = copy.deepcopy(demo)
    scaled["prompts"][0] = "organism-planted"
    scaled["evaluation"] |= {"n_specificity": 10, "controls_bypass": True}
    scaled["clustering"] |= {"null_sets": 200}
    assert scaled == recovery


def test_prefect_yaml_schedule_pool_and_pull_step():
    from prefect.schedules import Cron

    nightly = _nightly()
    project = nightly["_project"]
    module, _, function = nightly["entrypoint"].partition(":")
    assert (ROOT / module).is_file() and f"def {function}(" in (ROOT / module).read_text(), (
        f"entrypoint {nightly['entrypoint']} does not name a function in the project"
    )
    (schedule,) = nightly["schedules"]
    assert schedule["timezone"] == "UTC"
    Cron(schedule["cron"], timezone="UTC")  # raises on an invalid cron expression
    assert nightly["work_pool"]["name"] == POOL
    (pull,) = project["pull"]
    assert "prefect.deployments.steps.set_working_directory" in pull, "runs must start in the project root"


# --- `refusal-atlas serve`, without a server -------------------------------------------------------


def _serve_args(*argv: str) -> argparse.Namespace:
    from refusal_atlas.flows import serve as serve_command

    parser = argparse.ArgumentParser()
    serve_command.configure_parser(parser)
    return parser.parse_args(list(argv))


def test_serve_needs_a_server(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from refusal_atlas.flows import serve as serve_command

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert serve_command.main(_serve_args("--interval", "5")) == 2
    assert "prefect server start" in capsys.readouterr().err


def test_serve_rejects_a_bad_cron_before_contacting_the_server(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from refusal_atlas.flows import serve as serve_command

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert serve_command.main(_serve_args("--cron", "every night")) == 2
    assert "invalid schedule" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    [],                                               # no schedule
    ["--cron", "0 3 * * *", "--interval", "5"],       # two schedules
    ["--interval", "0"],
    ["--interval", "5", "--limit", "0"],
])
def test_serve_flag_errors(argv):
    with pytest.raises(SystemExit):
        _serve_args(*argv)


def test_serve_flags_spell_the_test_settings(tmp_path):
    """The integration test serves `_serve_flags` and expects the deployment's `_tiny_settings`."""
    from refusal_atlas.flows.flags import settings_from_args
    from refusal_atlas.tasks.settings import AtlasSettings

    args = _serve_args("--interval", "5", *_serve_flags(tmp_path / "model", tmp_path / "store.zarr"))
    settings = settings_from_args(AtlasSettings, args)
    assert settings.model_dump(mode="json") == _tiny_settings(tmp_path / "model", tmp_path / "store.zarr")


# --- processes -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


class Processes:
    """Subprocesses started in sessions of their own, so that each is stopped with its children."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs = logs
        self.env = env
        self.started: dict[str, subprocess.Popen] = {}
        # Each started process and every descendant seen while it ran, so that teardown and the
        # leak check also cover children that left the process group (flow-run subprocesses,
        # the browser under chromedriver).
        self.family: dict[str, dict[int, psutil.Process]] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.adopt(name, proc)
        return proc

    def adopt(self, name: str, proc: subprocess.Popen) -> None:
        """Track a process started elsewhere (chromedriver, started by selenium)."""
        self.started[name] = proc
        self.family[name] = {}
        self.note_descendants()

    def run(self, name: str, args: list[str], timeout: float) -> str:
        """Run a command to completion; its output, or a failure that shows it."""
        try:
            done = subprocess.run(args, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"`{name}` did not finish within {timeout:.0f} s:\n{err.stdout}\n{err.stderr}")
        (self.logs / f"{name}.log").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, (
            f"`{name}` failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def log(self, name: str) -> str:
        return _tail(self.logs / f"{name}.log")

    def check_alive(self, name: str) -> None:
        proc = self.started[name]
        if proc.poll() is not None:
            pytest.fail(f"the {name} process exited early ({proc.returncode}); its log ends:\n{self.log(name)}")

    def note_descendants(self) -> None:
        for name, proc in self.started.items():
            try:
                parent = psutil.Process(proc.pid)
                for p in [parent, *parent.children(recursive=True)]:
                    self.family[name].setdefault(p.pid, p)
            except psutil.NoSuchProcess:
                pass

    def stop(self, name: str, grace: float = 10.0) -> None:
        """SIGTERM the process's group and let it shut down its children (a worker reports its runs,
        `serve` pauses its schedule); after `grace` s, SIGKILL the group and any descendant left."""
        proc = self.started[name]
        self.note_descendants()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in self.family[name].values():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait(timeout=10)

    def stop_all(self) -> list[str]:
        """Stop everything, last started first; the processes still running afterwards."""
        errors = []
        for name in reversed(list(self.started)):
            try:
                self.stop(name)
            except Exception as err:  # noqa: BLE001 - stop the others, then report
                errors.append(f"stopping {name}: {err!r}")
        return errors + self.left_behind()

    def left_behind(self, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            alive = []
            for name, members in self.family.items():
                for pid, p in members.items():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                            alive.append(f"{name}: {pid} {' '.join(p.cmdline())[:120]}")
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)


def wait_for(what: str, check, timeout: float, interval: float = 1.0, on_timeout=lambda: ""):
    """Poll `check` until it returns something truthy; fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s: {what}\n{on_timeout()}")
        time.sleep(interval)


# --- the integration test -------------------------------------------------------------------------


def _tiny_settings(model_dir: Path, store: Path) -> dict:
    from refusal_atlas.tasks.prompts.sources import PromptSource
    from refusal_atlas.tasks.settings import AtlasSettings, ClusterSettings, DirectionSettings, ModelSettings

    # Twenty prompts are too few to hold any out (ten harmful ones would leave five to cluster),
    # and the run is not evaluated, so nothing is held out and no null model is drawn.
    return AtlasSettings(
        model=ModelSettings(name=str(model_dir)),
        store=str(store),
        directions=DirectionSettings(layers=[1, 2], steps=2),
        clustering=ClusterSettings(heldout_fraction=0, null_sets=0),
        prompts=[PromptSource(path="default", limit=PROMPTS)],
        evaluate=False,
    ).model_dump(mode="json")


def _serve_flags(model_dir: Path, store: Path) -> list[str]:
    """The CLI flags that spell the same settings as `_tiny_settings`."""
    return ["--model", str(model_dir), "--store", str(store), "--layers", "1", "2", "--steps", "2",
            "--cluster-heldout-fraction", "0", "--cluster-null-sets", "0",
            "--prompts", f"default#limit={PROMPTS}", "--no-evaluate"]


def _serve_command() -> list[str]:
    """`refusal-atlas serve` once flows/cli.py mounts it; until then the module's own entry point,
    which parses the same flags and runs the same code."""
    cli = Path(sys.executable).with_name("refusal-atlas")
    probe = subprocess.run([str(cli), "serve", "--help"], capture_output=True, text=True, timeout=60)
    if probe.returncode == 0:
        return [str(cli), "serve"]
    return [sys.executable, "-m", "refusal_atlas.flows.serve"]


COUNTS = re.compile(r"directions: (\d+) computed, (\d+) cached, (\d+) already stored, (\d+) failed")
NEW_ROWS = re.compile(r"; (\d+) new rows in ")


class Api:
    """Prefect's own client, pointed at the test's server."""

    def __init__(self, url: str):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
        self.client = self._stack.enter_context(get_client(sync_client=True))

    def close(self) -> None:
        self._stack.close()

    def flow_run(self, run_id):
        return self.client.read_flow_run(run_id)

    def subflow_runs(self, run_id) -> list:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        return self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
        )

    def task_runs(self, run_ids: list) -> list:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        return self.client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))

    def log_text(self, run_ids: list) -> str:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        logs = self.client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)))
        return "\n".join(log.message for log in logs)

    def artifacts(self, run_ids: list) -> list:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        return self.client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids))
        )

    def served_runs(self, deployment_id) -> list:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        return self.client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))

    def deployment(self, name: str):
        from prefect.exceptions import ObjectNotFound

        try:
            return self.client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def _wait_final(api: Api, run_id, what: str, timeout: float, procs: Processes, logs: tuple[str, ...]):
    def final():
        procs.note_descendants()
        for name in logs:
            procs.check_alive(name)
        run = api.flow_run(run_id)
        return run if run.state and run.state.is_final() else None

    def explain():
        run = api.flow_run(run_id)
        return f"its state is {run.state and run.state.name}\n" + "\n".join(
            f"--- {name} log ---\n{procs.log(name)}" for name in logs)

    return wait_for(f"{what} ({run_id}) did not reach a final state", final, timeout, on_timeout=explain)


def _run_summary(api: Api, run) -> dict:
    """What a finished run did: its extraction counts, task states, artifacts, from the API."""
    subflows = api.subflow_runs(run.id)
    run_ids = [run.id, *(s.id for s in subflows)]

    def counts():
        text = api.log_text(run_ids)
        found, new = COUNTS.search(text), NEW_ROWS.search(text)
        return (found, new) if found and new else None

    found, new = wait_for(f"the logs of run {run.name} do not show its extraction counts", counts, 30,
                          on_timeout=lambda: api.log_text(run_ids)[-3000:])
    computed, cached, stored, failed = (int(g) for g in found.groups())
    by_flow = {api.client.read_flow(s.flow_id).name: s for s in subflows}
    assert "extract-directions" in by_flow, f"run {run.name} has no extraction subflow: {sorted(by_flow)}"
    # Only the extraction subflow's task runs: the parent's own task runs include one that stands
    # for each subflow, and later subflows run other tasks.
    # The subflow also runs write-blocks tasks (one per block of rows); count the prompts' tasks.
    extract_tasks = [t for t in api.task_runs([by_flow["extract-directions"].id]) if t.name.startswith("extract-")]
    return {
        "subflows": by_flow,
        "new": int(new.group(1)),
        "computed": computed, "cached": cached, "stored": stored, "failed": failed,
        "task_states": sorted(t.state.name for t in extract_tasks),
        "artifacts": api.artifacts(run_ids),
        "parent_artifacts": api.artifacts([run.id]),
    }


@pytest.fixture
def stack(tmp_path):
    """A Prefect server on a free loopback port with its own home and database; every process the
    test starts is registered here and stopped, and checked gone, at teardown."""
    port = _free_port()
    home = tmp_path / "prefect-home"
    home.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        # Workers and runners poll every 10 to 15 s by default; the test would spend most of its
        # time waiting for the next poll.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PYTHONUNBUFFERED": "1",
    })
    procs = Processes(logs, env)
    info = {"port": port, "api": api_url, "ui": f"http://127.0.0.1:{port}", "env": env, "procs": procs,
            "tmp": tmp_path}
    try:
        yield info
    finally:
        left = procs.stop_all()
        assert not left, f"processes the test started are still running after teardown: {left}"


def _start_server(stack) -> None:
    procs: Processes = stack["procs"]
    procs.start("server", [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(stack["port"])])

    def healthy():
        procs.check_alive("server")
        try:
            import httpx

            return httpx.get(f"{stack['api']}/health", timeout=2).status_code == 200
        except Exception:  # noqa: BLE001 - not listening yet
            return False

    wait_for(f"the Prefect server did not answer {stack['api']}/health", healthy, 120, interval=0.5,
             on_timeout=lambda: procs.log("server"))


def _browser_check(stack, run, extraction_run, report) -> list[Path]:
    """Open the run's page in headless Chromium and check that it shows the run and its artifacts;
    the screenshots taken. `report` is the report artifact, or None where the flow has none yet."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    procs: Processes = stack["procs"]
    tmp: Path = stack["tmp"]
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp / 'chromium-profile'}")
    # A session of its own, like the other processes, so teardown can stop chromedriver and the
    # browser it starts together.
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(procs.logs / "chromedriver.log"),
                      popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(service=service, options=options)
    procs.adopt("chromedriver", service.process)
    shots: list[Path] = []

    def body() -> str:
        return driver.find_element(By.TAG_NAME, "body").text

    def wait_text(texts: list[str], where: str) -> str:
        def shown():
            text = body()
            assert "Can't connect to Server API" not in text, f"{where}: the UI cannot reach the API"
            return text if all(t in text for t in texts) else None

        return wait_for(f"{where} did not show {texts}", shown, 60, interval=0.5,
                        on_timeout=lambda: f"{driver.current_url} shows:\n{body()[-1500:]}")

    def open_artifacts_tab(run_id, run_name: str, expect: list[str]) -> None:
        driver.get(f"{stack['ui']}/runs/flow-run/{run_id}")
        wait_text([run_name, "Artifacts"], f"the page of flow run {run_name}")
        driver.find_element(By.CSS_SELECTOR, "li.p-tab#artifacts").click()
        wait_text(expect, f"the Artifacts tab of flow run {run_name}")

    try:
        procs.note_descendants()
        driver.set_page_load_timeout(60)
        if report is not None:
            open_artifacts_tab(run.id, run.name, [REPORT_KEY, CLUSTERS_KEY])
        else:
            # Until the flow has a report, the artifact the UI can show is the extraction
            # subflow's progress artifact; the parent run's page is still opened and shot.
            open_artifacts_tab(extraction_run.id, extraction_run.name, ["PROGRESS"])
            driver.get(f"{stack['ui']}/runs/flow-run/{run.id}")
            wait_text([run.name, "Completed", DEPLOYMENT, POOL], f"the page of flow run {run.name}")
        shots.append(tmp / "ui-run.png")
        driver.save_screenshot(str(shots[-1]))
        if report is not None:
            # The report artifact's own page renders its markdown: the heading and the embedded
            # PNG plots (data URIs, decoded by the browser to a non-zero width).
            heading = next((line.lstrip("#").strip() for line in str(report.data).splitlines()
                            if re.match(r"#{1,6} \S", line)), None)
            assert heading, "the report's markdown has no heading"
            driver.get(f"{stack['ui']}/artifacts/artifact/{report.id}")
            wait_text([REPORT_KEY, heading], "the report artifact's page")
            images = driver.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png']")
            if "data:image/png" in str(report.data):
                assert images and all(i.get_property("naturalWidth") > 0 for i in images), (
                    "the report's embedded PNG images did not render")
            shots.append(tmp / "ui-report.png")
            driver.save_screenshot(str(shots[-1]))
        return shots
    finally:
        procs.note_descendants()
        driver.quit()


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_deployment_runs_schedule_and_ui(stack):
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        assert path.exists(), f"{path} is missing: apt-get install -y {package} (make test installs it as root)"
    import selenium  # noqa: F401

    from tests.tiny import save_tiny_model

    procs: Processes = stack["procs"]
    tmp: Path = stack["tmp"]
    timings: dict[str, float] = {}
    started = time.monotonic()

    def mark(step: str) -> None:
        timings[step] = round(time.monotonic() - started, 1)

    _start_server(stack)
    model_dir = save_tiny_model(tmp / "tiny-model")
    store = tmp / "store.zarr"
    settings = _tiny_settings(model_dir, store)
    mark("server up")

    procs.run("work-pool create", [str(PREFECT), "work-pool", "create", POOL, "--type", "process"], timeout=90)
    procs.run("deploy", [str(PREFECT), "deploy", "--prefect-file", str(PREFECT_FILE.relative_to(ROOT)),
                         "--name", DEPLOYMENT, "--params", json.dumps({"settings": settings}), "--no-prompt"],
              timeout=180)
    procs.start("worker", [str(PREFECT), "worker", "start", "--pool", POOL, "--type", "process"])
    mark("deployed, worker started")

    api = Api(stack["api"])
    try:
        deployment = api.deployment(f"{FLOW_NAME}/{DEPLOYMENT}")
        assert deployment is not None, f"{FLOW_NAME}/{DEPLOYMENT} was not registered"
        assert deployment.parameters == {"settings": settings}, "the --params override did not reach the deployment"
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        assert deployment.schedules[0].schedule.timezone == "UTC"
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ], "the pull step must start runs in the project root"
        # Keep the nightly schedule registered but inactive, so that a test that happens to run
        # at 03:00 UTC is not joined by a scheduled run on the same store.
        api.client.update_deployment_schedule(deployment.id, deployment.schedules[0].id, active=False)

        # A run triggered by hand, as from the UI's "Run" button, picked up by the worker.
        first = api.client.create_flow_run_from_deployment(deployment.id)
        first = _wait_final(api, first.id, "the triggered deployment run", 180, procs, ("worker",))
        mark("triggered run final")
        assert first.state.is_completed(), f"the triggered run ended {first.state.name}: {first.state.message}\n{procs.log('worker')}"
        summary = _run_summary(api, first)
        assert summary["new"] == PROMPTS
        assert (summary["computed"], summary["failed"]) == (PROMPTS, 0), summary
        assert summary["task_states"] == ["Completed"] * PROMPTS, summary["task_states"]

        # The same settings on a short interval schedule: the scheduled run finds every prompt done.
        procs.start("serve", [*_serve_command(), "--interval", "5", "--name", SERVE_NAME,
                              *_serve_flags(model_dir, store)])
        served = wait_for(
            f"`refusal-atlas serve` did not register {FLOW_NAME}/{SERVE_NAME}",
            lambda: procs.check_alive("serve") or api.deployment(f"{FLOW_NAME}/{SERVE_NAME}"),
            120, on_timeout=lambda: procs.log("serve"),
        )
        assert served.parameters == {"settings": settings}, "serve's flags must spell the same settings"
        assert [s.schedule.interval.total_seconds() for s in served.schedules] == [5.0]

        def scheduled_run_done():
            procs.check_alive("serve")
            procs.note_descendants()
            done = [r for r in api.served_runs(served.id) if r.state and r.state.is_final()]
            return done[0] if done else None

        second = wait_for("no scheduled run of the served deployment finished", scheduled_run_done, 150,
                          on_timeout=lambda: procs.log("serve"))
        mark("scheduled run final")
        assert second.auto_scheduled, "the served run must come from the interval schedule"
        assert second.state.is_completed(), f"the scheduled run ended {second.state.name}: {second.state.message}\n{procs.log('serve')}"
        procs.stop("serve")
        incremental = _run_summary(api, second)
        assert incremental["new"] == 0, incremental
        assert incremental["computed"] == 0 and incremental["failed"] == 0, incremental
        assert incremental["cached"] + incremental["stored"] == PROMPTS, incremental
        assert set(incremental["task_states"]) <= {"Cached", "Completed"}, incremental["task_states"]

        # Artifacts: the extraction subflow's progress artifact, and the report once it exists.
        for run_summary in (summary, incremental):
            progress = [a for a in run_summary["artifacts"] if a.type == "progress"]
            assert progress and all(float(a.data) == 100.0 for a in progress), progress
        keys = {a.key for a in summary["parent_artifacts"]}
        assert {REPORT_KEY, CLUSTERS_KEY} <= keys, f"the run's artifacts are {keys}"
        # Prefect stores a link artifact as markdown of the form [text](url).
        assert any(re.search(r"\]\([^)]*\.html\)", str(a.data)) for a in summary["parent_artifacts"]), (
            "no link artifact to the HTML report")
        report = next(a for a in incremental["parent_artifacts"] if a.key == REPORT_KEY)
        words = [w for w in ("new", "cached", "stored", "failed") if w not in str(report.data).lower()]
        assert not words, f"the scheduled run's report does not say how many prompts were {words}"

        report = next((a for a in summary["parent_artifacts"] if a.key == REPORT_KEY), None)
        shots = _browser_check(stack, first, summary["subflows"]["extract-directions"], report)
        mark("browser checked")
        SCREENSHOT_COPY.parent.mkdir(exist_ok=True)
        shutil.copyfile(shots[0], SCREENSHOT_COPY)
        if len(shots) > 1:
            shutil.copyfile(shots[1], SCREENSHOT_COPY.with_name("ui-report-screenshot.png"))
    finally:
        api.close()
    (tmp / "timings.json").write_text(json.dumps(timings))
    print("timings (s since start):", timings)
