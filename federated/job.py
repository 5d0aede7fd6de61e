"""Build and run (or export) the NVFlare job of a bundle and a strategy: a FedAvgRecipe with the strategy's
aggregator, the Client API script ``client.py`` on every site, and the simulator's initial weights.

    python federated/job.py --bundle bundles/omnifm_segmentation --strategy omnifm --rounds 2 \
        --sites icbm_t1,icbm_t2w --reference_dir outputs/reference_sites --env sim --output outputs/nvflare_omnifm
    python federated/job.py ... --env poc                       # server and clients as separate processes
    python federated/job.py ... --export_dir jobs/omnifm         # a job folder for `nvflare job submit` (production)
    python federated/job.py ... --cross_site_eval                # then the final global model on every site
    python federated/job.py ... --compression int8               # sites upload their update 8-bit blockwise

Every strategy except ``local`` and ``centralized`` runs as FedAvg-style rounds (send global -> train ->
aggregate); the aggregation rule, private keys and payload are the strategy's. After a run the result is
checked (global model present, its meta at the last round, no error log) and the global weights, the
server state and the per-round site metrics are written to ``--output``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from nvflare.app_common.widgets.validation_json_generator import ValidationJsonGenerator
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval
from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator
from nvflare.app_opt.pt.recipes import FedAvgRecipe
from nvflare.recipe import PocEnv, SimEnv, set_per_site_config

from omnifm_monai.fl.bundle import key_metric
from omnifm_monai.fl.compression import CODECS, check_codec
from omnifm_monai.fl.engine import make_strategy, round_lr_scale
from omnifm_monai.fl.nvflare import (
    REJECTED,
    SITE_METRICS,
    StrategyAggregator,
    UpdateDecoder,
    UpdateEncoder,
    federated_rounds,
    initial_checkpoint,
    network_spec,
    read_global_model,
)
from omnifm_monai.fl.strategies import STRATEGIES, Strategy, strategy_class

HERE = Path(__file__).resolve().parent
FEDERATED = tuple(s for s in STRATEGIES if federated_rounds(STRATEGIES[s]))  # the built-in ones NVFlare runs
RESULT_MODEL = "FL_global_model.pt"
THREADS_ENV = "OMNIFM_THREADS"  # client.py sets torch's thread count from it
JOB_CONFIG = "omnifm_job.json"
INITIAL_CKPT = "initial_global_model.pt"
BUNDLE_FILES = "bundle_files"  # its content lands in each client app's custom/ folder
CROSS_SITE_RESULTS = "cross_val_results.json"  # NVFlare's ValidationJsonGenerator, in the server's run folder
# seconds between a site's task requests and between the controller's checks of its tasks on one machine
# (NVFlare's defaults, 2 and 0.5, suit sites across a network and make a round's floor there)
POLL_INTERVAL = 0.1


@contextlib.contextmanager
def _environ(name: str, value: str):
    """``os.environ[name] = value`` while the job runs (its processes inherit it), then as it was."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


class _FedAvgRecipe(FedAvgRecipe):
    """FedAvgRecipe whose controller leaves a site that fails a round out of it, as the simulator does, instead of
    ending the job (NVFlare's default needs a result from every site; ``ignore_result_error=False`` keeps it). How
    many updates a round needs is the aggregator's ``min_updates`` (``--min_sites``): fewer fail the round, and the
    job, with that count. ``task_check_period``: how often the controller checks that a round's tasks are done."""

    def __init__(
        self, *args, ignore_result_error: bool = True, task_check_period: float = 0.5, **kwargs
    ) -> None:
        # read by _get_controller_kwargs during FedAvgRecipe.__init__
        self._controller_kwargs = {
            "ignore_result_error": ignore_result_error,
            "task_check_period": task_check_period,
        }
        super().__init__(*args, **kwargs)

    def _get_controller_kwargs(self) -> dict[str, Any]:
        return {**super()._get_controller_kwargs(), **self._controller_kwargs}


