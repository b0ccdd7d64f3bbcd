"""Rendering prompts with the model's chat template, and finding the position h is read at.

A prompt is rendered as one user turn with the generation prompt added, exactly as a chat
front end would send it, and tokenised without adding special tokens again (templates write
their own BOS). Refusal phrases are tokenised the way the reply really begins: as the tail of
`rendered prompt + phrase`, so that a leading space or a merge with the header's last
character is what the model would actually emit.
"""

from __future__ import annotations

from dataclasses import dataclass

from refusal_atlas.tasks.settings import Position


def pad_id(tokenizer) -> int:
    """The token id that pads batches: the tokenizer's pad token, else its EOS, else 0. Padded
    positions are masked out, so any id works; these keep it one the model knows."""
    return next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)


class ChatTemplateError(ValueError):
    """The chat template cannot render a prompt the way the settings ask."""


class PromptTooLongError(ValueError):
    """A rendered prompt does not fit in the model's context."""


@dataclass(frozen=True)
class RenderedPrompt:
    """Token ids of a rendered prompt and the index at which h is read."""

    input_ids: tuple[int, ...]
    position: int

    def __post_init__(self) -> None:
        if not 0 <= self.position < len(self.input_ids):
            raise ValueError(f"position {self.position} outside a prompt of {len(self.input_ids)} tokens")


def render_text(tokenizer, chat_template: str, text: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        chat_template=chat_template,
        add_generation_prompt=True,
        tokenize=False,
    )


def render_prompt(
    tokenizer,
    chat_template: str,
    text: str,
    position: Position = "last_prompt_token",
    max_length: int | None = None,
) -> RenderedPrompt:
    """Render one user message and locate h's position.

    `instruction_end` is the last token that overlaps the user's text, found through the fast
    tokenizer's character offsets; it needs the text to appear verbatim in the rendering.
    """
    rendered = render_text(tokenizer, chat_template, text)
    want_offsets = position == "instruction_end"
    if want_offsets and not getattr(tokenizer, "is_fast", False):
        raise ChatTemplateError(
            "position 'instruction_end' needs a fast tokenizer (character offsets); "
            "use position 'last_prompt_token' with this model."
        )
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=want_offsets)
    ids = tuple(int(i) for i in encoded["input_ids"])
    if max_length is not None and len(ids) > max_length:
        raise PromptTooLongError(
            f"The rendered prompt has {len(ids)} tokens, more than the model's context of "
            f"{max_length}. Shorten or drop it (it begins {text[:60]!r})."
        )
    if position == "last_prompt_token":
        return RenderedPrompt(ids, len(ids) - 1)
    start = rendered.rfind(text)
    if start < 0:
        raise ChatTemplateError(
            "position 'instruction_end' needs the user's text verbatim in the rendered prompt, "
            "but this chat template changes it; use position 'last_prompt_token'."
        )
    end = start + len(text)
    inside = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > start]
    if not inside:
        raise ChatTemplateError("no token of the rendered prompt overlaps the user's text")
    return RenderedPrompt(ids, inside[-1])


def phrase_token_ids(tokenizer, chat_template: str, phrase: str) -> tuple[int, ...]:
    """Token ids of a refusal phrase as the first words of the assistant's reply.

    The assistant header ends the same way for every prompt, so a probe prompt stands in for
    all of them. When tokenising the joined string changes the header's own tokens (a merge
    across the boundary), the phrase is tokenised alone instead, with any BOS removed.
    """
    header = render_text(tokenizer, chat_template, "Hello.")
    head_ids = tokenizer(header, add_special_tokens=False)["input_ids"]
    joined_ids = tokenizer(header + phrase, add_special_tokens=False)["input_ids"]
    if list(joined_ids[: len(head_ids)]) == list(head_ids) and len(joined_ids) > len(head_ids):
        ids = joined_ids[len(head_ids):]
    else:
        ids = tokenizer(phrase, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    if ids and bos is not None and ids[0] == bos:
        ids = ids[1:]
    if not ids:
        raise ChatTemplateError(f"refusal phrase {phrase!r} tokenises to nothing")
    return tuple(int(i) for i in ids)
