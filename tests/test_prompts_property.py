"""Property tests of the prompt loaders: what goes in comes out, and bad bytes fail cleanly.

Files are written to fsspec's in-memory filesystem, which keeps the examples fast and exercises
the URL path of the loaders at the same time.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from refusal_atlas.tasks.prompts.records import PromptFileError, PromptSource, load_prompts, parse_source, prompt_id

# Any character UTF-8 can encode (surrogates cannot be), so unicode of every kind is tried.
CHARACTERS = st.characters(exclude_categories=("Cs",))
TEXTS = st.text(CHARACTERS, min_size=1, max_size=30).filter(lambda text: text.strip())
PADDING = st.sampled_from(["", " ", "  ", "\t", "\xa0", "\u3000", " \t "])

# Lists drawn from a small pool, so that the same text (with other padding) comes up again.
PROMPT_LISTS = st.lists(TEXTS, min_size=1, max_size=8).flatmap(
    lambda pool: st.lists(
        st.tuples(PADDING, st.sampled_from(pool), PADDING).map("".join), min_size=1, max_size=25
    )
)


@contextmanager
def memory_dir() -> Iterator[str]:
    """A fresh in-memory folder for one example (a fixture would be shared by all examples)."""
    root = f"memory://prompt-props-{uuid.uuid4().hex}"
    try:
        yield root
    finally:
        filesystem = fsspec.filesystem("memory")
        if filesystem.exists(root):
            filesystem.rm(root, recursive=True)


def put(url: str, data: bytes) -> str:
    with fsspec.open(url, "wb") as handle:
        handle.write(data)
    return url


def as_jsonl(texts: list[str], ascii_only: bool) -> bytes:
    return "".join(json.dumps({"prompt": t}, ensure_ascii=ascii_only) + "\n" for t in texts).encode()


def as_csv(texts: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["prompt"])
    writer.writerows([t] for t in texts)
    return buffer.getvalue().encode()


def as_txt(texts: list[str]) -> bytes:
    return "".join(t + "\n" for t in texts).encode()


def expected(texts: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.strip() for t in texts))


def writable(texts: list[str], name: str) -> bool:
    """Whether ``texts`` can be written to a file called ``name`` and read back as they are."""
    if not name.endswith(".txt"):
        return True
    # One prompt a line cannot hold a line break, and a byte order mark at the very start of a
    # file is dropped as an encoding marker (stated behaviour).
    return not any("\n" in t for t in texts) and not texts[0].startswith("\ufeff")


@pytest.mark.integration
@settings(max_examples=900, deadline=None)
@given(texts=PROMPT_LISTS, name=st.sampled_from(["p.jsonl", "p.csv", "p.txt"]), ascii_only=st.booleans())
def test_loading_gives_back_the_stripped_distinct_texts_in_first_seen_order(texts, name, ascii_only):
    assume(writable(texts, name))
    data = {"p.jsonl": as_jsonl(texts, ascii_only), "p.csv": as_csv(texts), "p.txt": as_txt(texts)}[name]
    with memory_dir() as root:
        url = put(f"{root}/{name}", data)
        prompt_set = load_prompts([url])
        assert prompt_set.texts == expected(texts)
        assert prompt_set.ids == tuple(prompt_id(t) for t in expected(texts))
        assert prompt_set.report.duplicates_dropped == len(texts) - len(expected(texts))
        assert prompt_set.report.blank_lines_skipped == 0


@settings(max_examples=100, deadline=None)
@given(texts=PROMPT_LISTS)
def test_every_format_gives_the_same_ids(texts):
    assume(writable(texts, "p.txt"))
    with memory_dir() as root:
        urls = [
            put(f"{root}/p.jsonl.gz", gzip.compress(as_jsonl(texts, ascii_only=False))),
            put(f"{root}/p.csv", as_csv(texts)),
            put(f"{root}/p.txt", as_txt(texts)),
        ]
        ids = {load_prompts([url]).ids for url in urls}
        assert ids == {tuple(prompt_id(t) for t in expected(texts))}
        # Reading the same texts from several sources adds nothing: all of them are duplicates.
        merged = load_prompts(urls)
        assert merged.ids == ids.pop() and merged.report.duplicates_dropped == 3 * len(texts) - len(merged)


# Fragments that make near-valid files, which reach deeper into the parsers than noise does.
FRAGMENTS = st.sampled_from(
    [b'{"prompt": "x"}', b'{"prompt": ', b'"label": "harmful"', b'"', b",", b"\n", b"\r", b"\xff",
     b"{}", b"[", b"]", b"prompt", b"label\n", b" ", b"\xe2\x80\xa8", b"\x00", b"\\", b"null", b"\xef\xbb\xbf"]
)
BYTES = st.one_of(st.binary(max_size=300), st.lists(FRAGMENTS, max_size=40).map(b"".join))


@pytest.mark.integration
@settings(max_examples=1000, deadline=None)
@given(data=BYTES, name=st.sampled_from(["p.jsonl", "p.csv", "p.tsv", "p.txt", "p.jsonl.gz", "p.txt.gz"]),
       compress=st.booleans())
def test_arbitrary_bytes_load_or_raise_prompt_file_error(data, name, compress):
    with memory_dir() as root:
        if name.endswith(".gz") and compress:
            data = gzip.compress(data)
        url = put(f"{root}/{name}", data)
        try:
            prompt_set = load_prompts([url])
        except PromptFileError as error:
            event(f"PromptFileError: {str(error).split(': ', 2)[-1].split(' (')[0][:40]}")
            assert url in str(error)
        else:
            event("loaded")
            assert len(prompt_set) >= 1 and all(p.text == p.text.strip() and p.text for p in prompt_set)


SOURCES = st.builds(
    PromptSource,
    path=st.text(CHARACTERS, min_size=1, max_size=20).filter(lambda p: p == p.strip() and p),
    label=st.sampled_from([None, "harmful", "harmless", ""]),
    limit=st.none() | st.integers(1, 10**6),
    seed=st.integers(-(10**6), 10**6),
    category=st.none() | st.text(CHARACTERS, max_size=12),
    format=st.sampled_from([None, "jsonl", "csv", "tsv", "txt"]),
)


@settings(max_examples=300, deadline=None)
@given(source=SOURCES)
def test_source_specs_round_trip_through_their_cli_form(source):
    assert parse_source(source.to_spec()) == source


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(TEXTS, min_size=1, max_size=40),
       limit=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_samples_are_deterministic_subsets_in_file_order(texts, limit, seed):
    assume(writable(texts, "p.txt"))
    with memory_dir() as root:
        url = put(f"{root}/p.txt", as_txt(texts))
        full = load_prompts([url]).ids
        sample = load_prompts([f"{url}#limit={limit}&seed={seed}"]).ids
        assert len(sample) == min(limit, len(full))
        assert [i for i in full if i in set(sample)] == list(sample)
        assert load_prompts([f"{url}#limit={limit}&seed={seed}"]).ids == sample
