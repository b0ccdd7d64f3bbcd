"""Prompt loading: the record, ids, source specs, formats, the default set and every bad input."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import pytest

from refusal_atlas.tasks.prompts.records import (
    Prompt,
    PromptFileError,
    PromptSource,
    default_prompts_path,
    load_prompts,
    parse_source,
    prompt_id,
    text_sha256,
)

# The prompt sets that ship with the repository for tests and benchmarks.
DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"

# Rows and category counts as benchmarks/data/SOURCES.md states them.
DATA_FILES = {
    "jailbreakbench_harmful.jsonl": (100, "harmful", 10),
    "strongreject_harmful.jsonl": (313, "harmful", 6),
    "harmbench_val_harmful.jsonl": (41, "harmful", 6),
    "advbench_harmful.jsonl": (520, "harmful", 0),
    "harmless_everyday.jsonl": (100, "harmless", 0),
}


def write(tmp_path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def load_error(source) -> str:
    with pytest.raises(PromptFileError) as info:
        load_prompts([source])
    return str(info.value)


# --- ids and the record -------------------------------------------------------------------------


def test_prompt_id_is_a_stable_prefix_of_the_stripped_text_hash():
    assert text_sha256("hello") == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert prompt_id("hello") == text_sha256("hello")[:16]
    assert prompt_id("  hello\n") == prompt_id("hello")
    assert re.fullmatch(r"[0-9a-f]{16}", prompt_id("é ✓ 漢字"))


def test_prompt_create_strips_and_checks_its_invariants():
    prompt = Prompt.create("  Write a poem. \n", "harmless")
    assert prompt.text == "Write a poem." and prompt.id == prompt_id("Write a poem.")
    assert prompt.sha256 == text_sha256("Write a poem.")
    with pytest.raises(ValueError, match="content hash"):
        Prompt("0" * 16, "Write a poem.")
    with pytest.raises(ValueError, match="stripped"):
        Prompt(prompt_id(" x "), " x ")
    with pytest.raises(ValueError, match="unknown label"):
        Prompt.create("x", "evil")
    with pytest.raises(Exception):
        prompt.text = "changed"  # frozen


# --- source specs -------------------------------------------------------------------------------


def test_parse_source_reads_path_and_options():
    assert parse_source("prompts.txt") == PromptSource(path="prompts.txt")
    spec = parse_source("benchmarks/data/advbench_harmful.jsonl#limit=200&seed=0")
    assert (spec.path, spec.limit, spec.seed, spec.label) == ("benchmarks/data/advbench_harmful.jsonl", 200, 0, None)
    spec = parse_source("p.txt#label=harmless&category=my%20set&format=txt")
    assert (spec.label, spec.category, spec.format) == ("harmless", "my set", "txt")
    assert parse_source("p.txt#label=").label == ""


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("p.txt#lmit=3", r"unknown option 'lmit'; allowed options: label, limit, seed, category, format"),
        ("p.txt#limit=abc", r"limit='abc'"),
        ("p.txt#limit=0", r"greater than or equal to 1"),
        ("p.txt#label=bad", r"'harmful', 'harmless' or ''"),
        ("p.txt#limit=1&limit=2", r"'limit' is given twice"),
        ("odd#name.txt", r"key=value pairs .* end the spec with '#'"),
        ("#limit=3", r"path is empty"),
    ],
)
def test_parse_source_rejects_bad_specs_with_the_fix(spec, expected):
    with pytest.raises(PromptFileError, match=expected):
        parse_source(spec)


def test_a_path_with_a_hash_is_written_with_a_final_hash():
    assert parse_source("odd#name.txt#").path == "odd#name.txt"
    source = PromptSource(path="odd#name.txt", limit=5, seed=3, category="a&b=c")
    assert parse_source(source.to_spec()) == source
    assert parse_source(PromptSource(path="odd#name.txt").to_spec()).path == "odd#name.txt"


def test_every_source_field_is_described_for_the_settings_form():
    for name, info in PromptSource.model_fields.items():
        assert info.description, name


# --- formats ------------------------------------------------------------------------------------


def test_jsonl_round_trip_keeps_fields_and_applies_defaults(tmp_path):
    path = write(
        tmp_path,
        "p.jsonl",
        jsonl(
            {"prompt": " Write a poem. ", "label": "harmless", "category": None, "source": "mine"},
            {"prompt": "Build a bomb.", "label": "harmful", "category": "weapons", "extra": 1},
            {"prompt": "Unlabelled one."},
        ),
    )
    prompts = load_prompts([f"{path}#category=misc"]).prompts
    assert [(p.text, p.label, p.category, p.source) for p in prompts] == [
        ("Write a poem.", "harmless", "misc", "mine"),
        ("Build a bomb.", "harmful", "weapons", f"{path}"),
        ("Unlabelled one.", "", "misc", f"{path}"),
    ]
    assert prompts[1].origin == f"{path}:2"


def test_csv_round_trip_with_quoted_commas_quotes_and_newlines(tmp_path):
    rows = [("Hello, world", "harmless", "", ""), ('Say "hi"\nthen leave', "harmful", "x", "src")]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Prompt", "label", "category", "source"])
    writer.writerows(rows)
    path = write(tmp_path, "p.csv", "\ufeff" + buffer.getvalue())  # with a spreadsheet's BOM
    prompts = load_prompts([path]).prompts
    assert [(p.text, p.label, p.category, p.source) for p in prompts] == [
        ("Hello, world", "harmless", None, path),
        ('Say "hi"\nthen leave', "harmful", "x", "src"),
    ]
    assert prompts[1].origin == f"{path}:3"


def test_tsv_and_txt_round_trip(tmp_path):
    tsv = write(tmp_path, "p.tsv", "prompt\tlabel\nOne, two\tharmless\n")
    assert load_prompts([tsv]).prompts[0].text == "One, two"
    txt = write(tmp_path, "p.txt", "First prompt\r\n  Second prompt  \nThird\u2028still third\n")
    prompts = load_prompts([f"{txt}#label=harmless"]).prompts
    assert [p.text for p in prompts] == ["First prompt", "Second prompt", "Third\u2028still third"]
    assert {p.label for p in prompts} == {"harmless"}


def test_gzip_and_memory_urls(tmp_path):
    path = write(tmp_path, "p.jsonl.gz", gzip.compress(jsonl({"prompt": "zipped"}).encode()))
    assert load_prompts([path]).texts == ("zipped",)
    url = f"memory://prompts-{uuid.uuid4().hex}/p.txt"
    with fsspec.open(url, "w") as handle:
        handle.write("from memory\n")
    try:
        prompt_set = load_prompts([f"{url}#label=harmful"])
        assert prompt_set.texts == ("from memory",) and prompt_set.prompts[0].label == "harmful"
        assert "memory://" in load_error(url.replace("p.txt", "missing.txt"))
    finally:
        fsspec.filesystem("memory").rm(url)


def test_format_option_reads_a_file_without_a_known_suffix(tmp_path):
    path = write(tmp_path, "prompts.data", jsonl({"prompt": "x"}))
    assert load_prompts([f"{path}#format=jsonl"]).texts == ("x",)


# --- duplicates, blanks, samples and the report --------------------------------------------------


def test_duplicates_are_dropped_in_first_seen_order_and_counted(tmp_path):
    first = write(tmp_path, "a.jsonl", jsonl({"prompt": "b", "category": "one"}, {"prompt": "a"}, {"prompt": " b "}))
    second = write(tmp_path, "b.txt", "c\n\n   \na\nb\n")
    prompt_set = load_prompts([first, second])
    assert prompt_set.texts == ("b", "a", "c")
    assert prompt_set.prompts[0].category == "one"  # the first occurrence wins
    a_report, b_report = prompt_set.report.sources
    assert (a_report.read, a_report.kept, a_report.duplicates, a_report.blank_lines) == (3, 2, 1, 0)
    assert (b_report.read, b_report.kept, b_report.duplicates, b_report.blank_lines) == (3, 1, 2, 2)
    assert (prompt_set.report.duplicates_dropped, prompt_set.report.blank_lines_skipped) == (3, 2)
    assert "3 duplicates dropped, 2 blank lines skipped" in prompt_set.report.summary()


def test_blank_jsonl_lines_are_skipped_and_counted(tmp_path):
    path = write(tmp_path, "p.jsonl", "\n" + jsonl({"prompt": "x"}) + "  \t \r\n" + jsonl({"prompt": "y"}))
    prompt_set = load_prompts([path])
    assert prompt_set.texts == ("x", "y") and prompt_set.report.blank_lines_skipped == 2


def test_a_single_source_may_be_given_on_its_own(tmp_path):
    path = write(tmp_path, "p.txt", "x\n")
    assert load_prompts(path).texts == load_prompts(PromptSource(path=path)).texts == ("x",)


def test_limit_and_seed_give_a_deterministic_sample_in_file_order():
    advbench = DATA / "advbench_harmful.jsonl"
    first = load_prompts([f"{advbench}#limit=200&seed=0"])
    again = load_prompts([f"{advbench}#limit=200&seed=0"])
    other = load_prompts([f"{advbench}#limit=200&seed=1"])
    assert len(first) == 200 and first.ids == again.ids and set(first.ids) != set(other.ids)
    everything = load_prompts([str(advbench)]).ids
    positions = [everything.index(i) for i in first.ids]
    assert positions == sorted(positions) and positions != list(range(200))  # a sample, not the head
    report = first.report.sources[0]
    assert (report.read, report.distinct, report.sampled, report.kept) == (520, 520, 200, 200)


def test_a_limit_above_the_file_size_takes_everything(tmp_path):
    path = write(tmp_path, "p.txt", "a\nb\nc\n")
    assert load_prompts([f"{path}#limit=10&seed=4"]).texts == ("a", "b", "c")


# --- the default set and the shipped benchmark data ----------------------------------------------


def test_the_default_set_is_large_labelled_and_categorised():
    prompt_set = load_prompts(["default"])
    harmful, harmless = prompt_set.with_label("harmful"), prompt_set.with_label("harmless")
    categories = Counter(p.category for p in harmful)
    assert len(harmful) >= 120 and len(harmless) >= 120
    assert len(categories) >= 6 and min(categories.values()) >= 15 and None not in categories
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", c) for c in categories)
    assert all(p.category is None for p in harmless)
    assert len(set(prompt_set.ids)) == len(prompt_set) == prompt_set.report.read
    assert prompt_set.report.duplicates_dropped == 0 and prompt_set.report.blank_lines_skipped == 0
    assert {p.source for p in prompt_set} == {"refusal-atlas default set (Apache-2.0)"}
    # The file has exactly the benchmark data's fields, so any tool that reads one reads the other.
    with default_prompts_path().open(encoding="utf-8") as handle:
        assert all(set(json.loads(line)) == {"prompt", "label", "category", "source"} for line in handle)


def test_the_default_set_is_not_copied_from_the_benchmark_data():
    shipped = {p.id for name in DATA_FILES for p in load_prompts([str(DATA / name)])}
    assert not shipped & set(load_prompts(["default"]).ids)


@pytest.mark.parametrize("name", sorted(DATA_FILES))
def test_the_benchmark_data_files_load_with_their_documented_counts(name):
    rows, label, categories = DATA_FILES[name]
    prompt_set = load_prompts([str(DATA / name)])
    assert len(prompt_set) == rows and prompt_set.report.duplicates_dropped == 0
    assert {p.label for p in prompt_set} == {label}
    assert len({p.category for p in prompt_set} - {None}) == categories


def test_every_benchmark_data_file_is_listed_with_its_licence():
    sources = (DATA / "SOURCES.md").read_text(encoding="utf-8")
    assert {p.name for p in DATA.glob("*.jsonl")} == set(DATA_FILES)
    for name in DATA_FILES:
        assert f"| {name} |" in sources, name
    for licence in re.findall(r"\((LICENSES/[^)]+)\)", sources):
        assert (DATA / licence).is_file(), licence
    assert "alpaca" not in " ".join(DATA_FILES)  # CC BY-NC: not redistributable here


# --- bad input: each error names the file, the line, the problem and the fix ----------------------


def test_missing_file(tmp_path):
    message = load_error(str(tmp_path / "nope.jsonl"))
    assert "nope.jsonl" in message and "not found" in message and "Check the path" in message


def test_a_directory_is_not_a_prompt_file(tmp_path):
    (tmp_path / "dir.txt").mkdir()
    assert "is a directory" in load_error(str(tmp_path / "dir.txt"))


@pytest.mark.parametrize(
    ("name", "content", "blank"),
    [("e.jsonl", "", 0), ("e.txt", "\n  \n\n", 3), ("e.csv", "prompt,label\n", 0)],
)
def test_empty_files_have_no_prompts(tmp_path, name, content, blank):
    message = load_error(write(tmp_path, name, content))
    assert name in message and f"contains no prompts ({blank} blank lines)" in message


def test_bytes_that_are_not_utf8_name_the_line_and_offset(tmp_path):
    path = write(tmp_path, "p.txt", b"fine\ncaf\xe9 au lait\n")
    message = load_error(path)
    assert "p.txt: line 2" in message and "byte 0xe9 at byte offset 3 of the line, 8 of the file" in message
    assert "UTF-8" in message and "iconv" in message


def test_malformed_json_names_the_line_and_what_json_said(tmp_path):
    path = write(tmp_path, "p.jsonl", jsonl({"prompt": "ok"}) + '{"prompt": "unterminated}\n')
    message = load_error(path)
    assert "p.jsonl: line 2: not valid JSON (Unterminated string starting at: column 12)" in message
    assert "exactly one JSON object" in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('["a list"]', r"line 1: is a JSON array, not an object"),
        ('"just a string"', r"line 1: is a JSON string, not an object"),
        ('{"text": "no prompt"}', r"line 1: has no \"prompt\" field \(fields present: 'text'\)"),
        ('{"prompt": 3}', r"line 1: \"prompt\" is a number, not a string"),
        ('{"prompt": null}', r"line 1: \"prompt\" is a null, not a string"),
        ('{"prompt": "   \\t "}', r"line 1: the prompt text is empty or only whitespace"),
        ('{"prompt": "x", "label": "nasty"}', r"line 1: unknown label 'nasty'. Allowed labels: 'harmful', 'harmless'"),
        ('{"prompt": "x", "label": 1}', r"line 1: \"label\" is a number; it must be a string or null"),
        ('{"prompt": "x", "prompt": "y"}', r"line 1: the key 'prompt' appears twice"),
        ("[" * 100_000, r"line 1: not usable JSON \(RecursionError"),
    ],
)
def test_bad_jsonl_records(tmp_path, line, expected):
    assert re.search(expected, load_error(write(tmp_path, "p.jsonl", line + "\n")))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("text,label\nx,harmful\n", r"line 1: the header row has no \"prompt\" column"),
        ("prompt,label\nx,harmful\n  ,harmless\n", r"line 3: the prompt text is empty or only whitespace"),
        ("prompt,label\nx,maybe\n", r"line 2: unknown label 'maybe'"),
        ("label,prompt\nharmful\n", r"line 2: the prompt text is empty or only whitespace"),
        ("prompt,label\na, b, c,harmful\n", r"line 2: the row has 4 cells but the header names 2 columns"),
        ('prompt\n"a"b"\n', r"line 2: not valid CSV \(',' expected after '\"'\)"),
        ('prompt\nfine\n"never closed\n\n', r"lines 3-4: not valid CSV \(unexpected end of data\)"),
        ("prompt,prompt\nx,y\n", r"line 1: the header names the columns \['prompt'\] more than once"),
    ],
)
def test_bad_csv_records(tmp_path, content, expected):
    message = load_error(write(tmp_path, "p.csv", content))
    assert re.search(expected, message) and "p.csv" in message


def test_unknown_suffix(tmp_path):
    message = load_error(write(tmp_path, "p.xlsx", "x"))
    assert "unknown prompt file type '.xlsx'" in message and ".jsonl" in message and "#format=jsonl" in message


def test_a_duplicate_with_another_label_is_an_error_naming_both_places(tmp_path):
    first = write(tmp_path, "a.jsonl", jsonl({"prompt": "x", "label": "harmful"}))
    second = write(tmp_path, "b.jsonl", jsonl({"prompt": "y"}, {"prompt": " x", "label": "harmless"}))
    with pytest.raises(PromptFileError) as info:
        load_prompts([first, second])
    message = str(info.value)
    assert f"'harmful' at {first}:1" in message and f"'harmless' at {second}:2" in message
    assert "cannot carry two labels" in message


def test_a_record_label_that_contradicts_the_source_label_is_an_error(tmp_path):
    path = write(tmp_path, "a.jsonl", jsonl({"prompt": "x"}, {"prompt": "y", "label": "harmful"}))
    message = load_error(f"{path}#label=harmless")
    assert "a.jsonl: line 2" in message and "contradicts the source's label='harmless'" in message


def test_no_sources_is_an_error():
    with pytest.raises(PromptFileError, match="no prompt sources given"):
        load_prompts([])
