"""The entry point loads only the command module the command line names (worker/cli/app.py)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import typer

from worker.cli.app import COMMANDS, MODULES, VALUED_OPTIONS, app, command_module

# Prints the command modules loaded once the entry point has run (whatever it exits with).
LOADED = (
    "import atexit, sys; "
    "atexit.register(lambda: print(' '.join(sorted(m for m in sys.modules "
    "if m.startswith('worker.cli.'))))); "
    "from worker.cli import main; sys.argv = ['threadsync', *sys.argv[1:]]; main()"
)


def _names(typer_app: typer.Typer) -> set[str]:
    commands = {c.name or "" for c in typer_app.registered_commands}
    return commands | {g.name or "" for g in typer_app.registered_groups}


@pytest.mark.parametrize("module", MODULES)
def test_the_map_names_exactly_the_commands_each_module_registers(module: str) -> None:
    fresh = typer.Typer()
    importlib.import_module(f"worker.cli.{module}").register(fresh)
    assert _names(fresh) == {name for name, owner in COMMANDS.items() if owner == module}


def test_every_module_is_registered_when_imported() -> None:
    assert set(MODULES) == set(COMMANDS.values())
    assert _names(app) == set(COMMANDS)


def test_the_valued_options_are_the_root_options_taking_a_value() -> None:
    root = typer.main.get_command(app)
    valued = {
        opt
        for param in root.params
        if isinstance(param, typer.core.TyperOption) and not param.is_flag and not param.count
        for opt in (*param.opts, *param.secondary_opts)
    }
    assert valued == VALUED_OPTIONS


@pytest.mark.parametrize(
    ("args", "module"),
    [
        (["run"], "daemon"),
        (["status", "--json"], "sync"),
        (["-q", "push"], "metadata"),
        (["--database-url", "postgresql://h/db", "run"], "daemon"),
        (["--database-url=postgresql://h/db", "check"], "daemon"),
        (["-c", "sync", "run"], "daemon"),  # an option's value named like a command is a value
        (["--log-level", "debug", "threads", "add", "t"], "threads"),
        ([], None),
        (["--help"], None),
        (["-h", "run"], None),
        (["--version"], None),
        (["chek"], None),  # a typo: every command loads, for click's suggestion
        (["-qc", "x.toml", "run"], None),  # clustered short options: not parsed here
    ],
)
def test_the_command_module_is_read_from_the_command_line(
    args: list[str], module: str | None
) -> None:
    assert command_module(args) == module


def _loaded(*args: str, env: dict[str, str] | None = None) -> tuple[int, set[str], str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("THREADSYNC_")}
    proc = subprocess.run(
        [sys.executable, "-c", LOADED, *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, set(proc.stdout.split()[-40:]), proc.stderr


def test_the_daemon_starts_without_the_other_commands_modules() -> None:
    code, modules, err = _loaded("run", "--help")
    assert code == 0, err
    assert "worker.cli.daemon" in modules
    assert not modules & {"worker.cli.backup", "worker.cli.emulator", "worker.cli.migrate"}


def test_another_commands_option_variable_loads_every_module_instead_of_being_refused() -> None:
    """THREADSYNC_SYNC__FULL is `sync --full`'s twin: read by nothing in `check`, known all the
    same (as before commands loaded lazily), so it is not an unknown variable."""
    code, modules, err = _loaded("check", "--help", env={"THREADSYNC_SYNC__FULL": "1"})
    assert code == 0, err
    assert "worker.cli.sync" in modules
    code, _, err = _loaded("check", "--help", env={"THREADSYNC_SYNC__FULLL": "1"})
    assert code == 2
    assert "unknown variable THREADSYNC_SYNC__FULLL" in err
