"""Bad model settings and bad inputs through `refusal-atlas run`: refused before any work, in one
clear paragraph (no traceback, no retry), with nothing written.

The loader's own checks (unknown path or hub id, a missing GGUF file, no chat template and how
to supply one, trust_remote_code) are tested in test_models.py, and the prompt loaders' in
test_prompts.py; here the same failures are followed through the flow and the command line.
"""

from __future__ import annotations

import dataclasses

import pytest
import robustness_support as support

from refusal_atlas.flows.cli import main
from tests.tiny import CHATML

# A template that rewrites the user's text (upper case): there is no 'instruction_end' in it.
SHOUTING = CHATML.replace("message['content']", "message['content'] | upper")


def _files(tmp_path) -> set[str]:
    return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}


def _run_refused(argv: list[str], tmp_path, capsys) -> tuple[int, str]:
    """Run the command in-process; its exit code and what it printed, checking nothing was created.

    (Prefect's own console log is not seen here: its handler writes to the stream it found when
    logging was set up. The subprocess test below reads the whole output of the real command.)
    """
    before = _files(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert _files(tmp_path) == before, f"a refused run wrote files: {sorted(_files(tmp_path) - before)}"
    return code, err


def _layers_99(argv: list[str]) -> list[str]:
    at = argv.index("--layers")
    return [*argv[: at + 1], "1", "99", *argv[at + 3:]]


@pytest.mark.integration
def test_layer_out_of_range_is_refused_before_any_work(prefect_harness, tiny_model_dir, tmp_path):
    """The real command: one clear line last, no traceback, no retry, exit 2, nothing written."""
    files = support.sources(tmp_path, 4, 2)
    before = _files(tmp_path)
    argv = _layers_99(support.flags(tiny_model_dir, tmp_path / "atlas.zarr", files))
    env = support.command_env(tmp_path.parent / f"{tmp_path.name}-home", support.harness_api_url())
    done = support.run_command([str(support.CLI), *argv], env, timeout=180)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    message = "refusal-atlas: layer 99 is out of range: this model has 4 decoder layers (valid: 0..3, or -4..-1)."
    assert done.returncode == 2, done.stderr[-3000:]
    assert message in lines[-3:], f"the message is not among the last lines:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-5000:]
    assert "Retry 1/1" not in done.stderr, "a failure that a retry cannot change was retried"
    assert _files(tmp_path) == before, f"a refused run wrote files: {sorted(_files(tmp_path) - before)}"


def test_a_position_the_chat_template_cannot_give_is_refused_before_any_work(prefect_harness, tiny_model_dir,
                                                                            tmp_path, capsys):
    template = tmp_path / "shouting.jinja"
    template.write_text(SHOUTING)
    files = support.sources(tmp_path, 4, 2)
    argv = support.flags(tiny_model_dir, tmp_path / "atlas.zarr", files,
                         "--position", "instruction_end", "--chat-template", str(template))
    code, err = _run_refused(argv, tmp_path, capsys)
    assert code == 2
    assert "refusal-atlas: position 'instruction_end' needs the user's text verbatim" in err
    assert "use position 'last_prompt_token'" in err


def test_the_same_template_works_at_the_last_prompt_token(tiny32):
    """The position that was refused above is the only problem with such a template."""
    from refusal_atlas.tasks.model.chat import ChatTemplateError
    from refusal_atlas.tasks.engine.direction_engine import DirectionEngine
    from refusal_atlas.tasks.settings import DirectionSettings, EngineSettings

    shouting = dataclasses.replace(tiny32, chat_template=SHOUTING)
    last = DirectionEngine(shouting, DirectionSettings(layers=[1], position="last_prompt_token"), EngineSettings())
    result = last.compute_many(["Give me a recipe for bread."])[0]
    assert result.error is None and result.h0.shape == (1, 32)
    end = DirectionEngine(shouting, DirectionSettings(layers=[1], position="instruction_end"), EngineSettings())
    with pytest.raises(ChatTemplateError, match="changes it"):
        end.render("Give me a recipe for bread.")


@pytest.mark.parametrize(("model", "expected"), [
    ("absent", "is not a directory or a .gguf file. Check the path."),
    ("missing.gguf", "does not exist. Check the path."),
])
def test_an_unknown_model_path_or_missing_gguf_is_refused(prefect_harness, tmp_path, capsys, model, expected):
    files = support.sources(tmp_path, 4, 2)
    code, err = _run_refused(support.flags(tmp_path / model, tmp_path / "atlas.zarr", files), tmp_path, capsys)
    assert code == 2
    assert "refusal-atlas: " in err and str(tmp_path / model) in err and expected in err


def test_a_bad_prompt_file_is_refused_before_the_store_is_made(prefect_harness, tiny_model_dir, tmp_path, capsys):
    files = support.sources(tmp_path, 4, 2)
    files[1].write_text('{"prompt": "fine", "label": "harmless"}\n{"prompt": "unterminated}\n')
    code, err = _run_refused(support.flags(tiny_model_dir, tmp_path / "atlas.zarr", files), tmp_path, capsys)
    assert code == 2
    assert f"{files[1]}: line 2: not valid JSON" in err
