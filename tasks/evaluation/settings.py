"""Settings of the evaluation of cluster directions against the baseline and random controls."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from refusal_atlas.tasks.settings_base import StrictSettings


class EvalSettings(StrictSettings):
    """How cluster directions, the difference-in-means baseline and random controls are tested.

    f and the log-odds (one forward pass per batch) are the cheap measures and always run.
    Greedy generation is the slow part on a CPU, so its prompt count and length are small by
    default; set n_generate to 0 to skip it.
    """

    alpha: float = Field(
        0.5, gt=0,
        description=(
            "Induce scale. A unit direction c is added at its layer, at every position, as "
            "alpha * s * c, where s is the mean ||h_0|| of the harmless evaluation prompts at that "
            "layer and position (the norm the engine's effect probe is relative to). Every "
            "direction at a layer (cluster, baseline, random) gets the same norm."
        ),
    )
    n_random: int = Field(
        20, ge=0, le=100,
        description="Random unit directions per layer, at the same norm, as controls (scored by f and log-odds).",
    )
    n_random_generate: int = Field(
        2, ge=0, description="How many of the random directions per layer also get judged replies (the slow part)."
    )
    n_subsets: int = Field(
        20, ge=0, le=200,
        description=(
            "Size-matched random-subset means per cluster: the normalised mean of as many clustered "
            "discovery directions as the cluster has, drawn at random (the null for 'this cluster is "
            "special'; 20 is the least that lets a cluster beat 95% of them). Scored by f and log-odds."
        ),
    )
    effect_scale: Literal["f", "log_odds"] = Field(
        "f",
        description=(
            "The scale on which the verdict reads held-out induce, bypass and specificity: f (log P "
            "of the refusal phrases) or the refusal log-odds at the first reply position (log p - "
            "log(1 - p), p the phrases' first tokens). f saturates at 0 when refusal is near certain: "
            "a direction that lowers P(refusal) from 0.9999 to 0.99 moves f by 0.01 and the log-odds "
            "by 4.6. The log-odds is linear in the refusal tokens' logit, so averaged over mixed "
            "prompts a cluster direction and the common direction can tie where f separates them "
            "(docs/METHOD.md, 'The verdict'). The other scale's means are reported beside."
        ),
    )
    cluster_vector: Literal["gradient_mean", "diff_in_means"] = Field(
        "gradient_mean",
        description=(
            "The vector each cluster is evaluated through. 'gradient_mean': the normalised mean of its "
            "members' Option 1 directions (the design's cluster direction). 'diff_in_means': its "
            "members' mean h_0 minus the discovery harmless prompts' mean h_0 at the same layer (a "
            "difference in means per cluster). The common direction and the size-matched subset "
            "means are built the same way, so the verdict compares like with like; the clusters "
            "themselves do not change."
        ),
    )
    controls_bypass: bool = Field(
        True,
        description=(
            "Score the f-only controls by bypass as well as by induce: the size-matched subsets on "
            "their cluster's own held-out prompts (the verdict's bypass criterion), the random "
            "directions without replies on all held-out harmful prompts and by side-effect KL. Induce "
            "runs only the layers above a direction's layer; bypass and KL are full passes with hooks "
            "at every layer, the dearest part of the evaluation on a CPU. Off: those controls are "
            "scored by induce only, and the verdict's subset criterion reads induce alone (bypass then "
            "shows no subset null)."
        ),
    )
    n_harmless: int = Field(
        32, ge=1, description="Held-out harmless prompts (a seeded sample) for induce and side effects."
    )
    n_harmful: int = Field(32, ge=1, description="Held-out harmful prompts (a seeded sample) for bypass.")
    n_generate: int = Field(32, ge=0, description=(
        "Of those, how many (a seeded random part of the sample) are also answered by greedy generation "
        "per judged direction (0: none); "
        "32 or more keeps a refusal share's Wilson interval within about +-0.17."
    ))
    kl_tokens: int = Field(8, ge=1, le=128, description=(
        "Side effects: KL(base || ablated) is averaged over this many first tokens of the "
        "unmodified model's greedy replies to the harmless prompts, teacher-forced."
    ))
    max_new_tokens: int = Field(24, ge=1, le=512, description="Tokens generated per reply.")
    batch_size: int = Field(16, ge=1, le=512, description="Prompts per forward pass.")
    n_specificity: int = Field(
        32, ge=1,
        description="Held-out harmful prompts per cluster (assigned by HDBSCAN's prediction data) for specificity.",
    )
    substring_list: Literal["jailbreakbench_arditi", "gcg_advbench"] = Field(
        "jailbreakbench_arditi", description="Which published refusal-substring list the substring judge uses."
    )
    n_examples: int = Field(2, ge=0, le=16, description="Generated replies kept per direction for the report.")
    seed: int = Field(0, description="Seed for prompt samples and random control directions.")
