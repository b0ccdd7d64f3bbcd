"""Option 2: concept directions against the harmless mean, and the difference-in-means baseline.

Plain numpy, so that the concept step (and anything else that reads h_0 from the store) needs
neither torch nor a model.
"""

from __future__ import annotations

import numpy as np

from refusal_atlas.tasks.rows import normalise_rows


def concept_vectors(h0: np.ndarray, is_harmful: np.ndarray, is_harmless: np.ndarray) -> dict[str, np.ndarray]:
    """Option 2 and the difference in means, from h_0 [N, L, D] of done rows.

    The anchor is the mean harmless h_0 per layer, accumulated in float64. Each prompt's
    concept direction is normalise(h_prompt - anchor) [N, L, D]; the dataset-level baseline is
    normalise(mean_harmful - mean_harmless) [L, D] (Arditi et al. 2024).
    """
    if not is_harmless.any():
        raise ValueError(
            "Option 2 needs harmless prompts for its anchor (their mean h_0), but none are done. "
            "Add a harmless prompt source, for example the default set."
        )
    h = h0.astype(np.float64)
    anchor = h[is_harmless].mean(axis=0)  # [L, D]
    out = {
        "anchor": anchor.astype(np.float32),
        "direction": normalise_rows(h - anchor).astype(np.float32),
    }
    if is_harmful.any():
        out["diff_in_means"] = normalise_rows(h[is_harmful].mean(axis=0) - anchor).astype(np.float32)
    return out
