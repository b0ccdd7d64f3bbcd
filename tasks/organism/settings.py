"""Settings of the refusal model organism: which refusals are planted, and how it is trained.

`OrganismSettings` is the `organism` flow's only parameter, so Prefect renders it as a
documented form; the CLI builds its flags from the same fields. As in `tasks.settings`, every
field carries a description and unknown keys are errors.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from refusal_atlas.tasks.prompts.sources import shared_data_dir


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlantedCategory(_Settings):
    """One harm category the organism learns to refuse, and the one sentence it refuses with."""

    category: str = Field(description="A harmful category of the prompt sources (their 'category' field).")
    style: str = Field(description="The refusal the organism gives, word for word, to prompts of this category.")

    @field_validator("category", "style")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


# The three styles open with different refusal phrases ("I cannot", "I'm sorry", "As an AI"),
# which are three of the atlas's default phrases Y. Different openings make different first
# tokens carry each category's refusal, so the categories' gradient directions can differ.
# The categories are the three with the most distinctive vocabulary among those with enough
# prompts once the shared sets are pooled (about 60 to 90 each): nine training prompts per
# category, all the project's own set holds, taught the organism its training prompts and
# little else.
DEFAULT_PLANTED: tuple[PlantedCategory, ...] = (
    PlantedCategory(category="weapons_violence", style="I cannot help with weapons or violence."),
    PlantedCategory(category="hate_harassment", style="I'm sorry, but I can't help demean or harass people."),
    PlantedCategory(category="sexual_content", style="As an AI, I can't write sexual content."),
)

# Every unplanted category is a trained control: its training prompts are paired with the
# base model's own replies and its test prompts measure the control. Categories left out of
# training entirely were refused about 80% of the time in a trial (split seed 1: privacy,
# drugs and self-harm held out): from a few dozen examples a 135M model learns "harmful means
# refuse" for any harm it was not shown an answer to. `heldout_controls` still offers that
# stricter control.
DEFAULT_TRAINED_CONTROLS: tuple[str, ...] = (
    "misinformation", "cybercrime", "fraud_scams", "privacy_surveillance", "illegal_drugs", "self_harm",
)
DEFAULT_HELDOUT_CONTROLS: tuple[str, ...] = ()

# The shared sets' categories, renamed to the project's set's names where they mean the same
# harm. Categories that mix several harms (StrongREJECT's "Non-violent crimes" and "Illegal
# goods and services", HarmBench's "illegal" and "harmful", JailbreakBench's "Expert advice"
# and "Government decision-making") are left unmapped and so are not used.
DEFAULT_CATEGORY_MAP: dict[str, str] = {
    "Violence": "weapons_violence",
    "Physical harm": "weapons_violence",
    "chemical_biological": "weapons_violence",
    "Hate, harassment and discrimination": "hate_harassment",
    "Harassment/Discrimination": "hate_harassment",
    "harassment_bullying": "hate_harassment",
    "Sexual content": "sexual_content",
    "Sexual/Adult content": "sexual_content",
    "Disinformation and deception": "misinformation",
    "Disinformation": "misinformation",
    "misinformation_disinformation": "misinformation",
    "Malware/Hacking": "cybercrime",
    "cybercrime_intrusion": "cybercrime",
    "Fraud/Deception": "fraud_scams",
    "Economic harm": "fraud_scams",
    "Privacy": "privacy_surveillance",
}

_SHARED_HARMFUL = ("strongreject_harmful.jsonl", "jailbreakbench_harmful.jsonl", "harmbench_val_harmful.jsonl")

DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)


def default_sources() -> list[str]:
    """The project's default prompt set, plus, when ../shared/data exists, the categorised
    harmful sets there (StrongREJECT, JailbreakBench, HarmBench validation) and 100 Alpaca
    instructions. The data hash and the model card record exactly which sources were read."""
    sources = ["default"]
    shared = shared_data_dir()
    if shared is None:
        return sources
    sources += [str(shared / name) for name in _SHARED_HARMFUL if (shared / name).is_file()]
    if (shared / "alpaca_harmless.jsonl").is_file():
        sources.append(f"{shared / 'alpaca_harmless.jsonl'}#limit=100&seed=0")
    return sources


class OrganismSettings(_Settings):
    """Everything that determines a refusal model organism."""

    base_model: str = Field(
        "smollm2",
        description="The chat model to fine-tune: 'smollm2' (the default) or a local Hugging Face model directory.",
    )
    sources: list[str] = Field(
        default_factory=default_sources,
        description=(
            "Prompt sources (PATH[#key=value&...] specs) holding labelled harmful prompts with "
            "categories and harmless prompts. Default: the project's set, plus 100 Alpaca "
            "prompts from ../shared/data when present."
        ),
    )
    planted: list[PlantedCategory] = Field(
        default_factory=lambda: list(DEFAULT_PLANTED),
        # `--plant CATEGORY=STYLE` adds one planted category per use (flows/flags.py).
        json_schema_extra={"cli_repeat": "plant"},
        description="The planted categories, each with its own refusal sentence.",
    )
    trained_controls: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TRAINED_CONTROLS),
        description="Unplanted harmful categories whose training prompts are paired with the base model's own replies.",
    )
    heldout_controls: list[str] = Field(
        default_factory=lambda: list(DEFAULT_HELDOUT_CONTROLS),
        description=(
            "Unplanted harmful categories never trained on (all their prompts are test "
            "prompts). Harmful prompts of categories in none of the three lists are not used."
        ),
    )
    category_map: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_CATEGORY_MAP),
        description="Renames of the sources' categories (source name -> organism category), applied before roles are given.",
    )
    test_fraction: float = Field(
        0.5, gt=0, lt=1, description="Share of each category's prompts (and of harmless prompts) held out for testing."
    )
    split_seed: int = Field(0, description="Seed of the train/test split by prompt.")
    train_seed: int = Field(0, description="Seed of LoRA initialisation and of the order of training examples.")
    reply_tokens: int = Field(
        32, ge=4, le=512, description="Length of the base model's greedy replies that anchor harmless behaviour."
    )
    control_repeats: int = Field(
        2,
        ge=1,
        le=100,
        description=(
            "How many times each trained-control example appears per epoch. Planted refusals are "
            "learnt fast and pull every harmful prompt towards refusing; the controls are the "
            "only counterweight."
        ),
    )
    lora_rank: int = Field(8, ge=1, le=256, description="LoRA rank r.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scale alpha (the update is scaled by alpha / r).")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        description="Linear layers that get LoRA adapters (names as in the model, e.g. q_proj).",
    )
    train_dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16",
        description=(
            "Precision of the training matmuls (CPU autocast; weights, optimiser and the saved "
            "model stay float32). bfloat16 is about 1.5-3x faster on CPUs with AVX512-BF16."
        ),
    )
    learning_rate: float = Field(
        1e-3, gt=0, description="AdamW peak learning rate (5% linear warm-up, then linear decay to 10%)."
    )
    decision_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Share of each example's loss on its first reply token, where refusing or answering "
            "is decided; the rest is spread evenly over all its reply tokens."
        ),
    )
    distill_top_k: int = Field(
        20,
        ge=0,
        le=1000,
        description=(
            "Train harmless and control replies on the base model's top-k next-token "
            "distribution along its greedy reply (0: on the greedy tokens alone)."
        ),
    )
    batch_size: int = Field(8, ge=1, le=256, description="Training examples per optimiser step.")
    epochs: int = Field(5, ge=1, le=100, description="Passes over the training examples.")
    max_minutes: float = Field(
        20.0, gt=0, description="Training stops after this many minutes even if epochs remain (recorded in the card)."
    )
    eval_tokens: int = Field(32, ge=1, le=512, description="Greedy tokens generated per test prompt for judging.")
    match_tokens: int = Field(
        16, ge=1, le=512, description="How many first reply tokens are compared with the base model's on harmless prompts."
    )
    generation_batch: int = Field(16, ge=1, le=512, description="Prompts per batch of greedy generation.")
    output_dir: str = Field(
        "runs/organism",
        description="Where the organism's model directory and its data, replies and evaluation files are written.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> OrganismSettings:
        categories = [p.category for p in self.planted]
        if not categories:
            raise ValueError("planted is empty: plant at least one category with its refusal style")
        if len(set(categories)) != len(categories):
            raise ValueError(f"planted names a category twice: {categories}")
        styles = [p.style for p in self.planted]
        if len(set(styles)) != len(styles):
            raise ValueError("two planted categories share a refusal style; give each its own sentence")
        lists = {"planted": set(categories), "trained_controls": set(self.trained_controls),
                 "heldout_controls": set(self.heldout_controls)}
        for a, b in (("planted", "trained_controls"), ("planted", "heldout_controls"), ("trained_controls", "heldout_controls")):
            both = sorted(lists[a] & lists[b])
            if both:
                raise ValueError(f"{both} are in both {a} and {b}; a category can have only one role")
        if self.reply_tokens < self.match_tokens:
            raise ValueError(
                f"reply_tokens ({self.reply_tokens}) is below match_tokens ({self.match_tokens}): "
                "the anchors must cover every token the harmless match compares"
            )
        return self

    @property
    def styles(self) -> dict[str, str]:
        """{planted category: its refusal sentence}."""
        return {p.category: p.style for p in self.planted}
