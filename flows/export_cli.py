"""`refusal-atlas export`, `steer` and `abliterate`: directions that leave the atlas.

Each command is an object with configure_parser(parser) and main(args), mounted by cli.py's
loop over command modules. Building the parser imports nothing heavy; torch, transformers and
the store are imported when a command runs. A failure the user can fix (an unknown name, a
direction of another model, an existing output) ends in one message and exit status 2, with
nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace


def _user_errors() -> tuple[type[BaseException], ...]:
    from refusal_atlas.storage import StoreError
    from refusal_atlas.tasks.export.abliterate import AbliterationError
    from refusal_atlas.tasks.export.files import OutputExistsError
    from refusal_atlas.tasks.export.gguf_vectors import ControlVectorError
    from refusal_atlas.tasks.export.safetensors_vectors import DirectionFileError
    from refusal_atlas.tasks.export.selection import SelectionError
    from refusal_atlas.tasks.model.loading import ModelLoadError

    return (StoreError, AbliterationError, OutputExistsError, ControlVectorError, DirectionFileError,
            SelectionError, ModelLoadError, FileNotFoundError)


def _guarded(command: str, body):
    """Run body(args); turn an error the user can fix into one line on stderr and status 2."""

    def main(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except _user_errors() as err:
            print(f"refusal-atlas {command}: {err}", file=sys.stderr)
            return 2

    return main


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2",
                        help="Model to load: 'smollm2', a model directory, a .gguf file or a hub id (default: smollm2).")
    parser.add_argument("--gguf-file", default=None, help="GGUF file inside the model directory, if any.")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N' (default: auto).")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="Weights dtype; the model fingerprint includes it, so use the atlas's (default: auto).")
    parser.add_argument("--allow-other-model", action="store_true",
                        help="Accept directions whose model fingerprint differs from the loaded model's "
                        "(hidden size and layers are still checked).")


def _load(args: argparse.Namespace):
    from refusal_atlas.tasks.model.loading import load_model
    from refusal_atlas.tasks.settings import ModelSettings

    return load_model(ModelSettings(name=args.model, gguf_file=args.gguf_file, device=args.device, dtype=args.dtype))


# ----- export ---------------------------------------------------------------------------------

def _configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="Atlas store path or fsspec URL.")
    parser.add_argument("--direction", nargs="+", metavar="NAME", default=[],
                        help="Directions to export, by name; without it (or with --list) the names are listed.")
    parser.add_argument("--output", type=Path, help="New directory to write (never overwritten).")
    parser.add_argument("--alpha", type=float, default=None,
                        help="Length of strength 1.0 in units of the mean ||h_0|| at the layer "
                        "(default: the store's own alpha).")
    parser.add_argument("--model-hint", default=None,
                        help="controlvector.model_hint written for repeng (default: the store's model id).")
    parser.add_argument("--no-gguf", action="store_true", help="Write only the safetensors file (e.g. for layer 0).")
    parser.add_argument("--list", action="store_true", help="List the directions the store offers and stop.")


def _export(args: argparse.Namespace) -> int:
    from refusal_atlas.storage import AtlasStore
    from refusal_atlas.tasks.export.files import check_new_output, export_directions
    from refusal_atlas.tasks.export.selection import listing, select

    store = AtlasStore.open(args.store)
    if args.list or not args.direction:
        print(listing(store))
        return 0
    if args.output is None:
        print("refusal-atlas export: give --output DIR, a new directory for the files.", file=sys.stderr)
        return 2
    check_new_output(args.output)
    directions = [select(store, name, args.alpha) for name in args.direction]
    written = export_directions(store, directions, args.output, args.model_hint or store.spec.model_id,
                                gguf=not args.no_gguf)
    for direction in directions:
        print(f"{direction.name}: layer {direction.layer}, strength 1.0 adds {direction.alpha:g} x mean "
              f"||h_0|| {direction.mean_h0_norm:.4g} = {direction.scale:.4g} along the unit direction")
    print("wrote " + ", ".join(str(p) for p in written))
    if not args.no_gguf:
        first = directions[0]
        print(f"llama.cpp: --control-vector-scaled {args.output / (first.name + '.gguf')}:1.0 "
              f"(block {first.layer}'s output; strength 1.0 = alpha {first.alpha:g})")
    return 0


# ----- steer ----------------------------------------------------------------------------------

def _configure_steer(parser: argparse.ArgumentParser) -> None:
    _model_flags(parser)
    # One direction per flag (repeat it), so that the prompts after it are never taken for directions.
    parser.add_argument("--direction", action="append", required=True, metavar="FILE[:NAME]",
                        help="An exported direction: a .gguf control vector, or FILE.safetensors:NAME. Repeat "
                        "for several (add: each at its layer; ablate: their span).")
    parser.add_argument("--alpha", type=float, default=None,
                        help="add: each direction adds alpha x its recorded mean ||h_0|| along it at its layer "
                        "(default: its recorded alpha, i.e. llama.cpp strength 1.0). ablate: unused.")
    parser.add_argument("--mode", choices=["add", "ablate"], default="add",
                        help="add the directions at their layers, or ablate their span everywhere (default: add).")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="Tokens per greedy reply (default: 32).")
    parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="User messages to answer.")


def _steer(args: argparse.Namespace) -> int:
    from refusal_atlas.tasks.export.files import check_model, load_directions
    from refusal_atlas.tasks.export.steer import side_by_side, steer_prompts

    directions, info = load_directions(args.direction)
    loaded = _load(args)
    check_model(directions, info, loaded, args.allow_other_model)
    replies = steer_prompts(loaded, directions, args.prompts, args.alpha, args.mode, args.max_new_tokens)
    if args.mode == "add":
        what = "; ".join(f"{d.name} at layer {d.layer}, alpha {args.alpha if args.alpha is not None else d.alpha:g} "
                         f"(llama.cpp strength {(args.alpha / d.alpha) if args.alpha is not None else 1.0:g})"
                         for d in directions)
        what = f"add: {what}"
    else:
        what = "ablate the span of " + ", ".join(d.name for d in directions) + " at every layer and position"
    print(side_by_side(replies, what))
    return 0


# ----- abliterate -----------------------------------------------------------------------------

def _configure_abliterate(parser: argparse.ArgumentParser) -> None:
    _model_flags(parser)
    parser.add_argument("--direction", nargs="+", required=True, metavar="FILE[:NAME]",
                        help="Directions whose span is removed (orthonormalised first).")
    parser.add_argument("--output", type=Path, required=True, help="New Hugging Face model directory to write.")


def _abliterate(args: argparse.Namespace) -> int:
    from refusal_atlas.tasks.export.abliterate import write_abliterated
    from refusal_atlas.tasks.export.files import check_model, check_new_output, load_directions

    check_new_output(args.output)
    directions, info = load_directions(args.direction)
    loaded = _load(args)
    check_model(directions, info, loaded, args.allow_other_model)
    summary = write_abliterated(loaded, directions, info, args.output, args.model)
    untied = "; the tied LM head was untied first" if summary["untied_lm_head"] else ""
    print(f"wrote {args.output}: {len(summary['writers'])} matrices orthogonalised against a rank-"
          f"{summary['rank']} span{untied} (see {args.output / 'README.md'}). Load it with --model {args.output}.")
    return 0


# Each command in cli.py's shape: HELP, DESCRIPTION, configure_parser(parser) and main(args).
EXPORT = SimpleNamespace(
    HELP="Export store directions as llama.cpp control vectors and safetensors.",
    DESCRIPTION="Write chosen directions of an atlas store (listed without --direction) into a new directory.",
    configure_parser=_configure_export, main=_guarded("export", _export),
)
STEER = SimpleNamespace(
    HELP="Greedy replies with and without exported directions, side by side.",
    DESCRIPTION="Answer prompts with and without adding (or ablating) exported directions, with both judges' verdicts.",
    configure_parser=_configure_steer, main=_guarded("steer", _steer),
)
ABLITERATE = SimpleNamespace(
    HELP="Write a model orthogonalised against exported directions.",
    DESCRIPTION=("Write a new Hugging Face model directory whose residual-stream writers are orthogonalised "
                 "against the span of the directions, with a card saying what was removed."),
    configure_parser=_configure_abliterate, main=_guarded("abliterate", _abliterate),
)