@contextlib.contextmanager
def _cwd(path: Path):
    """Recipes resolve relative scripts and files against the working directory (they ship them in the job)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _stage(bundle: Path, staging: Path) -> Path:
    """The job's source folder: the client script, the bundle's configs (no models, outputs or data) under
    ``bundle_files/<name>``, and (written later) the job config and the initial checkpoint. Recipes resolve
    relative files against the working directory and ship them, so they are built and run from here."""
    shutil.rmtree(staging / BUNDLE_FILES, ignore_errors=True)
    # JSON configs only: `nvflare job submit` parses every *.conf in the job as a job config (logging.conf fails)
    shutil.copytree(
        bundle / "configs",
        staging / BUNDLE_FILES / bundle.name / "configs",
        ignore=lambda folder, names: [n for n in names if not n.endswith(".json")],
    )
    shutil.copy(HERE / "client.py", staging / "client.py")
    return staging / BUNDLE_FILES / bundle.name


def build_recipe(
    bundle: str,
    strategy: str,
    sites: list[str],
    rounds: int = 2,
    site_dirs: dict[str, str] | None = None,
    seed: int = 0,
    local_epochs: int = 1,
    overrides: dict[str, Any] | None = None,
    strategy_options: dict[str, Any] | None = None,
    min_sites: int = 1,
    send_weight_diff: bool = False,
    external: bool = False,
    staging: str | None = None,
    name: str | None = None,
    command: str | None = None,
    native_fedavg: bool = False,
    lr_schedule: str = "constant",
    cross_site_eval: bool = False,
    compression: str = "none",
    poll_interval: float | None = POLL_INTERVAL,
) -> FedAvgRecipe:
    """The job as a recipe. ``site_dirs`` puts each site's ``--dataset_dir`` in the job (simulation, PoC);
    without it every site reads ``OMNIFM_DATASET_DIR`` from its own environment (production). ``external``
    starts each site's script as its own process with ``command`` (default: this Python; give the sites'
    interpreter, e.g. ``python3 -u``, for an exported job). ``native_fedavg`` leaves the aggregation to NVFlare's
    own FedAvg (the recipe's default aggregator) instead of :class:`StrategyAggregator`: an independent check
    of our ``fedavg``, and nothing else (no payload, no private keys on the server). ``lr_schedule``: the
    sites' learning rate over the rounds, as in the simulator (``constant`` or ``cosine``). ``min_sites``: valid
    updates a round needs, as in the simulator; a site that fails (its data does not validate, its training
    raises) is left out of the round and the job goes on while that many remain. ``cross_site_eval``: after the
    last round, :func:`add_cross_site_eval`. ``compression``: what the sites upload, as in the simulator
    (:func:`add_compression`). ``poll_interval``: seconds between a site's task requests
    (:func:`set_poll_interval`) and between the controller's checks of a round's tasks (``None``: NVFlare's
    defaults, 2 s and 0.5 s)."""
    federated_rounds(strategy, check=True)
    check_codec(compression)
    if poll_interval is not None and (
        isinstance(poll_interval, bool) or not isinstance(poll_interval, int | float) or poll_interval <= 0
    ):
        raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}.")
    if isinstance(min_sites, bool) or not isinstance(min_sites, int) or not 1 <= min_sites <= len(sites):
        raise ValueError(f"min_sites must be an integer in 1..{len(sites)} (the sites), got {min_sites!r}.")
    round_lr_scale(lr_schedule, 0, max(rounds, 1))  # an unknown schedule fails here, not on the sites
    if native_fedavg and strategy_class(strategy) is not Strategy:
        raise ValueError(f"native_fedavg runs NVFlare's own FedAvg: it checks `fedavg`, not {strategy!r}.")
    bundle_dir = Path(bundle).resolve()
    site_dirs = (
        {s: str(Path(d).resolve()) for s, d in site_dirs.items()} if site_dirs else None
    )  # before any chdir
    overrides = dict(overrides or {})
    strat, options = make_strategy(
        bundle_dir,
        strategy,
        sites,
        strategy_options,
        dataset_dir=overrides.get("dataset_dir"),
        overrides=overrides,
    )
    staging_dir = Path(staging or tempfile.mkdtemp(prefix="omnifm_nvflare_")).resolve()
    staged = _stage(bundle_dir, staging_dir)
    initial_checkpoint(staging_dir / INITIAL_CKPT, bundle_dir, strat, overrides, seed)
    # everything but the site's index and data path goes in a file shipped with the job: NVFlare splits
    # train_args on whitespace (in-process) or with shell rules (external), neither safe for JSON
    job_config = {
        "bundle": staged.name,
        "strategy": strategy,
        "strategy_options": options,
        "overrides": overrides,
        "seed": seed,
        "local_epochs": local_epochs,
        "send_weight_diff": send_weight_diff,
        "lr_schedule": lr_schedule,
        "compression": compression,
    }
    (staging_dir / JOB_CONFIG).write_text(json.dumps(job_config, indent=2))
    with _cwd(staging_dir):
        recipe = _FedAvgRecipe(
            ignore_result_error=not native_fedavg,
            task_check_period=poll_interval or 0.5,  # NVFlare's default
            name=name or f"omnifm_{re.sub(r'[^A-Za-z0-9_-]', '_', strategy)}",
            model=network_spec(
                bundle_dir, strat, overrides
            ),  # built on the server only to name the architecture
            initial_ckpt=INITIAL_CKPT,  # relative: shipped in the server app; the simulator's initial weights
            min_clients=len(sites),
            num_rounds=rounds,
            train_script="client.py",
            train_args=f"--job_config {JOB_CONFIG}",
            aggregator=None
            if native_fedavg
            else StrategyAggregator(strategy, options, min_updates=min_sites, sites=list(sites)),
            key_metric=key_metric(bundle_dir),
            launch_external_process=external,
            command=command or f"{sys.executable} -u",
        )
        per_site = {}
        for index, site in enumerate(sites):
            args = [f"--job_config {JOB_CONFIG}", f"--site_index {index}"]
            if site_dirs:
                folder = site_dirs[site]
                if any(c.isspace() for c in folder):
                    raise ValueError(
                        f"NVFlare splits script arguments on whitespace: move {folder!r} or use OMNIFM_DATASET_DIR."
                    )
                args.append(f"--dataset_dir {folder}")
            per_site[site] = {"train_args": " ".join(args)}
        set_per_site_config(recipe, per_site)  # right after construction, before any client customisation
        # omnifm_monai is installed on the server and every site: never ship (and shadow) a copy of it
        recipe._job.set_app_packages(["omnifm_monai"])  # FedJob API; recipes keep their job private
        recipe.add_client_file(BUNDLE_FILES)  # -> custom/<bundle name>/configs
        recipe.add_client_file(JOB_CONFIG)
    if compression != "none":
        add_compression(recipe, compression)
    if poll_interval is not None:
        set_poll_interval(recipe, poll_interval)
    if cross_site_eval:
        add_cross_site_eval(recipe)
    recipe.staging_dir = staging_dir
    return recipe


def add_compression(recipe: FedAvgRecipe, codec: str) -> None:
    """Update compression in NVFlare's filter chain, where NVFlare's own ``ModelQuantizer`` / ``ModelDequantizer``
    sit: each site's ``train`` result (its update as a difference to the global weights; ``client.py`` sends one)
    is encoded by :class:`UpdateEncoder` on the way out and decoded by :class:`UpdateDecoder` on the server before
    the aggregator sees it: the simulator's codec, so the same global model as ``simulate(compression=codec)``."""
    recipe.add_client_output_filter(UpdateEncoder(codec), tasks=["train"])
    recipe.add_server_input_filter(UpdateDecoder(), tasks=["train"])


def set_poll_interval(recipe: FedAvgRecipe, seconds: float) -> None:
    """The server's ``task_request_interval``: how long a site waits before it asks for its next task, also right
    after sending a result (NVFlare's default, 2 s, is the largest part of a round's floor on one machine). The
    controller's ``task_check_period`` is the recipe's (:class:`_FedAvgRecipe`)."""
    recipe.add_server_config({"server": {"task_request_interval": seconds}})


def add_cross_site_eval(recipe: FedAvgRecipe) -> None:
    """NVFlare's cross-site evaluation after the last round: ``CrossSiteModelEval`` sends every model the server
    holds (the final global model, ``FL_global_model.pt``) with its meta (the strategy payload) to every site as
    a ``validate`` task; ``client.py`` scores it as it scores every round's global model (with the site's private
    state, on its validation split) and returns the metrics, which ``ValidationJsonGenerator`` writes to
    ``cross_site_val/cross_val_results.json``. Sites submit no models of their own (NVFlare's
    ``add_cross_site_evaluation`` asks for them with a ``submit_model`` task): a site's personal model includes
    its private state, which never leaves the site."""
    persistor = recipe._job.comp_ids["persistor_id"]  # FedJob API; the recipe's PyTorch persistor
    locator = recipe._job.to_server(PTFileModelLocator(pt_persistor_id=persistor))
    recipe._job.to_server(ValidationJsonGenerator(json_file_name=CROSS_SITE_RESULTS))
    recipe._job.to_server(CrossSiteModelEval(model_locator_id=locator, submit_model_task_name=""))


def export(recipe: FedAvgRecipe, job_dir: str) -> Path:
    """Write the job folder ``<job_dir>/<job name>`` for ``nvflare job submit``."""
    job_dir = Path(job_dir).resolve()  # before the chdir
    with _cwd(recipe.staging_dir):
        recipe.export(job_dir=str(job_dir))
    return job_dir / recipe.name


class _PocEnv(PocEnv):
    """PocEnv with retries. It waits a fixed 3 s after starting the services; on a loaded machine the admin
    login can then reach a server that is not ready (seen as ``TypeError: 'None' is not an instance of
    'bytes'`` on the server's certificate), which fails the submission and also the stop (left running,
    the services restart themselves). Both are retried after a pause."""

    attempts = 3

    def deploy(self, job):
        for attempt in range(1, self.attempts + 1):
            try:
                return super().deploy(job)  # stops and restarts the services if they run
            except Exception as err:
                if attempt == self.attempts:
                    raise
                print(
                    f"PoC submission failed ({err!r}); restarting the PoC services (attempt {attempt + 1} of {self.attempts})"
                )
                time.sleep(5 * attempt)

    def stop(self, clean_up: bool = False) -> None:
        for attempt in range(1, self.attempts + 1):
            super().stop(clean_up=clean_up)  # logs and swallows its own errors
            if not self._check_poc_running():
                return
            time.sleep(5 * attempt)
        raise RuntimeError(
            f"the PoC services did not stop: run `NVFLARE_POC_WORKSPACE={self.poc_workspace} nvflare poc stop`."
        )


def run(
    recipe: FedAvgRecipe,
    sites: list[str],
    env: str = "sim",
    workspace: str | None = None,
    timeout: float = 1800,
) -> Path:
    """Run in SimEnv (one process tree) or PocEnv (server, clients, admin as separate processes on
    loopback); returns the folder that holds the server's result."""
    workspace = str(Path(workspace or tempfile.mkdtemp(prefix="omnifm_nvflare_ws_")).resolve())
    # every site runs on this machine; each uses the thread count this process (so the in-process simulator)
    # uses: the same float summation order, so the simulator's global model bit for bit
    threads = os.environ.get(THREADS_ENV) or str(torch.get_num_threads())
    with _cwd(recipe.staging_dir), _environ(THREADS_ENV, threads):
        if env == "sim":
            try:
                execution = recipe.run(SimEnv(clients=list(sites), workspace_root=workspace))
            except RuntimeError as err:  # "Simulation failed with return code 2": say why
                raise RuntimeError(failure(Path(workspace) / recipe.name, sites) or str(err)) from err
            return Path(execution.get_result())
        if env != "poc":
            raise ValueError(f"env must be 'sim' or 'poc', not {env!r}.")
        poc_workspace = os.path.join(workspace, "poc")
        # PocEnv reads NVFLARE_POC_WORKSPACE (default /tmp/nvflare/poc)
        with _environ("NVFLARE_POC_WORKSPACE", poc_workspace):
            poc = _PocEnv(clients=list(sites))
            try:
                execution = recipe.run(poc)
                job_id = execution.get_job_id()
                downloaded = execution.get_result(timeout=timeout, clean_up=False)
                if downloaded is None:
                    raise RuntimeError(
                        f"the PoC job {job_id} produced no result (status {execution.get_status()})."
                    )
                # the download and the sites' logs live in the PoC workspace, which is removed below: keep them
                result = Path(workspace) / "poc_result" / job_id
                shutil.copytree(downloaded, result, dirs_exist_ok=True)
                for site in sites:
                    target = result / "site_logs" / site
                    target.mkdir(parents=True, exist_ok=True)
                    for log in glob.glob(
                        os.path.join(poc_workspace, "**", site, job_id, "*log*.txt"), recursive=True
                    ):
                        shutil.copy(log, target)
                return result
            finally:
                poc.stop(clean_up=True)


def _logs(result_dir: str | Path, sites: list[str] | None, name: str = "log.txt") -> dict[str, Path]:
    """The job's logs called ``name`` by owner: a site (its name is a folder on the way: SimEnv's ``<site>/``,
    PoC's ``site_logs/<site>/``) or ``"server"`` (SimEnv's ``server/``, a PoC download's ``workspace/``)."""
    logs: dict[str, Path] = {}
    for path in sorted(Path(result_dir).rglob(name), key=lambda p: (len(p.parts), str(p))):
        folders = path.relative_to(result_dir).parts[:-1]
        server = "server" if {"server", "workspace"} & set(folders) else None
        owner = next((s for s in sites or [] if s in folders), server)
        if owner:
            logs.setdefault(owner, path)
    return logs


def _message(line: str) -> str:
    """A log line without its time stamp, logger, level and NVFlare's ``[context] -`` prefix."""
    return re.sub(r"^.*? - (ERROR|WARNING|INFO) - (\[.*?\] - )?", "", line).strip()


def _first_error(path: Path | None) -> str | None:
    lines = path.read_text().splitlines() if path and path.is_file() else []
    return next((_message(line) for line in lines if " - ERROR - " in line), None)


def round_seconds(result_dir: str | Path) -> list[float]:
    """Wall time of each round from the server log (round start to the next round's start / the end)."""
    log = _logs(result_dir, None).get("server")
    marks, last = [], None
    for line in log.read_text().splitlines() if log else []:
        stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)", line)
        if stamp:
            last = datetime.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
        elif last and re.search(r"Round \d+ started\.|Finished FedAvg\.", line):  # banners carry no timestamp
            marks.append(last)
    return [round((b - a).total_seconds(), 2) for a, b in zip(marks, marks[1:], strict=False)]


