"""The `refusal_atlas` flow: register -> extract (one task per prompt) -> concepts -> cluster
-> evaluate -> report. Wiring only; the work is in `tasks`.

Extraction runs as a subflow so that its task runner (threads, or a Dask cluster) can be
chosen per run from the settings, including runs started from a deployment in the UI.
"""

# No `from __future__ import annotations` here: Prefect resolves the flow's parameter type
# (AtlasSettings) from its annotation, also in processes that unpickle the flow (Flow.serve).
import sys
from collections import Counter
from dataclasses import asdict

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from refusal_atlas.storage import STATUS_DONE, AtlasStore
from refusal_atlas.storage.lease import run_lease
from refusal_atlas.tasks.steps.prefect_tasks import (
    cluster,
    concept_vectors,
    evaluate_and_report,
    extract_prompt,
    register_prompts,
    write_blocks,
)
from refusal_atlas.tasks.steps.registration import PromptTask, Registration
from refusal_atlas.tasks.settings import AtlasSettings


def task_runner(settings: AtlasSettings):
    """Threads by default (enough to fill a batch); a Dask cluster when asked."""
    threads = settings.threads or 2 * settings.engine.max_batch
    if settings.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=threads)
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    # Each worker process loads the model once; its threads feed that worker's engine.
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": settings.dask_workers, "threads_per_worker": threads, "processes": True},
    )


