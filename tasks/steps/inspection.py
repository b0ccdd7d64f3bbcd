"""A plain-text account of what an atlas store holds, for `refusal-atlas inspect`."""

from __future__ import annotations

from collections import Counter

import numpy as np

from refusal_atlas.storage import STATUS_DONE, STATUS_FAILED, AtlasStore, StoreCorruptError


def inspect_store(uri: str, verify: bool = False, repair: bool = False) -> tuple[str, bool]:
    """`refusal-atlas inspect`: the description, after checking (``verify``) or mending
    (``repair``) every chunk; False when damage remains (a damaged store still gets described
    as far as it reads, with the damage named)."""
    report = AtlasStore.open(uri, "r+" if repair else "r").verify(repair=repair) if verify or repair else None
    try:
        text, healthy = describe(uri), True
    except StoreCorruptError as err:
        text, healthy = f"store       {uri}\ndamaged     {err}", False
    if report is not None:
        text += "\n" + report.summary()
        healthy = healthy and (report.ok or report.repaired)
    return text, healthy


def describe(uri: str) -> str:
    store = AtlasStore.open(uri)
    prov = store.provenance
    spec = store.spec
    # Rows without a prompt (the rest of a block that a registration did not fill) are not rows
    # of the atlas, only room in its blocks.
    registered = store.prompt_ids() != ""
    status = store.status()[registered]
    staged = store.staged_rows().size
    lines = [
        f"store       {store.uri}",
        f"uuid        {store.store_uuid} (schema {prov.get('schema_version')}, created {prov.get('created')})",
        f"model       {spec.model_id} revision {spec.model_revision or '-'} fingerprint {spec.model_fingerprint}",
        f"            {spec.num_layers} layers, hidden size {spec.hidden_size}",
        f"layers      {list(spec.layers)} at position {spec.position}",
        f"method      " + ", ".join(f"{k}={v}" for k, v in sorted(spec.method.items())),
        f"rows        {status.size}: {int((status == STATUS_DONE).sum())} done, "
        f"{int((status == STATUS_FAILED).sum())} failed, {int((status == 0).sum())} pending"
        + (f" ({staged} computed, staged for their block)" if staged else ""),
        f"blocks      {store.block_rows} rows each, {-(-store.n_rows // store.block_rows)} blocks",
    ]
    if status.size:
        labels = store.read_rows(np.flatnonzero(registered), ("label",))["label"]
        counts = Counter(str(x) or "(unlabelled)" for x in labels)
        lines.append("labels      " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for row, reason in list(store.errors().items())[:5]:
        lines.append(f"failed row  {row}: {reason}")
    try:
        concept = store.read_concept()
        lines.append(f"concept     Option 2 from {concept.attrs.get('n_anchor_rows')} harmless rows "
                     f"(data version {concept.attrs.get('data_version')})")
    except KeyError:
        lines.append("concept     none")
    runs = store.list_cluster_runs()
    lines.append(f"clusterings {len(runs)}")
    for name in runs:
        run = store.read_cluster_run(name)
        for space, metrics in sorted(run.metrics.items()):
            lines.append(
                f"  {name} [{space}] {metrics.get('n_clusters')} clusters, "
                f"noise {metrics.get('noise_share', float('nan')):.0%} of {metrics.get('n_points')} "
                f"(data version {run.data_version})"
            )
    lines.append(f"read it with xarray.open_zarr({store.uri!r}) or AtlasStore.open(...).to_xarray()")
    return "\n".join(lines)
