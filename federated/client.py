"""NVFlare Client API loop: one site of a federated job over any omnifm_monai bundle and strategy.

NVFlare starts this script on every site (``federated/job.py`` builds the job). Each round the site receives
the global shared weights and the strategy payload, evaluates the global model on its validation split,
runs :func:`omnifm_monai.fl.engine.client_round` (the per-site round the in-process simulator runs, seeded the same
way), and sends its update. The site's data folder comes from ``--dataset_dir`` or, when absent, from the
``OMNIFM_DATASET_DIR`` environment variable of the site (production: the job carries no hospital paths).

A site fails as in the simulator: one that cannot start (its data fails validation) logs why and answers every
round with an empty result, one whose round raises does so for that round only, and the server leaves it out
of those rounds; an exception left to NVFlare would end the whole job.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import nvflare.client as flare
import torch

from omnifm_monai.data.validation import root_cause
from omnifm_monai.fl.compression import check_codec, to_diff
from omnifm_monai.fl.engine import (
    client_round,
    evaluation_data,
    make_clients,
    make_strategy,
    round_lr_scale,
    site_network,
)
from omnifm_monai.fl.nvflare import payload_from_meta, to_torch, update_to_flmodel

DATASET_ENV = "OMNIFM_DATASET_DIR"
# torch threads of every site process (job.py sets it when the sites share a machine)
THREADS_ENV = "OMNIFM_THREADS"
logger = logging.getLogger("omnifm_monai.fl.nvflare.client")


DEFAULTS = {
    "bundle": None,
    "strategy": "omnifm",
    "strategy_options": {},
    "overrides": {},
    "seed": 0,
    "local_epochs": 1,
    "send_weight_diff": False,
    "lr_schedule": "constant",
    "compression": "none",
}


def parse_args(argv=None) -> argparse.Namespace:
    """Command line > ``--job_config`` (the JSON file job.py ships next to this script) > defaults."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--job_config",
        default=None,
        help="JSON with any of the options below (job.py writes omnifm_job.json)",
    )
    p.add_argument(
        "--bundle", default=None, help="bundle folder; a relative path is looked up next to this script first"
    )
    p.add_argument("--strategy", default=None, help="strategy name (default omnifm)")
    p.add_argument(
        "--strategy_options", default=None, help="JSON: the strategy options (the server uses the same)"
    )
    p.add_argument("--dataset_dir", default=None, help=f"this site's data folder (default: ${DATASET_ENV})")
    p.add_argument("--local_epochs", type=int, default=None, help="epochs per round (default 1)")
    p.add_argument(
        "--lr_schedule",
        default=None,
        help="learning rate over the job's rounds: constant (default) or cosine",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="run seed (default 0); rounds are seeded as in the simulator"
    )
    p.add_argument(
        "--site_index",
        type=int,
        default=None,
        help="seed index of this site (default: its position in the strategy's `sites`, else 0)",
    )
    p.add_argument(
        "--workdir",
        default=None,
        help="per-site checkpoints and logs (default: omnifm_work under the working directory)",
    )
    p.add_argument("--overrides", default=None, help='JSON bundle overrides, e.g. {"image_size": 32}')
    p.add_argument(
        "--send_weight_diff", action="store_true", default=None, help="send local - global (labelled DIFF)"
    )
    p.add_argument(
        "--compression",
        default=None,
        help="none (default), fp16 or int8: send local - global for the job's UpdateEncoder filter to encode",
    )
    args = p.parse_args(argv)
    config = dict(DEFAULTS)
    if args.job_config:
        config.update(json.loads(_beside_script(args.job_config).read_text()))
    for key in DEFAULTS:
        value = getattr(args, key)
        if value is not None:
            config[key] = json.loads(value) if key in ("strategy_options", "overrides") else value
    if not config["bundle"]:
        p.error("--bundle (or a --job_config naming it) is required")
    check_codec(config["compression"])
    return argparse.Namespace(**{**vars(args), **config})


def _beside_script(path: str) -> Path:
    """``path`` as given, or next to this script (files shipped in the job's custom folder)."""
    here = Path(__file__).resolve().parent / path
    return here if not Path(path).is_absolute() and here.exists() else Path(path)


