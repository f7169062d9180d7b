"""`--config FILE` (gpo/config_file.py): every flag of `gpo optimize`, `gpo eval` and `gpo
reproduce` can be written in a TOML file and parses to the same arguments as the flag; a flag on
the command line wins over the file; a bad file is one error line naming the file, the key and
its line, with exit status 2, and never shows an API key; the run's config.json records the file
and the values it gave; a resumed run treats the file's values as flags given now."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends.errors import ConfigError
from gpo import cli_optimize
from gpo.cli import build_parser, main, parse_arguments
from gpo.config_file import CONFIG_COMMANDS
from tests.gpo_fakes import DATA_DIR

FAKE_KEY = "sk-" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def write_config(path: Path, values: dict[str, Any]) -> Path:
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in values.items()))
    return path


def _one_value(action: argparse.Action, existing_file: Path, index: int) -> Any:
    """A valid value of `action`'s flag (the `index`-th, for repeated flags)."""
    if action.choices:
        return list(action.choices)[-1 - index % len(action.choices)]
    kind = action.type
    if getattr(kind, "maximum", None) is not None:  # BoundedNumber: its upper bound is allowed
        return kind.kind(kind.maximum) - index
    if kind in (int, float):
        return kind(3 + index)
    if kind is Path:
        return str(existing_file)
    if action.dest.endswith("api_key_env"):
        return f"MY_KEY_VAR_{index}"
    if getattr(kind, "__name__", "") == "_chat_template":
        return "chatml"
    assert kind is None, f"no sample value for {action.option_strings} (type {kind})"
    return f"some text {index}"


def flag_cases(action: argparse.Action, existing: Path) -> list[tuple[str, Any, list[str]]]:
    """(config key, TOML value, the same on the command line) for one flag."""
    flag = action.option_strings[-1] if action.nargs == 0 else action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        positive, negative = action.option_strings
        return [(positive[2:], True, [positive]), (positive[2:], False, [negative])]
    if action.nargs == 0:
        return [(flag[2:], True, [flag])]
    if isinstance(action, argparse._AppendAction):
        values = [_one_value(action, existing, index) for index in range(2)]
        return [(flag[2:], values, [flag, str(values[0]), flag, str(values[1])])]
    value = _one_value(action, existing, 0)
    return [(flag[2:], value, [flag, str(value)])]


