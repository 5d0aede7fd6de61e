"""Federated commands: ``python -m omnifm_monai.fl simulate --bundle bundles/<name> --strategy omnifm --rounds 5 --output DIR``;
``python -m omnifm_monai.fl evaluate --run DIR`` (cross-site evaluation of a finished run)."""

import inspect
import logging
import sys

import fire

from omnifm_monai.fl.evaluate import RunFolderError, cross_site_evaluate
from omnifm_monai.fl.simulator import simulate_command

COMMANDS = {"simulate": simulate_command, "evaluate": cross_site_evaluate}


def unknown_flags(argv: list[str]) -> list[str]:
    """Flags of ``argv`` (after the command) that the command does not take. Fire would run the whole job and
    then fail on them; they are refused before anything runs."""
    if not argv or argv[0] not in COMMANDS:
        return []
    names = set(inspect.signature(COMMANDS[argv[0]]).parameters)
    flags = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--") and len(a) > 2]
    known = names | {f"no{n}" for n in names} | {"help"}  # Fire's --noFLAG sets a boolean to False
    return [f for f in flags if f.replace("-", "_") not in known]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    unknown = unknown_flags(sys.argv[1:])
    if unknown:
        options = sorted(inspect.signature(COMMANDS[sys.argv[1]]).parameters)
        sys.exit(
            f"error: unknown flag(s) {['--' + f for f in unknown]} for {sys.argv[1]}; it takes {options}."
        )
    try:
        fire.Fire(COMMANDS)
    except RunFolderError as err:  # a run folder that cannot be evaluated: one line, no traceback
        sys.exit(f"error: {err}")