@flow(name="extract-directions")
def extract_directions(settings: AtlasSettings, store_uri: str, store_uuid: str, fingerprint: str,
                       prompts: list[dict]) -> dict:
    """One task per prompt (``PromptTask`` fields: the id and text hash as registration computed
    them, passed forward); a progress artifact and bar follow them as they finish.

    Tasks stage their rows; a block is written (``write_blocks``) as soon as this run's rows in it
    have all finished, and rows a killed earlier run had staged are written before anything else.
    """
    logger = get_run_logger()
    work = [PromptTask(**p) for p in prompts]
    write_blocks(store_uri, store_uuid, None)
    store = AtlasStore.open(store_uri)
    # Status, unlike identity, changes under the run: the gather above may just have written rows
    # that a killed run had staged. A row the store does not hold as done is computed whatever
    # Prefect's cache says: a cache record can outlive its row (one that `refusal-atlas inspect
    # --repair` marked pending).
    done = store.read_rows([p.row for p in work], ("status",))["status"] == STATUS_DONE
    futures, future_rows = [], []
    for mapped, picked in ((extract_prompt, True), (extract_prompt.with_options(refresh_cache=True), False)):
        batch = [p for p, is_done in zip(work, done) if bool(is_done) is picked]
        if not batch:
            continue
        futures += mapped.map(
            prompt_id=[p.prompt_id for p in batch],
            text_sha256=[p.text_sha256 for p in batch],
            row=[p.row for p in batch],
            gradient=[p.gradient for p in batch],
            store_uri=unmapped(store_uri),
            store_uuid=unmapped(store_uuid),
            fingerprint=unmapped(fingerprint),
            model=unmapped(settings.model),
            directions=unmapped(settings.directions),
            engine=unmapped(settings.engine),
        )
        future_rows += [p.row for p in batch]
    block_of = {id(f): row // store.block_rows for f, row in zip(futures, future_rows)}
    unfinished = Counter(block_of.values())
    progress = create_progress_artifact(0.0, description=f"Prompts with directions in {store_uri}")
    # computed: run now; cached: Prefect's cache answered; stored: the store already had the row.
    counts = {"computed": 0, "cached": 0, "stored": 0, "failed": 0}
    failures: list[dict] = []
    step = max(1, len(futures) // 50)
    with tqdm(total=len(futures), desc="directions", unit="prompt", file=sys.stderr) as bar:
        for finished, future in enumerate(as_completed(futures), start=1):
            future.wait()
            state = future.state
            if state.is_completed():
                result = future.result()
                kind = "cached" if state.name == "Cached" else ("computed" if result["computed"] else "stored")
                counts[kind] += 1
            else:
                counts["failed"] += 1
                failures.append({"task_run": str(future.task_run_id), "reason": state.message or state.name})
                logger.warning("a prompt failed: %s", state.message)
            bar.update(1)
            block = block_of[id(future)]
            unfinished[block] -= 1
            if unfinished[block] == 0:
                write_blocks(store_uri, store_uuid, [block])
            if finished % step == 0 or finished == len(futures):
                update_progress_artifact(progress, 100.0 * finished / len(futures))
    write_blocks(store_uri, store_uuid, None)  # anything staged but not yet written (none, normally)
    logger.info("directions: %(computed)d computed, %(cached)d cached, %(stored)d already stored, %(failed)d failed", counts)
    return {**counts, "total": len(futures), "failures": failures}


@flow(name="refusal-atlas", log_prints=True)
def refusal_atlas(settings: AtlasSettings = AtlasSettings()) -> dict:
    """Find each prompt's refusal direction, cluster them, evaluate and report."""
    logger = get_run_logger()
    reg = Registration.from_dict(register_prompts(settings))
    logger.info("%s; %d new rows in %s", reg.read_summary, reg.new, reg.store_uri)
    # One run at a time computes on a store (storage/lease.py): a second run has registered its
    # prompts (safe at any time) and stops here, naming the run that holds the store.
    with run_lease(reg.store_uri):
        return _compute(settings, reg)


def _compute(settings: AtlasSettings, reg: Registration) -> dict:
    """The run after registration: directions, concept vectors, clusters, evaluation, report."""
    logger = get_run_logger()
    runner = task_runner(settings)
    extraction = extract_directions.with_options(task_runner=runner)(
        settings, reg.store_uri, reg.store_uuid, reg.fingerprint, [asdict(p) for p in reg.prompts]
    )
    concepts = concept_vectors(reg.store_uri, reg.store_uuid)
    if "skipped" in concepts:
        logger.warning("concept vectors skipped: %s", concepts["skipped"])
    store = AtlasStore.open(reg.store_uri, "r+")
    clusters = cluster(reg.store_uri, reg.store_uuid, store.data_version(), settings.clustering)
    counts = {
        "prompts": len(reg.prompts),
        "new": reg.new,
        **{k: extraction[k] for k in ("computed", "cached", "stored", "failed")},
    }
    report = evaluate_and_report(settings, reg.store_uri, reg.store_uuid, clusters["run"], counts)
    publish_report(report, counts)
    store.consolidate()
    return {
        "store": reg.store_uri,
        "report": report["html"],
        **counts,
        "extraction": extraction,
        "concepts": concepts,
        "clusters": clusters,
        "cluster_rows": report["cluster_rows"],
        "findings": report["findings"],
        "verdict": report.get("verdict"),
        "recovery": report.get("recovery"),
    }


def publish_report(report: dict, counts: dict) -> None:
    """The run's artifacts: the report (markdown), the cluster table, a link to the HTML file."""
    verdict = report.get("verdict")
    header = (f"**{verdict['headline']}**\n\n" if verdict else "") + (
        "| prompts | new | computed | cached | already stored | failed |\n|---|---|---|---|---|---|\n"
        f"| {counts['prompts']} | {counts['new']} | {counts['computed']} | {counts['cached']} | "
        f"{counts['stored']} | {counts['failed']} |\n\n"
    )
    create_markdown_artifact(key="refusal-atlas-report", markdown=header + report["markdown"],
                             description="Clusters of refusal directions, their evaluation and plots")
    # The table exists even when nothing clustered, so that its absence never reads as a bug.
    table = report["cluster_rows"] or [{"space": "raw and residual", "cluster": None, "size": 0,
                                        "examples": "no clusters were found"}]
    create_table_artifact(key="refusal-atlas-clusters", table=table,
                          description="One row per cluster, raw and residual spaces")
    create_link_artifact(key="refusal-atlas-report-html", link=f"file://{report['html']}",
                         link_text="HTML report", description="The self-contained HTML report")
