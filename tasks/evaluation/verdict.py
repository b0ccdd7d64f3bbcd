"""The verdict: how many refusal directions the evidence supports, from criteria written down.

The rules, for researchers (they are also the method document's):

A cluster counts as a supported direction only if all four hold:

1. Beyond the null. The cluster is more persistent (HDBSCAN's cluster persistence) than the
   most persistent cluster in all but 5% of structureless surrogate sets: Gaussian sets with
   the directions' mean and covariance, clustered by the same pipeline (empirical p < 0.05,
   p = (1 + #sets at least as persistent) / (1 + sets); with 20 sets only a cluster beyond all
   of them passes). The plain count of clusters is shown beside it but does not decide: HDBSCAN
   returns a few small clusters in structureless data too, and on planted data three clear
   clusters did not outnumber them (see tasks.clustering.null_model).
2. Stable. The median, over bootstrap resamples of the prompts, of the Jaccard similarity
   between the cluster and its best-matching bootstrap cluster is at least 0.6 (Hennig 2007).
3. Specific. On held-out prompts, the specificity index (the cluster direction's effect on its
   own cluster's prompts minus its effect elsewhere) has an interval whose lower end is above 0.
4. More than a shared direction. On held-out induce (harmless prompts) or on held-out bypass
   on the cluster's own prompts, the cluster direction's effect minus the common direction's
   (normalised mean of all directions) on the same prompts has an interval whose lower end is
   above 0, and the cluster direction's effect beats at least 95% of the effects of means of
   random prompt subsets of the cluster's size on the same prompts.

Then:

- "several", with count K, when K >= 2 clusters are supported;
- "one shared direction", with count 1, when no cluster is supported, the common direction has
  a held-out effect whose interval excludes zero (on induce or bypass), and every cluster fails
  criterion 1 or criterion 3: the clusters are not distinct directions, the common one acts;
- "none", with count 0, under the same failure of the clusters when the common direction's
  held-out intervals all include zero: no direction, shared or not, has shown an effect. This is
  an absence of evidence at this sample size, not evidence of absence;
- "inconclusive" otherwise (one supported cluster only, or clusters beyond the null and specific
  that fail stability or criterion 4), with the failed criterion named.

Effects are signed so that larger means the direction does more: for induce the rise in refusal
on harmless prompts, for bypass the fall in refusal on harmful prompts. Every figure the
criteria read is measured on held-out prompts or against a null; figures
that are positive by construction are listed in BY_CONSTRUCTION and never decide anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from refusal_atlas.tasks.evaluation.intervals import Estimate

if TYPE_CHECKING:  # only for annotations: the verdict needs no clustering code at run time
    from refusal_atlas.tasks.clustering.null_model import NullModelResult
    from refusal_atlas.tasks.clustering.stability import ClusterStability

Kind = Literal["several", "one shared direction", "inconclusive", "none"]
#: Level of the beyond-null test.
ALPHA = 0.05
#: Share of size-matched random-subset means a cluster direction must beat.
SUBSET_SHARE = 0.95

#: The four criteria as the reason sentence names them, in the order of each cluster's rows.
CRITERIA = ("beyond the null", "stability", "held-out specificity",
            "beating the common direction and random subsets")

#: Figures that come out positive whether or not there are several refusal directions; the
#: report shows them as "expected by construction, not evidence" and no criterion reads them.
BY_CONSTRUCTION: Mapping[str, str] = MappingProxyType({
    "cluster directions beat random directions on f": (
        "Option 1 directions climb f by construction, so any average of them raises f more than a "
        "random direction does."
    ),
    "cluster directions beat the difference in means on f": (
        "the difference in means is not fitted to f while Option 1 directions are, so any average "
        "of them wins on f."
    ),
    "f at point_K exceeds f at h_0": "point_K is reached by gradient ascent on f from h_0.",
    "in-sample effect on the prompts that made the direction": (
        "the members' directions were computed to raise f on exactly those prompts."
    ),
    "specificity on a cluster's exemplars": (
        "exemplars are the members closest to the cluster direction, chosen after clustering."
    ),
    "within-cluster cosine above between-cluster cosine": (
        "HDBSCAN grouped the rows by that distance, so any clustering of any data shows it."
    ),
    "HDBSCAN finds clusters": (
        "HDBSCAN returns small clusters in structureless Gaussian data too; only the comparison "
        "with the null model says more."
    ),
})


@dataclass(frozen=True)
class MeasureEvidence:
    """One held-out measure ("induce" or "bypass") for one cluster direction.

    vs_common: the cluster direction's effect minus the common direction's on the same held-out
    prompts (a paired estimate); subset_share: the share of the n_subsets size-matched random-
    subset means whose effect the cluster direction's effect exceeds.
    """

    measure: str
    vs_common: Estimate
    subset_share: float
    n_subsets: int

    def passed(self, share: float = SUBSET_SHARE) -> bool:
        return bool(self.vs_common.low > 0 and self.subset_share >= share)

    def format(self) -> str:
        if not self.n_subsets:
            return f"{self.measure}: minus common {self.vs_common.format()}, no size-matched subsets scored"
        beaten = round(self.subset_share * self.n_subsets)
        return (f"{self.measure}: minus common {self.vs_common.format()}, beats {beaten} of "
                f"{self.n_subsets} size-matched subsets")


@dataclass(frozen=True)
class ClusterEvidence:
    """The held-out evidence for cluster `cluster`: its specificity index and its measures."""

    cluster: int
    specificity: Estimate
    measures: tuple[MeasureEvidence, ...]


@dataclass(frozen=True)
class Criterion:
    """One row of the verdict's table. decides: False for rows shown for context only."""

    name: str
    figure: str
    passed: bool
    cluster: int | None = None
    decides: bool = True


