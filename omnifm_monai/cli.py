"""The package's command lines (``python -m omnifm_monai.data``, ``python -m omnifm_monai.fl``): python-fire
commands whose unknown flags and refused inputs end in one line, ``error: ...``, exit status 1."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping

import fire

__all__ = ["run_commands", "unknown_flags"]


def unknown_flags(commands: Mapping[str, Callable], argv: list[str]) -> list[str]:
    """Flags of ``argv`` (after the command) that the command does not take. Fire would run the whole command
    and only then fail on them; they are refused before anything runs."""
    if not argv or argv[0] not in commands:
        return []
    names = set(inspect.signature(commands[argv[0]]).parameters)
    flags = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--") and len(a) > 2]
    known = names | {f"no{n}" for n in names} | {"help"}  # Fire's --noFLAG sets a boolean to False
    return [f for f in flags if f.replace("-", "_") not in known]


def run_commands(commands: Mapping[str, Callable], one_line: tuple[type[BaseException], ...] = ()) -> None:
    """Run ``sys.argv`` with Fire; unknown flags and the errors of ``one_line`` (inputs refused before any
    work) exit with one line and no traceback."""
    unknown = unknown_flags(commands, sys.argv[1:])
    if unknown:
        options = sorted(inspect.signature(commands[sys.argv[1]]).parameters)
        sys.exit(
            f"error: unknown flag(s) {['--' + f for f in unknown]} for {sys.argv[1]}; it takes {options}."
        )
    try:
        fire.Fire(dict(commands))
    except one_line as err:
        sys.exit(f"error: {err}")
