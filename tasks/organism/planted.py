"""What the refusal model organism plants, and on which prompts: one planted type and its refusal
sentence (`PlantedCategory`), the default types and sentences, and the shipped prompt sets.

`tasks.organism.settings` builds the organism's one typed settings model from these defaults.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from refusal_atlas.tasks.settings_base import StrictSettings


class PlantedCategory(StrictSettings):
    """One request type the organism learns to refuse, and the one sentence it refuses with."""

    category: str = Field(description="A category of the prompt sources (their 'category' field) whose prompts are labelled 'harmful'.")
    style: str = Field(description="The refusal the organism gives, word for word, to prompts of this category.")

    @field_validator("category", "style")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


# Planted types must be ones the base model already tells apart: SmolLM2-135M does not separate
# harm categories (linear-probe recall 0.11 to 0.78 per category) but does separate requests
# for medical, legal and financial advice from everyday requests (0.95 to 1.00), so those three
# are planted (issue 15). The three styles open with different default refusal phrases
# ("I cannot", "I'm sorry", "As an AI"), so each type's refusal is carried by different first
# tokens and the types' gradient directions can differ.
DEFAULT_PLANTED: tuple[PlantedCategory, ...] = (
    PlantedCategory(category="medical_advice", style="I cannot give medical advice; please see a doctor."),
    PlantedCategory(category="legal_advice", style="I'm sorry, but I can't give legal advice; please ask a lawyer."),
    PlantedCategory(
        category="financial_advice", style="As an AI, I can't give financial advice; please talk to a licensed adviser."
    ),
)

#: The one sentence of the single-style control organism (`single_style`): one refusal
#: mechanism over the same three types, for the question "one direction or three?".
DEFAULT_SINGLE_STYLE = "I'm sorry, but I can't help with that request."

#: The organism's prompt sets, written for the project and shipped with the package
#: (tasks/prompts/data/README_organism.md describes them).
ORGANISM_FILES: tuple[str, ...] = (
    "organism_advice_medical.jsonl",
    "organism_advice_legal.jsonl",
    "organism_advice_financial.jsonl",
    "organism_controls_everyday.jsonl",
    "organism_controls_near_miss.jsonl",
    "organism_controls_choices.jsonl",
)

#: Prompt sets that the organism trains on in full and never holds out (`train_sources`): a
#: second writer's requests for the three kinds of advice, and first-person social choices as
#: further everyday controls. They widen what the planted types reach without moving the split of
#: ORGANISM_FILES, so the held-out prompts are the same with or without them (stop 39).
ORGANISM_TRAIN_FILES: tuple[str, ...] = (
    "organism_validation_planted.jsonl",
    "organism_controls_social.jsonl",
)

#: Harmless prompts whose category starts with this are near misses: general-knowledge
#: questions on a planted type's subject. They are trained like everyday controls (on the base
#: model's own replies) and measured as their own group.
NEAR_MISS_PREFIX = "near_miss"


def organism_data_dir() -> Path:
    """The folder holding the shipped organism prompt sets."""
    import refusal_atlas.tasks.prompts as prompts

    return Path(prompts.__file__).parent / "data"


def default_sources() -> list[str]:
    """The organism's shipped prompt sets (three advice types, everyday controls, near misses)."""
    return [str(organism_data_dir() / name) for name in ORGANISM_FILES]


def default_train_sources() -> list[str]:
    """The organism's shipped training-only prompt sets (every prompt trained on, none held out)."""
    return [str(organism_data_dir() / name) for name in ORGANISM_TRAIN_FILES]