@dataclass(frozen=True)
class Verdict:
    """kind, count (directions supported), reason (one sentence), the criteria table, and the
    supported clusters' ids."""

    kind: Kind
    count: int
    reason: str
    criteria: tuple[Criterion, ...]
    supported: tuple[int, ...]

    def headline(self) -> str:
        label = f"{self.count} directions" if self.kind == "several" else self.kind
        return f"Verdict: {label}. {self.reason}"


def _fates(stability: ClusterStability, k: int) -> str:
    """What became of cluster k in the resamples, e.g. "; kept in 9, split in 11 of 20 resamples"."""
    described = stability.describe_fates(k)
    return f"; {described}" if described else ""


def _cluster_criteria(
    k: int, null: NullModelResult, stability: ClusterStability, evidence: ClusterEvidence,
    alpha: float, share: float,
) -> tuple[Criterion, ...]:
    p = float(null.p_persistence[k])
    measures = evidence.measures
    return (
        Criterion(f"cluster {k}: beyond the null",
                  f"persistence {float(null.persistence[k]):.2f}, p = {p:.3f} against {null.n_null} "
                  "structureless sets", bool(p < alpha), k),
        Criterion(f"cluster {k}: stable",
                  f"median Jaccard {float(stability.median[k]):.2f} over {stability.n_bootstraps} "
                  f"bootstraps (stable at >= {stability.threshold:g})" + _fates(stability, k),
                  bool(stability.stable[k]), k),
        Criterion(f"cluster {k}: specific (held out)",
                  f"own minus other clusters' effect {evidence.specificity.format()}",
                  bool(evidence.specificity.low > 0), k),
        Criterion(f"cluster {k}: beats the common direction and {share:.0%} of random subsets "
                  "(held-out induce or bypass)",
                  "; ".join(m.format() for m in measures) or "not measured",
                  any(m.passed(share) for m in measures), k),
    )



def decide(
    null: NullModelResult,
    stability: ClusterStability,
    evidence: Sequence[ClusterEvidence],
    common: Mapping[str, Estimate],
    alpha: float = ALPHA,
    share: float = SUBSET_SHARE,
) -> Verdict:
    """The verdict from the rules in the module docstring.

    null: the null model of the clustering that made the clusters; stability: its per-cluster
    bootstrap stability; evidence: one per cluster, in cluster order; common: the common
    direction's held-out effect per measure (e.g. {"induce": ..., "bypass": ...}).
    """
    n = null.observed_clusters
    if len(evidence) != n or stability.median.shape != (n,):
        raise ValueError(f"{n} clusters, but evidence for {len(evidence)} and stability for "
                         f"{stability.median.size}; pass one of each per cluster, in order.")
    per_cluster = [_cluster_criteria(k, null, stability, evidence[k], alpha, share) for k in range(n)]
    supported = tuple(k for k, rows in enumerate(per_cluster) if all(c.passed for c in rows))
    # Candidates: beyond the null and specific (criteria 1 and 3) without being supported.
    candidates = [k for k, rows in enumerate(per_cluster) if rows[0].passed and rows[2].passed and k not in supported]
    common_rows = tuple(
        Criterion(f"common direction: held-out {measure} effect", estimate.format(), bool(estimate.low > 0))
        for measure, estimate in common.items()
    )
    acts = any(estimate.low > 0 for estimate in common.values())
    context = Criterion("cluster count against the null (context only)", null.describe(alpha),
                        null.count_beyond_null(alpha), decides=False)
    table = (context, *[c for rows in per_cluster for c in rows], *common_rows)

    def failed(k: int) -> str:
        return " and ".join(name for name, c in zip(CRITERIA, per_cluster[k]) if not c.passed)

    if len(supported) >= 2:
        kind, count = "several", len(supported)
        reason = (f"clusters {', '.join(map(str, supported))} each pass all four criteria (beyond the null, "
                  "stable, specific on held-out prompts, and beating the common direction and random subsets).")
    elif len(supported) == 1:
        kind, count = "inconclusive", 1
        others = [k for k in range(n) if k not in supported]
        detail = "; ".join(f"cluster {k} fails {failed(k)}" for k in others) or "no other cluster was found"
        reason = (f"only cluster {supported[0]} passes every criterion, and several directions need two "
                  f"({detail}).")
    elif candidates:
        kind, count = "inconclusive", 0
        reason = ("; ".join(f"cluster {k} is beyond the null and specific but fails {failed(k)}" for k in candidates)
                  + ".")
    elif acts:
        kind, count = "one shared direction", 1
        reason = ("the common direction has a held-out effect whose interval excludes zero, while "
                  + ("no cluster was found" if n == 0 else "no cluster is both beyond the null and specific")
                  + ".")
    else:
        kind, count = "none", 0
        reason = ("neither the common direction nor any cluster shows a held-out effect whose interval "
                  "excludes zero, and no cluster is both beyond the null and specific.")
    return Verdict(kind=kind, count=count, reason=reason[0].upper() + reason[1:], criteria=table, supported=supported)
