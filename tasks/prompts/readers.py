"""Reading prompt files: bytes in, validated raw records out.

One reader per format (JSON Lines, CSV or TSV, plain text). Readers know nothing about ids,
deduplication or sampling (``tasks.prompts`` does that): they turn one file into records, each
with its line number, and refuse anything they cannot read with a ``PromptFileError`` that names
the file, the line, the problem and the fix. No record is ever skipped silently; the only thing
skipped is a blank line (empty or whitespace only), and those are counted.
"""

from __future__ import annotations

import csv
import io
import json
import os

import fsspec
from fsspec.utils import infer_compression

from refusal_atlas.tasks.prompts.raw import FileContents, PromptFileError, RawRecord, json_type, record_from_fields

# File name suffix -> format. ".json" is read as JSON Lines too, because that is what the
# shared data sets and most prompt dumps called ".json" are.
SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "txt",
}
FORMATS = ("jsonl", "csv", "tsv", "txt")

_JSONL_EXAMPLE = '{"prompt": "Write a haiku about rain.", "label": "harmless"}'


def detect_format(path: str) -> str:
    """The format of ``path`` from its suffix, looking through a compression suffix (.gz, ...)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if infer_compression(name):
        name = name.rsplit(".", 1)[0]
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix not in SUFFIX_FORMATS:
        known = ", ".join(SUFFIX_FORMATS)
        raise PromptFileError(
            f"{path}: unknown prompt file type {suffix or '(no suffix)'!r}. Use one of {known} "
            f"(optionally compressed, e.g. .jsonl.gz), or name the format in the source spec, "
            f"e.g. '{path}#format=jsonl'."
        )
    return SUFFIX_FORMATS[suffix]


def read_prompt_file(path: str, fmt: str | None = None) -> FileContents:
    """Read and validate every record of the prompt file at ``path`` (local path or fsspec URL).

    ``fmt`` is one of FORMATS; None chooses it from the file suffix. Blank lines (empty or
    whitespace only) in .jsonl and .txt files, and rows whose cells are all blank in .csv files,
    are skipped and counted; everything else is either a valid record or a PromptFileError.
    An empty result is returned as such: the caller decides that "no prompts" is an error.
    """
    fmt = fmt or detect_format(path)
    text = _decode(_read_bytes(path), path)
    if fmt == "jsonl":
        return _read_jsonl(text, path)
    if fmt in ("csv", "tsv"):
        return _read_csv(text, path, delimiter="," if fmt == "csv" else "\t")
    if fmt == "txt":
        return _read_txt(text, path)
    raise PromptFileError(f"{path}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")


def _read_bytes(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb", compression="infer") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        where = f" (relative paths are taken from {os.getcwd()})" if "://" not in path else ""
        raise PromptFileError(
            f"{path}: prompt file not found. Check the path or URL{where}."
        ) from exc
    except IsADirectoryError as exc:
        raise PromptFileError(f"{path}: is a directory; give the path of a prompt file in it.") from exc
    except PermissionError as exc:
        raise PromptFileError(f"{path}: permission denied; make the file readable.") from exc
    except Exception as exc:
        # fsspec backends and decompressors raise their own exception types (gzip, zlib, lzma,
        # botocore, ...), so anything else is reported with its type and chained, not guessed at.
        raise PromptFileError(
            f"{path}: cannot be read ({type(exc).__name__}: {exc}). Check that the file is "
            f"complete, that its compression matches its suffix, and that the URL's filesystem "
            f"is installed."
        ) from exc


def _decode(data: bytes, path: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1)
        raise PromptFileError(
            f"{path}: line {line}: bytes are not valid UTF-8 (byte 0x{data[exc.start]:02x} at byte "
            f"offset {column} of the line, {exc.start} of the file: {exc.reason}). Save the file "
            f"as UTF-8, e.g. `iconv -f LATIN1 -t UTF-8 in.txt > out.txt`."
        ) from exc
    # Spreadsheet programs often start UTF-8 files with a byte order mark; it is not prompt text.
    return text.removeprefix("\ufeff")


def _lines(text: str) -> list[str]:
    # Split on "\n" only (with "\r\n" tolerated): str.splitlines would also split inside a JSON
    # string or a prompt at characters such as U+2028 or form feed, which are legitimate text.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _read_txt(text: str, path: str) -> FileContents:
    records, blank = [], 0
    for number, line in enumerate(_lines(text), start=1):
        stripped = line.strip()
        if not stripped:
            blank += 1
            continue
        records.append(RawRecord(number, stripped, None, None, None))
    return FileContents(tuple(records), blank)


class _DuplicateKeyError(ValueError):
    pass


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of repeated keys silently; for a "prompt" or "label" that would
    # hide which value the author meant, so a repeated key is an error.
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(key)
        obj[key] = value
    return obj


def _read_jsonl(text: str, path: str) -> FileContents:
    records, blank = [], 0
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            blank += 1
            continue
        where = f"{path}: line {number}"
        try:
            obj = json.loads(line, object_pairs_hook=_reject_duplicate_keys)
        except _DuplicateKeyError as exc:
            raise PromptFileError(
                f"{where}: the key {exc.args[0]!r} appears twice in one object; keep one."
            ) from exc
        except json.JSONDecodeError as exc:
            raise PromptFileError(
                f"{where}: not valid JSON ({exc.msg}: column {exc.colno}). Each line must hold "
                f"exactly one JSON object, e.g. {_JSONL_EXAMPLE}."
            ) from exc
        except (ValueError, RecursionError) as exc:
            # Numbers too long to convert and absurdly deep nesting land here.
            raise PromptFileError(f"{where}: not usable JSON ({type(exc).__name__}: {exc}).") from exc
        if not isinstance(obj, dict):
            raise PromptFileError(
                f"{where}: is a JSON {json_type(obj)}, not an object. Each line must hold one "
                f"object with a \"prompt\" field, e.g. {_JSONL_EXAMPLE}."
            )
        if "prompt" not in obj:
            fields = ", ".join(repr(key) for key in obj) or "none"
            raise PromptFileError(
                f"{where}: has no \"prompt\" field (fields present: {fields}). Put the prompt "
                f"text under \"prompt\"."
            )
        records.append(record_from_fields(where, number, obj))
    return FileContents(tuple(records), blank)


def _read_csv(text: str, path: str, delimiter: str) -> FileContents:
    # Strict mode makes a stray or unterminated quote an error; otherwise the csv module would
    # quietly run the rest of the file into one prompt.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records, blank, header = [], 0, None
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # A quoted cell may span lines, so name the line where the record began as well.
            lines = f"line {start}" if reader.line_num <= start else f"lines {start}-{reader.line_num}"
            raise PromptFileError(
                f"{path}: {lines}: not valid CSV ({exc}). Quote cells that hold the delimiter, "
                f"quotes or line breaks, double the quotes inside quoted cells, and close every "
                f"quoted cell."
            ) from exc
        if not any(cell.strip() for cell in row):
            blank += 1
            continue
        where = f"{path}: line {start}"
        if header is None:
            header = _csv_header(row, where)
            continue
        if len(row) > len(header):
            raise PromptFileError(
                f"{where}: the row has {len(row)} cells but the header names {len(header)} "
                f"columns. Quote cells that contain the delimiter {delimiter!r}."
            )
        # A short row leaves its last cells empty (spreadsheets drop trailing empty cells), so an
        # absent prompt cell is an empty prompt, reported as such.
        row = row + [""] * (len(header) - len(row))
        records.append(record_from_fields(where, start, dict(zip(header, row))))
    return FileContents(tuple(records), blank)


def _csv_header(row: list[str], where: str) -> list[str]:
    header = [cell.strip().lower() for cell in row]
    if "prompt" not in header:
        raise PromptFileError(
            f"{where}: the header row has no \"prompt\" column (columns: {row}). The first row "
            f"must name the columns, one of them \"prompt\" (optional: label, category, source)."
        )
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise PromptFileError(f"{where}: the header names the columns {repeated} more than once.")
    return header
