"""Federated commands: ``python -m omnifm_monai.fl simulate --bundle bundles/<name> --strategy omnifm --rounds 5 --output DIR``;
``python -m omnifm_monai.fl evaluate --run DIR`` (cross-site evaluation of a finished run)."""

import logging

from omnifm_monai.cli import run_commands
from omnifm_monai.errors import SettingsError
from omnifm_monai.fl.evaluate import RunFolderError, cross_site_evaluate
from omnifm_monai.fl.simulator import simulate_command

COMMANDS = {"simulate": simulate_command, "evaluate": cross_site_evaluate}

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_commands(COMMANDS, one_line=(RunFolderError, SettingsError))  # refused before any work: one line
