"""Data commands: ``python -m omnifm_monai.data <command> --arg value`` (``build_reference_sites``,
``build_federation_sites``)."""

import fire

from omnifm_monai.data.federation import build_federation_sites
from omnifm_monai.data.reference_sites import build_reference_sites

COMMANDS = {"build_reference_sites": build_reference_sites, "build_federation_sites": build_federation_sites}

if __name__ == "__main__":
    fire.Fire(COMMANDS)