def left_out(result_dir: str | Path, sites: list[str]) -> dict[str, dict[str, Any]]:
    """Sites the server left out of rounds, ``{site: {"rounds": [...], "reason": ...}}``: from the server's log
    the rounds in which a site sent no update (it could not train) or an error, and from the site's own log,
    where there is one (SimEnv, PoC), its first error line."""
    log, rounds, rnd = _logs(result_dir, sites).get("server"), {}, None
    for line in log.read_text().splitlines() if log else []:
        banner = re.search(r"Round (\d+) started\.", line)
        rnd = int(banner.group(1)) if banner else rnd
        hit = re.search(
            r"Empty result from client (\S+), skipping|Ignore the result from (\S+) at round", line
        )
        if hit:
            rounds.setdefault(hit.group(1) or hit.group(2), set()).add(rnd)
    errors = _logs(result_dir, sites, "error_log.txt")
    return {
        site: {"rounds": sorted(rounds.get(site, ())), "reason": _first_error(errors.get(site))}
        for site in sites
        if site in rounds
    }


def failure(result_dir: str | Path, sites: list[str]) -> str | None:
    """One line on why a job failed (the server's first error, then the sites left out), or ``None``."""
    error = _first_error(_logs(result_dir, sites, "error_log.txt").get("server"))
    if error is None:
        return None
    out = "; ".join(
        f"{s} in rounds {v['rounds']}: {v['reason']}" for s, v in left_out(result_dir, sites).items()
    )
    return f"the job failed: {error}" + (f" (sites left out: {out})" if out else "")


