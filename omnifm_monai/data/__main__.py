"""Data commands: ``python -m omnifm_monai.data <command> --arg value`` (``prepare``, ``build_reference_sites``,
``build_federation_sites``)."""

from omnifm_monai.cli import run_commands
from omnifm_monai.data.federation import build_federation_sites
from omnifm_monai.data.prepare import prepare_command
from omnifm_monai.data.reference_sites import build_reference_sites

COMMANDS = {
    "prepare": prepare_command,
    "build_reference_sites": build_reference_sites,
    "build_federation_sites": build_federation_sites,
}


if __name__ == "__main__":
    run_commands(COMMANDS)
