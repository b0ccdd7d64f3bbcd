"""Helpers of the robustness tests: prompt files, tiny-model settings and their CLI flags, the
command in a subprocess, a real Prefect server, and bounded waits that say what did not happen."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_deployment import wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLI = BIN / "refusal-atlas"

HARMFUL = [f"Explain how to break into house number {i} without a key." for i in range(60)]
HARMLESS = [f"Write a short poem about the number {i}." for i in range(20)]

# "prompts 12: 0 new; 7 computed, 5 cached, 0 already stored, 0 failed", from run_summary.
SUMMARY = re.compile(r"prompts (\d+): (\d+) new; (\d+) computed, (\d+) cached, (\d+) already stored, (\d+) failed")


def prompts_file(path: Path, texts: list[str], label: str) -> Path:
    path.write_text("".join(json.dumps({"prompt": t, "label": label}) + "\n" for t in texts))
    return path


def sources(tmp_path: Path, harmful: int, harmless: int) -> list[Path]:
    """Two prompt files under ``tmp_path``: the first ``harmful`` and ``harmless`` prompts."""
    return [prompts_file(tmp_path / "harmful.jsonl", HARMFUL[:harmful], "harmful"),
            prompts_file(tmp_path / "harmless.jsonl", HARMLESS[:harmless], "harmless")]


def settings(model_dir: Path, store: Path, files: list[Path], **extra):
    """Settings for a quick run on the tiny model (layers 1 and 2, two steps, no evaluation, so
    nothing held out: these runs have too few prompts to split)."""
    from refusal_atlas.tasks.prompts.sources import PromptSource
    from refusal_atlas.tasks.settings import AtlasSettings, ClusterSettings, DirectionSettings, ModelSettings

    return AtlasSettings(
        prompts=[PromptSource(path=str(p)) for p in files],
        store=str(store),
        model=ModelSettings(name=str(model_dir)),
        directions=DirectionSettings(layers=[1, 2], steps=2),
        clustering=ClusterSettings(min_cluster_size=2, pca_dim=None, bootstraps=0, null_sets=0, heldout_fraction=0),
        evaluate=False,
        **extra,
    )


def flags(model_dir: Path, store: Path, files: list[Path], *extra: str) -> list[str]:
    """`refusal-atlas run` arguments that spell ``settings(model_dir, store, files)``."""
    return ["run", "--model", str(model_dir), "--store", str(store), "--layers", "1", "2", "--steps", "2",
            "--cluster-min-cluster-size", "2", "--cluster-pca-dim", "none", "--cluster-bootstraps", "0",
            "--cluster-null-sets", "0", "--cluster-heldout-fraction", "0", "--no-evaluate", "--prompts", *map(str, files), *extra]


def summary_counts(output: str) -> dict[str, int]:
    """The counts of the last run summary printed in ``output``."""
    found = SUMMARY.findall(output)
    assert found, f"no run summary in the output:\n{output[-3000:]}"
    keys = ("prompts", "new", "computed", "cached", "stored", "failed")
    return dict(zip(keys, map(int, found[-1])))


def done_rows(store: Path) -> int:
    """How many rows of the store are kept now: done, or computed and staged for their block
    (the next run writes staged rows without computing them); 0 while the store does not exist
    or is being made."""
    import numpy as np

    from refusal_atlas.storage import AtlasStore

    try:
        opened = AtlasStore.open(str(store))
        return int(np.union1d(opened.done_rows(), opened.staged_rows()).size)
    except Exception:  # noqa: BLE001 - not created yet, or mid-creation
        return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command_env(home: Path, api_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a command run by a test: its own Prefect home (so result records and
    settings stay in the test's directory) and the API it must use."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PYTHONUNBUFFERED": "1"})
    # The package must be found as installed, never through the checkout on PYTHONPATH: that is
    # how a user's worker processes find it.
    env.pop("PYTHONPATH", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


def harness_api_url() -> str:
    """The API URL of the session's Prefect test harness (use inside the prefect_harness fixture)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness set no API URL"
    return str(url)


class Started:
    """A process started in a session of its own (so it is stopped with its children), logging
    to a file; ``stop`` SIGKILLs the group and waits, bounded."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT):
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float, what: str) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{what} did not end within {timeout:.0f} s; its output ends:\n{self.output()[-4000:]}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def run_command(args: list[str], env: dict[str, str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run the command to its end (bounded); its completed process, output in text."""
    try:
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{args[:2]} did not end within {timeout:.0f} s:\n{err.stdout}\n{err.stderr}")


def start_server(home: Path, port: int, log: Path) -> Started:
    """`prefect server start` on loopback with its own home and SQLite database, once healthy."""
    import httpx

    env = command_env(home, None, PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}")
    server = Started([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                     env, log)

    def healthy() -> bool:
        if server.proc.poll() is not None:
            pytest.fail(f"the Prefect server exited ({server.proc.returncode}):\n{server.output()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(f"the Prefect server on port {port} did not become healthy", healthy, 180, interval=0.5,
             on_timeout=lambda: server.output()[-3000:])
    return server