def resolve_bundle(bundle: str) -> str:
    """The bundle folder: absolute, or shipped with the job next to this script, or relative to the working directory."""
    path = _beside_script(bundle)
    if not (path / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"no bundle at {bundle!r} (looked next to {__file__} and in {os.getcwd()}).")
    return str(path)


def setup_site(args: argparse.Namespace, site: str):
    """This site's client and seed index, built as the simulator builds them (same seed -> the same private
    state at the start). Raises when the site cannot take part (no data folder, data failing validation)."""
    dataset_dir = args.dataset_dir or os.environ.get(DATASET_ENV)
    if not dataset_dir:
        raise RuntimeError(f"no data folder; pass --dataset_dir or set {DATASET_ENV} on the site.")
    bundle = resolve_bundle(args.bundle)
    options = dict(args.strategy_options)
    strategy, _ = make_strategy(
        bundle,
        args.strategy,
        options.get("sites", []),
        options,
        dataset_dir=dataset_dir,
        overrides=args.overrides,
    )
    sites = list(options.get("sites") or [])
    index = args.site_index if args.site_index is not None else (sites.index(site) if site in sites else 0)
    network = site_network(bundle, strategy, args.overrides, args.seed, dataset_dir=dataset_dir)
    client = make_clients(
        bundle,
        strategy,
        {site: dataset_dir},
        network,
        args.overrides,
        local_epochs=args.local_epochs,
        send_weight_diff=args.send_weight_diff,
        workdir=args.workdir or os.path.abspath("omnifm_work"),
    )[site]
    logger.info(
        "site %s (index %d) ready: bundle %s, strategy %s, data %s",
        site,
        index,
        bundle,
        strategy.name,
        dataset_dir,
    )
    return client, index


def no_update() -> flare.FLModel:
    """What a site that cannot train this round sends: an empty result, which the server leaves out of the
    round (an exception would abort the whole job). The reason stays in the site's own log."""
    return flare.FLModel(params={}, params_type=flare.ParamsType.FULL)


def main(argv=None) -> None:
    args = parse_args(argv)
    # sites that share one machine (SimEnv, PoC): job.py sets the simulator's thread count (bit-identical sums)
    threads = int(os.environ.get(THREADS_ENV, "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    flare.init()
    site = flare.get_site_name()
    try:
        client, index = setup_site(args, site)
    except Exception as err:  # as the simulator: this site is left out, the others go on
        client, index = None, None
        logger.error("site %s left out: %s", site, root_cause(err))

    while flare.is_running():
        received = flare.receive()
        if received is None:  # the job ended
            break
        if client is None:
            flare.send(no_update())
            continue
        global_weights = to_torch(received.params or {})
        payload = payload_from_meta(received.meta, client.strategy, global_weights)
        # metrics of the global model as received (the previous round's aggregate, with its merged bank)
        # with this site's private state
        try:
            metrics = client.evaluate(evaluation_data(global_weights, payload)).metrics
        except Exception as err:  # as the simulator: no metrics this round, training goes on
            metrics = {}
            logger.error("site %s: validation failed, no metrics this round: %s", site, root_cause(err))
        if flare.is_evaluate():  # a validation task (e.g. NVFlare's cross-site evaluation)
            flare.send(flare.FLModel(metrics=metrics))
            continue
        if not flare.is_train():
            raise RuntimeError(
                f"site {site}: task {flare.get_task_name()!r} is not supported (train and validate are)."
            )
        lr_scale = round_lr_scale(args.lr_schedule, received.current_round, received.total_rounds)
        try:
            update = client_round(
                client, global_weights, payload, args.seed, received.current_round, index, lr_scale
            )
        except Exception as err:  # as the simulator: out of this round only, its private state kept
            logger.error("site %s left out of round %s: %s", site, received.current_round, root_cause(err))
            flare.send(no_update())
            continue
        if (
            args.compression != "none"
        ):  # the job's UpdateEncoder encodes the difference, as the simulator does
            update = to_diff(update, global_weights)
        iterations = client.trainer.state.iteration - client.iter_of_start_time
        logger.info("site %s round %s: %s", site, received.current_round, metrics)
        flare.send(update_to_flmodel(update, metrics=metrics, iterations=iterations))


if __name__ == "__main__":
    main()
