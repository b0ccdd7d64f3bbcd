"""Option 2 for a store: concept directions against the harmless mean, and the baseline."""

from __future__ import annotations

import numpy as np

from refusal_atlas.tasks.engine.concepts import concept_vectors
from refusal_atlas.storage.handles import writable_store


def compute_concepts(store_uri: str, store_uuid: str) -> dict:
    """Write the store's concept group from the h_0 of its done rows; return a small summary.

    Without harmless rows there is no anchor: the step is skipped and says so, and everything
    downstream that needs the baseline reports its absence instead of inventing one.
    """
    store = writable_store(store_uri, store_uuid)
    ds = store.to_xarray(done_only=True)
    labels = np.asarray(ds["label"].values, dtype=object)
    harmful, harmless = labels == "harmful", labels == "harmless"
    if not harmless.any():
        return {"skipped": "no done harmless prompts, so Option 2 has no anchor; add a harmless source"}
    h0 = np.asarray(ds["h0"].values)  # [n, L, D]
    vectors = concept_vectors(h0, harmful, harmless)
    rows = np.asarray(ds["prompt"].values)
    diff = vectors.get("diff_in_means", np.full_like(vectors["anchor"], np.nan))
    version = store.data_version()
    store.write_concept(
        rows=rows,
        direction=vectors["direction"],
        anchor=vectors["anchor"],
        diff_in_means=diff,
        anchor_rows=rows[harmless],
        harmful_rows=rows[harmful],
        data_version=version,
        params={"anchor": "mean h_0 of the done harmless rows, accumulated in float64"},
    )
    return {"data_version": version, "rows": int(rows.size), "harmless": int(harmless.sum()), "harmful": int(harmful.sum())}
