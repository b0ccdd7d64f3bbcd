"""Faults of the running command: `refusal-atlas run` killed mid-run, and its Prefect API lost
mid-run. Both keep every finished row, and the same command run again computes only the rest.

A writer killed between a row's data and its done flag is tested on the store itself in
test_store_concurrency.py; here it is the whole command, killed at a moment the test does not
choose beyond "some rows are done".
"""

from __future__ import annotations

import re

import pytest
import robustness_support as support

from refusal_atlas.storage import AtlasStore

TOTAL = 40  # 30 harmful and 10 harmless prompts


def _check_complete(store) -> None:
    final = AtlasStore.open(str(store))
    ids = final.prompt_ids().tolist()
    assert final.n_rows == TOTAL and len(set(ids)) == TOTAL, "a prompt was registered twice"
    assert final.done_rows().size == TOTAL


def _slow_flags(tiny_model_dir, store, files) -> list[str]:
    # One prompt per batch and two at a time: the run lasts long enough to be caught mid-way.
    return support.flags(tiny_model_dir, store, files, "--max-batch", "1", "--threads", "2")


@pytest.mark.integration
def test_a_run_killed_mid_way_is_resumed_by_the_same_command(prefect_harness, tiny_model_dir, tmp_path):
    store = tmp_path / "atlas.zarr"
    files = support.sources(tmp_path, 30, 10)
    env = support.command_env(tmp_path / "home", support.harness_api_url())
    run = support.Started([str(support.CLI), *_slow_flags(tiny_model_dir, store, files)], env, tmp_path / "run.log")
    try:
        support.wait_for("the run finished no row", lambda: support.done_rows(store) >= 3, 240,
                         interval=0.1, on_timeout=run.output)
    finally:
        run.stop()  # SIGKILL, to the whole process group
    assert run.proc.returncode == -9
    done = support.done_rows(store)
    assert 3 <= done < TOTAL, f"the kill did not land mid-run ({done} of {TOTAL} rows done)"

    rerun = support.run_command([str(support.CLI), *support.flags(tiny_model_dir, store, files)], env, 300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = support.summary_counts(rerun.stdout)
    assert counts["new"] == 0 and counts["failed"] == 0
    assert counts["computed"] == TOTAL - done, f"{done} rows were done before the rerun: {counts}"
    assert counts["cached"] + counts["stored"] == done
    _check_complete(store)


@pytest.mark.integration
def test_a_lost_prefect_api_ends_the_run_clearly_and_the_same_command_resumes(tiny_model_dir, tmp_path):
    port = support.free_port()
    server_home = tmp_path / "server-home"
    server_home.mkdir()
    api = f"http://127.0.0.1:{port}/api"
    store = tmp_path / "atlas.zarr"
    files = support.sources(tmp_path, 30, 10)
    # Prefect retries a failed API call five times with backoff by default (about a minute); one
    # retry keeps the test short and changes nothing else.
    env = support.command_env(tmp_path / "home", api, PREFECT_CLIENT_MAX_RETRIES="1")
    server = support.start_server(server_home, port, tmp_path / "server.log")
    run = support.Started([str(support.CLI), *_slow_flags(tiny_model_dir, store, files)], env, tmp_path / "run.log")
    try:
        support.wait_for("the run finished no row", lambda: support.done_rows(store) >= 3, 240,
                         interval=0.1, on_timeout=run.output)
        server.stop()
        code = run.wait(300, "the run whose Prefect API was lost")
    finally:
        run.stop()
        server.stop()

    output = run.output()
    lines = [line for line in output.splitlines() if line.strip()]
    done = support.done_rows(store)
    assert code == 1, output[-4000:]
    assert lines[-1].startswith(f"refusal-atlas: lost the Prefect API at {api} ("), output[-4000:]
    # Rows computed after the last block write are staged (their block not yet written), and the
    # message counts them apart; support.done_rows counts both.
    kept = re.search(rf"The store {re.escape(str(store))} keeps the (\d+) of its {TOTAL} rows that are done"
                     r"(?:, and (\d+) computed rows staged for writing)?\.", lines[-1])
    assert kept, lines[-1]
    assert int(kept.group(1)) + int(kept.group(2) or 0) == done, lines[-1]
    assert "rerun the same command: it computes only the rows still missing" in lines[-1]
    assert "Traceback" not in output, output[-6000:]
    assert done >= 3

    server = support.start_server(server_home, port, tmp_path / "server-again.log")
    try:
        rerun = support.run_command([str(support.CLI), *support.flags(tiny_model_dir, store, files)], env, 300)
    finally:
        server.stop()
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = support.summary_counts(rerun.stdout)
    assert counts["computed"] == TOTAL - done and counts["failed"] == 0, counts
    _check_complete(store)
