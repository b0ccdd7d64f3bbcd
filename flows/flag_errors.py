"""Pydantic's validation errors as one paragraph a person reads, each under the flag it is about.

flags: the `flags.Flag`s of the settings model (their `path`, `option` and `kind`).
"""

from __future__ import annotations

from pydantic import ValidationError


def validation_paragraph(err: ValidationError, flags: list) -> str:
    """Pydantic's errors as one paragraph, each under the flag that sets the value it is about."""
    by_path = {flag.path: flag for flag in flags}
    messages: dict[str, list[str]] = {}
    given: dict[str, str] = {}
    for error in err.errors(include_url=False):
        loc = tuple(error["loc"])
        cut = next((n for n in range(len(loc), 0, -1) if loc[:n] in by_path), 0)
        flag = by_path.get(loc[:cut])
        # A model validator's error (an empty location) is about the settings as a whole.
        where = flag.option if flag else ".".join(map(str, loc))
        # Below a scalar flag, pydantic's location names only the member of a union it tried
        # ("int", "literal['best']"), so the members' messages are joined with "or" instead.
        if flag is not None and flag.kind not in ("scalar", "bool") and loc[cut:]:
            where += " (" + ", ".join(f"item {p + 1}" if isinstance(p, int) else str(p) for p in loc[cut:]) + ")"
        message = error["msg"].removeprefix("Value error, ").rstrip(".")
        if message not in messages.setdefault(where, []):
            messages[where].append(message)
        if loc and isinstance(error.get("input"), str | int | float):
            given.setdefault(where, f" (given {error['input']!r})")
    reasons = (f"{where + ': ' if where else ''}{' or '.join(texts)}{given.get(where, '')}"
               for where, texts in messages.items())
    return "invalid settings: " + "; ".join(reasons) + "."
