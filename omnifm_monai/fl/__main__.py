"""Federated commands: ``python -m omnifm_monai.fl simulate --bundle bundles/<name> --strategy omnifm --rounds 5 --output DIR``."""

import logging

import fire

from omnifm_monai.fl.simulator import simulate

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fire.Fire({"simulate": simulate})
