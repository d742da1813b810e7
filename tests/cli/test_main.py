"""The command line's own promises: version, the command list, start-up that
loads only the command run, one-line errors unless ``--debug``, and the exit
codes of Ctrl-C (130) and SIGTERM (143)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from synfast import __version__
from tests.conftest import run_cli


def test_version_and_entry_points() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"synfast {__version__}"
    script = Path(sys.executable).parent / "synfast"
    if script.exists():
        out = subprocess.run([str(script), "--version"], capture_output=True, text=True)
        assert out.stdout.strip() == f"synfast {__version__}"
    help_text = run_cli("--help").stdout
    assert "copy" in help_text and "scan" in help_text


def test_every_command_is_listed_and_only_the_one_run_is_loaded() -> None:
    from synfast.cli import COMMANDS

    help_lines = run_cli("--help").stdout.splitlines()
    listed = [line.split()[0] for line in help_lines[help_lines.index("Commands:") + 1:]
              if line.strip()]
    assert listed == list(COMMANDS)
    # a command's run imports its own module and not the others' (start-up time)
    probe = ("import sys, synfast.cli as c; c.load_commands(sys.argv[1:]); "
             "print(sorted(m for m in sys.modules if m.endswith('_cmd')))")
    out = subprocess.run([sys.executable, "-c", probe, "--debug", "copy", "a", "b"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['synfast.cli.copy_cmd']"
    out = subprocess.run([sys.executable, "-c", probe, "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert len(ast.literal_eval(out)) == len(set(COMMANDS.values()))


def _render(app: object, words: list[str]) -> tuple[str, int]:
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, words, prog_name="synfast")
    return r.output, r.exit_code


def test_the_lean_app_shows_what_the_whole_app_shows() -> None:
    """``for_line`` leaves out what a command line cannot reach; help, errors
    and suggestions must read exactly as the whole app's."""
    from synfast.cli import for_line, load_commands

    app = load_commands()
    for words in (["--help"], [], ["--debug"], ["url"], ["url", "--help"], ["certs"],
                  ["url", "parse", "--help"], ["backup", "--help"], ["bakup"],
                  ["url", "nosuch"], ["--debug", "certs", "list", "--help"], ["--version"]):
        assert _render(for_line(app, words), words) == _render(app, words), words
    # what is built: only the named command, or every name with no options
    lean = for_line(app, ["--debug", "url", "parse", "tcp://h"])
    assert [c.name for c in lean.registered_commands] == []
    [url] = lean.registered_groups
    assert [c.name for c in url.typer_instance.registered_commands] == ["parse"]
    listing = for_line(app, ["--help"])
    assert len(listing.registered_commands) == len(app.registered_commands)
    assert all(not c.callback.__code__.co_varnames for c in listing.registered_commands)
    assert all(not g.typer_instance.registered_commands for g in listing.registered_groups)
    # the apps themselves are left whole
    assert len(app.registered_groups) == 2
    assert all(g.typer_instance.registered_commands for g in app.registered_groups)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = run_cli("--debug", "copy", tmp_path / "nope", tmp_path / "dst")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