def find_result_model(result_dir: str | Path) -> Path:
    models = sorted(glob.glob(str(Path(result_dir) / "**" / RESULT_MODEL), recursive=True))
    if not models:
        raise RuntimeError(f"no {RESULT_MODEL} under {result_dir}: the job did not complete a round.")
    return Path(models[0])


def check_result(
    result_dir: str | Path,
    strategy: str,
    rounds: int,
    strategy_options: dict | None = None,
    bundle: str | None = None,
    sites: list[str] | None = None,
) -> dict[str, Any]:
    """Weights, server state and meta of a finished job, after checking that it really finished: the model
    exists, its meta is at the last round, its weights are finite, and the server logged no error. Sites left
    out of rounds (they failed; the job went on without them) are in ``left_out``.
    (NVFlare may exit 0 after a failed job: never trust the exit code alone.)"""
    problem = failure(result_dir, sites or [])
    if problem:
        raise RuntimeError(problem)
    path = find_result_model(result_dir)
    strat = make_strategy(bundle, strategy, sites or [], strategy_options)[0] if bundle else None
    weights, state, meta = read_global_model(path, strat)
    if meta.get("current_round") != rounds - 1:
        raise RuntimeError(
            f"{path} is at round {meta.get('current_round')}, expected {rounds - 1}: the job stopped early."
        )
    if not weights or any(v.is_floating_point() and not torch.isfinite(v).all() for v in weights.values()):
        raise RuntimeError(f"{path} holds no or non-finite weights.")
    cross_site = sorted(Path(result_dir).rglob(CROSS_SITE_RESULTS))
    return {
        "path": path,
        "cross_site": json.loads(cross_site[0].read_text()) if cross_site else None,
        "weights": weights,
        "state": state,
        "meta": meta,
        "artifacts": strat.artifacts(state) if strat else {},
        "left_out": left_out(result_dir, sites or []),
    }