def configurable_actions(command: str) -> list[argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [
        action
        for action in sub.choices[command]._actions
        if action.option_strings and action.dest not in ("help", "config")
    ]


def without_config(args: argparse.Namespace) -> dict[str, Any]:
    return {key: value for key, value in vars(args).items() if key != "config"}


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_every_flag_is_expressible_in_a_config_file(command: str, tmp_path: Path) -> None:
    existing = tmp_path / "a-file"
    existing.write_text("x")
    checked, actions = 0, configurable_actions(command)
    for number, action in enumerate(actions):
        for key, value, argv in flag_cases(action, existing):
            spelled = key.replace("-", "_") if number % 2 else key  # both spellings work
            config = write_config(tmp_path / f"{number}.toml", {spelled: value})
            from_file = parse_arguments([command, "--config", str(config)])
            from_flags = parse_arguments([command, *argv])
            assert without_config(from_file) == without_config(from_flags), (key, value)
            assert getattr(from_file, action.dest) != action.default or value is False, key
            assert from_file.config == config
            checked += 1
    assert checked >= len(actions) >= 30


def test_the_command_line_wins_over_the_file(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        {"task": ["bbh/navigate", "gsm8k"], "steps": 4, "reflection": False, "dev_size": 16},
    )
    args = parse_arguments(
        ["optimize", "--task", "wsc", "--config", str(config), "--steps", "2", "--reflection"]
    )
    assert args.task == ["wsc"]  # a repeated flag replaces the file's list, not extends it
    assert (args.steps, args.reflection, args.dev_size) == (2, True, 16)
    again = parse_arguments(["eval", "--config", str(write_config(tmp_path / "e.toml", {}))])
    assert again.task is None and again.split is None  # defaults untouched by an empty file


def error_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps = 4\nstepz = 3\n", "line 2: key 'stepz': unknown key (did you mean 'steps'?)"),
        ('steps = "many"\n', "line 1: key 'steps': 'many' is not an integer"),
        ("steps = 0\n", "line 1: key 'steps': '0' is out of range (allowed: from 1 to"),
        ("steps = 4.5\n", "key 'steps': '4.5' is not an integer"),
        ("steps = true\n", "key 'steps': expected a string or a number, got a boolean"),
        ('no-test = "yes"\n', "key 'no-test': expected true or false, got a string"),
        ('method = "best"\n', "key 'method': invalid choice: 'best'"),
        ('data-dir = ["a", "b"]\n', "key 'data-dir': expected one value, got an array"),
        ("run-dir = 3\n", "key 'run-dir': expected a string, got an integer"),
        ("[scorer]\nurl = 'x'\n", "key 'scorer': unknown key"),
        ("steps = 4\nsteps = 5\n", "not valid TOML: Cannot overwrite a value (at line 2"),
        ("task = [1\n", "not valid TOML"),
        ("scorer-api-key-file = '/no/such/file'\n", "/no/such/file does not exist"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_file_key_and_line(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    err = error_of(capsys, "optimize", "--config", str(config))
    assert err.startswith(f"gpo optimize: error: --config {config}: "), err
    assert expected in err


def test_a_config_file_that_is_not_utf8_or_missing_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'steps = 4\ninitial-prompt = "caf\xe9"\n')
    assert error_of(capsys, "eval", "--config", str(config)).endswith("line 2: not UTF-8 text")
    missing = tmp_path / "missing.toml"
    assert "cannot read: No such file" in error_of(capsys, "eval", f"--config={missing}")


@pytest.mark.parametrize(
    "text",
    [
        f'scorer-api-key = "{FAKE_KEY}"\n',
        'api_key = "hunter2"\n',
        'optimizer-token = "abc"\n',
        f'scorer-api-key-env = "{FAKE_KEY}"\n',
        f'prompt = ["fine", "{FAKE_KEY}"]\n',
    ],
)
def test_api_keys_in_a_config_file_are_refused_unshown(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "secret.toml"
    config.write_text(text)
    err = error_of(capsys, "eval", "--config", str(config))
    assert "API keys are not accepted in a config file" in err
    assert "--ROLE-api-key-env" in err
    assert FAKE_KEY not in err and "hunter2" not in err


def test_the_run_config_records_the_file_and_its_values(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "run.toml",
        {
            "task": ["bbh/navigate"],
            "data-dir": str(DATA_DIR),
            "steps": 3,
            "candidates": 4,
            "request-timeout": 30.0,
            "scorer-url": ["http://127.0.0.1:9/v1"],
        },
    )
    run_dir = tmp_path / "run"
    argv = ["optimize", "--config", str(config), "--run-dir", str(run_dir), "--candidates", "2"]
    with contextlib.ExitStack() as locks:
        cli_optimize.prepare(parse_arguments(argv), locks)
    stored = orjson.loads((run_dir / "config.json").read_bytes())
    arguments = stored["arguments"]
    assert arguments["config"] == str(config)
    assert (arguments["steps"], arguments["candidates"]) == (3, 2)
    assert arguments["scorer_url"] == ["http://127.0.0.1:9/v1"]
    assert stored["optimizer"]["steps"] == 3 and stored["optimizer"]["candidates"] == 2

    # Resumed with a config file: operational values may change, the rest must match.
    faster = write_config(tmp_path / "faster.toml", {"request-timeout": 5.0, "steps": 3})
    resume = ["optimize", "--resume", str(run_dir), "--config", str(faster)]
    with contextlib.ExitStack() as locks:
        cli_optimize.prepare(parse_arguments(resume), locks)
    sessions = orjson.loads((run_dir / "config.json").read_bytes())["sessions"]
    changed = {change["flag"]: change["to"] for change in sessions[-1]["changes"]}
    assert changed["--request-timeout"] == 5.0 and changed["--config"] == str(faster)
    other = write_config(tmp_path / "other.toml", {"steps": 5})
    resume = ["optimize", "--resume", str(run_dir), "--config", str(other)]
    with contextlib.ExitStack() as locks, pytest.raises(ConfigError, match="--steps cannot change"):
        cli_optimize.prepare(parse_arguments(resume), locks)
