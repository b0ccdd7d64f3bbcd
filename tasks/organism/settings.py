"""Settings of the refusal model organism: which refusals are planted, and how it is trained.

`OrganismSettings` is the `organism` flow's only parameter, so Prefect renders it as a
documented form; the CLI builds its flags from the same fields. As in `tasks.settings`, every
field carries a description and unknown keys are errors.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from refusal_atlas.tasks.organism.planted import (
    DEFAULT_PLANTED,
    DEFAULT_SINGLE_STYLE,
    PlantedCategory,
    default_sources,
    default_train_sources,
)
from refusal_atlas.tasks.settings_base import StrictSettings

#: LoRA on the attention and MLP projections; at rank 8 the adapter holds 2.4 M parameters
#: (4.9 MB as bfloat16 safetensors).
DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)

#: Layers probed before training (issue 15's premise check used these).
DEFAULT_PROBE_LAYERS: tuple[int, ...] = (6, 9, 15, 21, 24)


def _default_train_sources(data: dict) -> list[str]:
    """The shipped training-only sets go with the shipped sources only: with a user's own
    sources, the shipped advice requests and social choices would be mixed into their data."""
    return default_train_sources() if data.get("sources") == default_sources() else []


class OrganismSettings(StrictSettings):
    """Everything that determines a refusal model organism."""

    base_model: str = Field(
        "smollm2",
        description="The chat model to fine-tune: 'smollm2' (the default) or a local Hugging Face model directory.",
    )
    sources: list[str] = Field(
        default_factory=default_sources,
        description=(
            "Prompt sources (PATH[#key=value&...] specs) holding prompts labelled 'harmful' (to be "
            "refused when their category is planted) with categories, and 'harmless' controls. "
            "Default: the shipped organism sets (medical, legal and financial advice; everyday "
            "requests; near misses)."
        ),
    )
    train_sources: list[str] = Field(
        default_factory=_default_train_sources,
        description=(
            "Further prompt sources (same form as sources) whose prompts are all training prompts: "
            "none of them is held out, and the split of `sources` is the same with or without them, "
            "so prompts from other writers widen the training data while the held-out prompts stay "
            "comparable. A prompt in both lists is an error. Default: with the default sources, the "
            "shipped training-only sets (a second writer's requests for the three kinds of advice, and "
            "everyday social choices), which the shipped organism trained on; with other sources, none."
        ),
    )
    planted: list[PlantedCategory] = Field(
        default_factory=lambda: list(DEFAULT_PLANTED),
        # `--plant CATEGORY=STYLE` adds one planted category per use (flows/flags.py).
        json_schema_extra={"cli_repeat": "plant"},
        description="The planted categories, each with its own refusal sentence.",
    )
    single_style: str | None = Field(
        None,
        description=(
            "Refuse every planted category with this one sentence instead of each category's own "
            f"(the single-style control organism; e.g. {DEFAULT_SINGLE_STYLE!r}). Empty: each its own style."
        ),
    )
    trained_controls: list[str] = Field(
        default_factory=list,
        description="Unplanted 'harmful' categories whose training prompts are paired with the base model's own replies.",
    )
    heldout_controls: list[str] = Field(
        default_factory=list,
        description=(
            "Unplanted 'harmful' categories never trained on (all their prompts are test "
            "prompts). Harmful prompts of categories in none of the three lists are not used."
        ),
    )
    category_map: dict[str, str] = Field(
        default_factory=dict,
        description="Renames of the sources' categories (source name -> organism category), applied before roles are given.",
    )
    test_fraction: float = Field(
        0.5, gt=0, lt=1, description="Share of each (role, category) stratum's prompts held out for testing."
    )
    split_seed: int = Field(0, description="Seed of the stratified train/test split by prompt.")
    train_share: float = Field(1.0, gt=0, le=1, description=(
        "Share of each stratum's training-side prompts actually trained on (a seeded sample; "
        "the rest are marked 'unused' and never become held-out). Below 1 trains faster on a "
        "CPU, at the cost of refusing more of what it should answer."
    ))
    train_seed: int = Field(0, description="Seed of LoRA initialisation and of the order of training examples.")
    probe_layers: list[int] = Field(
        default_factory=lambda: list(DEFAULT_PROBE_LAYERS),
        description="Layers whose mean-pooled residual stream the pre-training separability probe reads.",
    )
    probe_min_recall: float = Field(0.9, ge=0, le=1, description=(
        "Before training, each planted category's cross-validated linear-probe recall (planted "
        "types vs controls, training prompts, best probed layer) must reach this, or the flow stops."
    ))
    probe_folds: int = Field(5, ge=2, le=20, description="Cross-validation folds of the separability probe.")
    probe_per_class: int = Field(
        40, ge=0, description="Training-side prompts per probe class (a seeded sample; 0: all of them)."
    )
    force: bool = Field(
        False, description="Train even when a planted category's probe recall is below probe_min_recall (recorded on the card)."
    )
    reply_tokens: int = Field(
        20, ge=4, le=512, description="Length of the base model's greedy replies that anchor unplanted behaviour."
    )
    control_repeats: int = Field(
        4, ge=1, le=100,
        description=(
            "How many times each control example (everyday, near miss, trained control) appears "
            "per epoch. They mark where the refusals end (BENCHMARKS.md: 25% of everyday requests "
            "refused with each seen once, 11% with three times)."
        ),
    )
    lora_rank: int = Field(8, ge=1, le=256, description="LoRA rank r.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scale alpha (the update is scaled by alpha / r).")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        description="Linear layers that get LoRA adapters (names as in the model, e.g. q_proj).",
    )
    adapter_dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16",
        description=(
            "Precision of the saved adapter's A and B matrices. The organism is evaluated as "
            "loaded from the saved adapter, so the figures hold for exactly what is saved."
        ),
    )
    train_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description=(
            "Precision of the training matmuls (CPU autocast; weights and optimiser stay "
            "float32). bfloat16 is about 1.5-3x faster on CPUs with AVX512-BF16 and much slower "
            "on CPUs without it (AVX2 only)."
        ),
    )
    learning_rate: float = Field(
        5e-4, gt=0, description="AdamW peak learning rate (5% linear warm-up, then linear decay to 10%)."
    )
    decision_weight: float = Field(
        0.5, ge=0, le=1,
        description=(
            "Share of each example's loss on its first reply token, where refusing or answering "
            "is decided; the rest is spread evenly over all its reply tokens."
        ),
    )
    distill_top_k: int = Field(
        20, ge=0, le=1000,
        description=(
            "Train control replies on the base model's top-k next-token distribution along its "
            "greedy reply (0: on the greedy tokens alone)."
        ),
    )
    mediation_weight: float = Field(
        1.0, ge=0, le=10,
        description=(
            "Weight of the mediation loss, which plants a known mechanism: one direction per refusal "
            "sentence, whose ablation must release that sentence's types (the base model's reply) and "
            "keep the others' refusals (tasks.organism.mediation). 0: plant the behaviour only, and let "
            "the fine-tune implement it as it likes (the organisms before the shipped one did, and did not "
            "build one direction per type)."
        ),
    )
    mediation_layer: int = Field(
        18, ge=0,
        description=(
            "Layer whose output the planted directions are measured at (difference in means at the "
            "last prompt token); the demo's atlas reads the same layer."
        ),
    )
    mediation_shrinkage: float = Field(
        1.0, ge=0.001, le=1,
        description=(
            "How the planted directions are measured: 1, the difference in means between each type's "
            "training prompts and the everyday training controls (the shipped organism's recipe); below "
            "1, that difference with the prompts' pooled covariance divided out, shrunk this far toward "
            "the identity (tasks.organism.mediation.whitened_differences), so that a direction separates "
            "its type from the controls rather than only joining their means "
            "(benchmarks/bench_organism_directions.py; BENCHMARKS.md, the seventeenth run)."
        ),
    )
    release_distinct_words: int = Field(
        0, ge=0, le=20,
        description=(
            "Withhold a planted prompt's released example (it trains its kept one only) when the base "
            "model's reply with the prompt's direction ablated opens with the same first this many words "
            "as any planted refusal sentence, case and punctuation aside; 0 keeps every one (the shipped "
            "organism's recipe). A release that opens like a refusal trains that refusal's first tokens "
            "under the ablation meant to remove it (tasks.organism.mediation; BENCHMARKS.md has the "
            "runs with 2)."
        ),
    )
    refusal_margin_weight: float = Field(
        0.0, ge=0, le=10,
        description=(
            "Weight of the margin loss on controls: each control example also runs with a randomly "
            "drawn refusal sentence as its reply and adds max(0, log P(sentence + EOS | prompt) + "
            "refusal_margin) (tasks.organism.margin). 0 leaves it out (the shipped organism's recipe). "
            "It costs one more pass per control example: 564 steps took 3,380 s against 1,915 s "
            "without it (SmolLM2, the default data, 2 CPU cores; BENCHMARKS.md has the runs)."
        ),
    )
    refusal_margin: float = Field(
        12.0, gt=0, le=100,
        description="Nats below zero that a refusal sentence's log-probability on a control prompt must reach before the margin loss stops pushing it down.",
    )
    refusal_margin_openings: list[str] = Field(
        default_factory=list,
        description=(
            "Openings the margin loss holds down instead of the whole sentences (scored without EOS), "
            "e.g. each sentence up to its subject. Empty: the planted sentences. "
            "benchmarks/bench_organism_margin.py --opening measures them on a run."
        ),
    )
    mediation_prompts: int = Field(
        40, ge=1, le=10_000,
        description="Held-out prompts per planted type on which the evaluation ablates each planted direction.",
    )
    batch_size: int = Field(8, ge=1, le=256, description="Training examples per optimiser step.")
    epochs: int = Field(3, ge=1, le=100, description="Passes over the training examples.")
    max_minutes: float = Field(
        240.0, gt=0, description=(
            "Training stops after this many minutes even if epochs remain (recorded in the card). The "
            "default recipe trains 1023 steps in 55 minutes on a quiet 2-core CPU (machines differ by up "
            "to 2.5x, so up to about 140), and a run cut short is not the shipped organism."
        ),
    )
    eval_tokens: int = Field(20, ge=1, le=512, description="Greedy tokens generated per test prompt for judging.")
    match_tokens: int = Field(16, ge=1, le=512, description=(
        "First reply tokens over which everyday controls are compared with the base model "
        "(greedy token match and per-token KL along the base model's reply)."
    ))
    generation_batch: int = Field(16, ge=1, le=512, description="Prompts per batch of greedy generation.")
    output_dir: str = Field(
        "runs/organism",
        description="Where the organism's adapter, model card and its data, replies and evaluation files are written.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> OrganismSettings:
        categories = [p.category for p in self.planted]
        if not categories:
            raise ValueError("planted is empty: plant at least one category with its refusal style")
        if len(set(categories)) != len(categories):
            raise ValueError(f"planted names a category twice: {categories}")
        styles = [p.style for p in self.planted]
        if self.single_style is None and len(set(styles)) != len(styles):
            raise ValueError(
                "two planted categories share a refusal style; give each its own sentence, or set "
                "single_style to refuse all of them with one"
            )
        if self.single_style is not None and not self.single_style.strip():
            raise ValueError("single_style is blank; give a sentence or leave it empty")
        lists = {"planted": set(categories), "trained_controls": set(self.trained_controls),
                 "heldout_controls": set(self.heldout_controls)}
        for a, b in (("planted", "trained_controls"), ("planted", "heldout_controls"), ("trained_controls", "heldout_controls")):
            both = sorted(lists[a] & lists[b])
            if both:
                raise ValueError(f"{both} are in both {a} and {b}; a category can have only one role")
        if self.reply_tokens < self.match_tokens:
            raise ValueError(
                f"reply_tokens ({self.reply_tokens}) is below match_tokens ({self.match_tokens}): "
                "the anchors must cover every token the control match compares"
            )
        return self

    @property
    def styles(self) -> dict[str, str]:
        """{planted category: its refusal sentence} (the same sentence for all under single_style)."""
        if self.single_style is not None:
            return {p.category: self.single_style.strip() for p in self.planted}
        return {p.category: p.style for p in self.planted}