def write_output(result: dict[str, Any], output: str | Path) -> Path:
    """``global_model.pt`` (shared weights), ``server_state.pt``, the strategy's artifacts (OmniFM: ``bank.pt``),
    ``result.json`` and, after a cross-site evaluation, ``cross_site.json`` (NVFlare's, ``{site: {model:
    metrics}}``)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result["weights"], out / "global_model.pt")
    torch.save(result["state"], out / "server_state.pt")
    for filename, artifact in result.get("artifacts", {}).items():
        torch.save(artifact, out / filename)
    meta = result["meta"]
    summary = {
        "source": str(result["path"]),
        "current_round": meta.get("current_round"),
        "site_metrics_of_previous_global": meta.get(SITE_METRICS),
        "rejected": meta.get(REJECTED),
        "left_out": result.get("left_out", {}),
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    if result.get("cross_site"):
        (out / "cross_site.json").write_text(json.dumps(result["cross_site"], indent=2))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument(
        "--strategy",
        default="omnifm",
        help=f"one of {', '.join(FEDERATED)}, or a dotted path to a Strategy subclass",
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sites", required=True, help="comma-separated site names (NVFlare client names)")
    p.add_argument(
        "--reference_dir",
        default="outputs/reference_sites",
        help="site data at <reference_dir>/<site> (sim, poc)",
    )
    p.add_argument(
        "--site_dirs", default=None, help='JSON {"site": "data folder"} instead of --reference_dir'
    )
    p.add_argument("--env", default="sim", choices=["sim", "poc"])
    p.add_argument(
        "--export_dir", default=None, help="export the job folder here (production) instead of running it"
    )
    p.add_argument(
        "--data_from_env",
        action="store_true",
        help="put no data paths in the job: sites read OMNIFM_DATASET_DIR",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local_epochs", type=int, default=1)
    p.add_argument("--lr_schedule", default="constant", choices=["constant", "cosine"])
    p.add_argument("--overrides", default="{}", help='JSON bundle overrides, e.g. {"image_size": 32}')
    p.add_argument("--strategy_options", default="{}", help='JSON strategy options, e.g. {"mu": 0.01}')
    p.add_argument(
        "--min_sites",
        type=int,
        default=1,
        help="valid site updates a round needs (default 1, as the simulator); a failing site is left out",
    )
    p.add_argument("--send_weight_diff", action="store_true")
    p.add_argument(
        "--cross_site_eval",
        action="store_true",
        help="after the last round, NVFlare's cross-site evaluation of the final global model on every site",
    )
    p.add_argument(
        "--compression",
        default="none",
        choices=CODECS,
        help="what the sites upload: their update as the difference to the global weights, fp16 or 8-bit blockwise",
    )
    p.add_argument(
        "--poll_interval",
        type=float,
        default=None,
        help=f"seconds between NVFlare's task requests and checks (default {POLL_INTERVAL}; with --export_dir "
        "NVFlare's own, 2 and 0.5)",
    )
    p.add_argument("--external", action="store_true", help="run each site's script as its own process")
    p.add_argument(
        "--command",
        default=None,
        help="interpreter for --external (default: this Python; exported jobs: python3 -u)",
    )
    p.add_argument("--workspace", default=None, help="NVFlare workspace root (default: a temporary folder)")
    p.add_argument(
        "--output", default=None, help="where the global weights go (default: outputs/nvflare_<strategy>)"
    )
    a = p.parse_args(argv)

    sites = [s for s in a.sites.split(",") if s]
    site_dirs = (
        None
        if a.data_from_env
        else (json.loads(a.site_dirs) if a.site_dirs else {s: str(Path(a.reference_dir) / s) for s in sites})
    )
    options = json.loads(a.strategy_options)
    with tempfile.TemporaryDirectory(
        prefix="omnifm_nvflare_"
    ) as staging:  # the job's sources, until it is deployed
        recipe = build_recipe(
            a.bundle,
            a.strategy,
            sites,
            a.rounds,
            site_dirs,
            a.seed,
            a.local_epochs,
            json.loads(a.overrides),
            options,
            a.min_sites,
            a.send_weight_diff,
            a.external,
            staging=staging,
            command=a.command or ("python3 -u" if a.export_dir else None),
            lr_schedule=a.lr_schedule,
            cross_site_eval=a.cross_site_eval,
            compression=a.compression,
            poll_interval=a.poll_interval or (None if a.export_dir else POLL_INTERVAL),
        )
        if a.export_dir:
            print(f"job exported to {export(recipe, a.export_dir)}")
            return
        started = time.perf_counter()
        try:
            result_dir = run(recipe, sites, a.env, a.workspace)
            result = check_result(result_dir, a.strategy, a.rounds, options, a.bundle, sites)
        except RuntimeError as err:
            sys.exit(f"error: {err}")
        seconds = time.perf_counter() - started
    for site, info in result["left_out"].items():
        print(f"site {site} left out of rounds {info['rounds']}: {info['reason'] or 'see its log'}")
    out = write_output(result, a.output or f"outputs/nvflare_{a.strategy}")
    print(
        f"{a.env}: {a.rounds} rounds in {seconds:.1f}s (per round: {round_seconds(result_dir)} s); "
        f"result {result['path']}; global weights in {out}"
    )


if __name__ == "__main__":
    main()
