"""The ``pullwake`` command line: help for every option, environment defaults, and one clear
line (never a traceback) for ordinary mistakes."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pullwake.cli import COMMANDS, build_parser, main
from tests.fixtures.servers import ServerFactory

REPO = Path(__file__).resolve().parents[1]
WAIT = 20.0

#: Commands whose every option also comes from a PULLWAKE_* variable.
WITH_ENVIRONMENT = {"server", "run", "health", "stream", "subscription"}


def pullwake(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pullwake", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=WAIT,
    )


def subparsers(parser: argparse.ArgumentParser) -> Iterator[Any]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield action


def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    """Yield (command path, action) for every argument of ``parser`` and its sub-commands."""
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        yield path, action
    for group in subparsers(parser):
        for name, child in group.choices.items():
            yield from walk(child, f"{path} {name}")


def every_command_parser() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for command in COMMANDS:
        parser = build_parser(command)
        (group,) = subparsers(parser)
        yield command, group.choices[command]


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"{path}: {action.option_strings or action.dest}"
        for command, parser in every_command_parser()
        for path, action in walk(parser, f"pullwake {command}")
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_every_option_names_its_environment_variable() -> None:
    missing = []
    for command, parser in every_command_parser():
        if command.split()[0] not in WITH_ENVIRONMENT:
            continue
        for path, action in walk(parser, f"pullwake {command}"):
            if action.option_strings and "[env: PULLWAKE_" not in str(action.help):
                missing.append(f"{path}: {action.option_strings[0]}")
    assert missing == []


def test_top_level_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "`" not in text
    assert "--version" in text


def test_version_is_the_installed_distributions() -> None:
    result = pullwake("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pullwake {importlib.metadata.version('pullwake')}"


# -- the environment ------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return build_parser(argv[0]).parse_args(list(argv))


def test_options_default_to_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULLWAKE_PORT", "0")
    monkeypatch.setenv("PULLWAKE_DATABASE", "sqlite:///x.db")
    monkeypatch.setenv("PULLWAKE_RUNNER_TOKEN", "r1=a, r2=b")
    args = parse("server")
    assert (args.port, args.database, args.runner_token) == (0, "sqlite:///x.db", ["r1=a", "r2=b"])
    # The command line wins, also over a repeatable option's variable.
    args = parse("server", "--port", "5000", "--runner-token", "r3=c")
    assert (args.port, args.runner_token) == (5000, ["r3=c"])


def test_a_required_option_may_come_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULLWAKE_URL", "http://127.0.0.1:1 http://127.0.0.1:2")
    monkeypatch.setenv("PULLWAKE_RUNNER_ID", "worker-1")
    monkeypatch.setenv("PULLWAKE_JSON", "yes")
    args = parse("run", "m:h")
    assert (args.url, args.runner_id) == (["http://127.0.0.1:1", "http://127.0.0.1:2"], "worker-1")
    assert parse("health", "http://127.0.0.1:1", "r1").json is True


def test_the_older_variable_names_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULLWAKE_DATABASE_URL", "sqlite:///old.db")
    monkeypatch.setenv("PULLWAKE_RUNNER_TOKENS", "r1=a")
    args = parse("server")
    assert (args.database, args.runner_token) == ("sqlite:///old.db", ["r1=a"])


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PULLWAKE_PORT", "70000", "PULLWAKE_PORT='70000': port 70000 is out of range"),
        ("PULLWAKE_BACKEND", "curio", "PULLWAKE_BACKEND='curio' is not one of asyncio, trio"),
        ("PULLWAKE_KEEPALIVE", "soon", "PULLWAKE_KEEPALIVE='soon'"),
    ],
)
def test_a_bad_variable_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        parse("server")
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# -- mistakes get one line, never a traceback -------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["server", "--port", "99999"], "--port: port 99999 is out of range: give 0-65535"),
        (["server", "--port", "-1"], "argument --port: port -1 is out of range"),
        (["server", "--port", "http"], "argument --port: 'http' is not a port number"),
        (["server", "--database", "mysql://db/x"], "database URL scheme 'mysql' is not supported"),
        (["server", "--database", "pullwake.db"], "database URL 'pullwake.db' is not a URL"),
        (["server", "--database", "sqlite://host/x.db"], "SQLite URL 'sqlite://host/x.db' must"),
        (["server", "--database", "postgresql://u@[::1"], "PostgreSQL URL is malformed"),
        (["health", "http://127.0.0.1:99999", "r1"], "has port 99999, out of range"),
        (["health", "127.0.0.1:4437", "r1"], "write e.g. http://127.0.0.1:4437"),
        (["run", "m:h", "--runner-id", "r", "--url", "localhost:4437"], "e.g. http://localhost"),
    ],
)
def test_an_ordinary_mistake_gets_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = pullwake(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pullwake {args[0]}: error: ")
    assert message in last
    assert list(tmp_path.iterdir()) == []  # nothing was created on the way


@pytest.mark.e2e
def test_health_of_an_unreachable_server_says_so_without_promising_retries() -> None:
    result = pullwake("health", "http://127.0.0.1:1", "r1", "--timeout", "2")
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "pullwake health: no answer from http://127.0.0.1:1 (ConnectError: All connection "
        "attempts failed): check that the server runs there"
    ]


@pytest.mark.e2e
def test_health_into_a_closed_pipe_exits_quietly(server_factory: ServerFactory) -> None:
    server = server_factory()
    with httpx.Client(base_url=server.url, timeout=5) as client:
        client.post("/v1/runners", json={"id": "r1"}).raise_for_status()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pullwake", "health", server.url, "r1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # like `| head` that has already left
    try:
        _, stderr = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr
    assert proc.returncode == 141
