"""A MONAI FL client that drives any omnifm_monai bundle under any strategy of :mod:`.strategies`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from monai.fl.client import MonaiAlgo
from monai.fl.client.monai_algo import disable_ckpt_loaders
from monai.fl.utils.constants import ExtraItems, FlStatistics, WeightType
from monai.fl.utils.exchange_object import ExchangeObject
from torch import nn

from .bundle import train_workflow
from .strategies import SiteContext, Strategy, get_strategy

__all__ = ["EXTRA_KEY", "OmniFMClientAlgo"]

logger = logging.getLogger("omnifm_monai.fl")

# key of the strategy-specific payload inside an ExchangeObject (server -> client and client -> server)
EXTRA_KEY = "fl_extra"
NO_LOCAL_VALIDATION = 10**9
# no training metric: its post-processing (softmax, one-hot) and Dice cost time at every step, and
# nothing reads it (sites report the metrics of the aggregated model); the weights trained are the same
TRAIN_METRIC_OFF = {"train::trainer::key_train_metric": None, "train::trainer::postprocessing": None}


class _RegularisedLoss(nn.Module):
    """The bundle's loss plus the strategy's terms ``term() -> scalar`` evaluated at every step."""

    def __init__(self, loss: nn.Module, terms: dict) -> None:
        super().__init__()
        self.loss, self.terms = loss, terms

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = self.loss(input, target)
        for term in self.terms.values():
            value = value + term()
        return value


class OmniFMClientAlgo(MonaiAlgo):
    """MONAI ``ClientAlgo`` for omnifm_monai bundles; what a strategy does on a site is its hooks' business.

    * Private keys (``strategy.private_keys``) are never sent and never overwritten by what the server sends;
      they are kept in this object between rounds, so several clients may share one network (the simulator).
    * Per-site overrides: ``dataset_dir`` (and anything else in ``train_kwargs``); ``ckpt_dir`` and
      ``output_dir`` default to ``<workdir>/<site>/...`` so sites never share files.
    * Weights are sent as full weights, or as differences labelled ``WEIGHT_DIFF`` when
      ``send_weight_diff`` (computed once, here), with the sample and iteration counts.

    Args:
        bundle_root: the bundle folder.
        strategy: a :class:`Strategy` or its name.
        site: site name (``ExtraItems.CLIENT_NAME`` at ``initialize`` takes precedence).
        dataset_dir: this site's data folder.
        local_epochs: epochs per round.
        send_weight_diff: send ``local - global`` instead of full weights.
        workdir: per-site checkpoints and logs go to ``workdir/<site>``.
        train_kwargs: further bundle overrides (a strategy's network overrides among them).
        network: an already built network to train in place (the simulator shares one across sites).
    """

    def __init__(
        self,
        bundle_root: str,
        strategy: Strategy | str = "omnifm",
        site: str | None = None,
        dataset_dir: str | None = None,
        local_epochs: int = 1,
        send_weight_diff: bool = False,
        workdir: str | None = None,
        train_kwargs: Mapping[str, Any] | None = None,
        network: nn.Module | None = None,
    ) -> None:
        super().__init__(
            bundle_root,
            local_epochs=local_epochs,
            send_weight_diff=send_weight_diff,
            config_evaluate_filename=None,
            best_model_filepath=None,
            final_model_filepath=None,
        )
        self.strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
        self.site, self.dataset_dir, self.workdir = site, dataset_dir, workdir
        self.extra_overrides, self.shared_network = dict(train_kwargs or {}), network
        self.private_state: dict[str, torch.Tensor] = {}
        self.ctx: SiteContext | None = None
        self._pending_state: dict[str, Any] = {}
        self.lr_scale = 1.0  # set by the engine each round (engine.round_lr_scale)

    # ------------------------------------------------------------------------------ set-up
    def initialize(self, extra: dict | None = None) -> None:
        extra = dict(extra or {})
        self.site = extra.get(ExtraItems.CLIENT_NAME) or self.site or "site"
        extra[ExtraItems.CLIENT_NAME] = self.site
        workdir = self.workdir or os.path.join(self.bundle_root, "fl")
        self.overrides = {
            "ckpt_dir": os.path.join(workdir, self.site, "models"),
            "output_dir": os.path.join(workdir, self.site, "eval"),
            "val_interval": NO_LOCAL_VALIDATION,  # the federated loop evaluates after aggregation
            **TRAIN_METRIC_OFF,
            **({"dataset_dir": self.dataset_dir} if self.dataset_dir else {}),
            **({"network": self.shared_network} if self.shared_network is not None else {}),
            **self.extra_overrides,
        }
        self.train_workflow = train_workflow(self.bundle_root, **self.overrides)
        super().initialize(extra)
        self.evaluator = self.train_workflow.evaluator
        network = self.trainer.network
        private = self.strategy.private_keys(network)
        self.private_state = {
            k: v.detach().cpu().clone() for k, v in network.state_dict().items() if k in private
        }
        self.ctx = SiteContext(
            site=self.site,
            network=network,
            trainer=self.trainer,
            workflow=self.train_workflow,
            private_keys=private,
            local_epochs=self.local_epochs,
            state=self._pending_state,
            keep_optimizer_state=self.strategy.keep_private_optimizer_state,
        )
        self.trainer.loss_function = _RegularisedLoss(self.trainer.loss_function, self.ctx.loss_terms)
        self.base_lrs = [group["lr"] for group in self.trainer.optimizer.param_groups]
        self.strategy.setup_site(self.ctx)

    @property
    def network(self) -> nn.Module:
        return self.trainer.network

    @property
    def private(self) -> set[str]:
        return self.ctx.private_keys

    @property
    def client_state(self) -> dict[str, Any]:
        """The strategy's state of this site (checkpointed with the private state)."""
        return self.ctx.state if self.ctx is not None else self._pending_state

    @client_state.setter
    def client_state(self, value: dict[str, Any]) -> None:
        if self.ctx is not None:
            self.ctx.state = value
        else:
            self._pending_state = value

    def _shared_state(self) -> dict[str, torch.Tensor]:
        return self.ctx.shared_state()

    def _load(
        self, shared: Mapping[str, torch.Tensor] | None, private: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Load ``shared`` (its private keys ignored), then this site's private state (or ``private``)."""
        values = {k: v for k, v in (shared or {}).items() if k not in self.private}
        values.update(self.private_state if private is None else private)
        self.ctx.load(values)

    # ------------------------------------------------------------------------------ rounds
    def train(self, data: ExchangeObject, extra: dict | None = None) -> None:
        """One round: load the global shared weights (and payload), train ``local_epochs``, keep private state."""
        ctx = self.ctx
        ctx.payload = dict(data.get(EXTRA_KEY, {}) if isinstance(data, dict) else {})
        self._load({k: v for k, v in (data.weights or {}).items() if k not in self.private})
        ctx.global_weights = self._shared_state()  # what the diff is taken against
        ctx.reset_optimizer("optimizer")  # fresh every round, but what stays on the site may keep its own
        for group, lr in zip(self.trainer.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr * self.lr_scale  # the round's learning rate (engine.round_lr_scale)
        self.strategy.before_training(ctx)
        # MonaiAlgo.train loads data.weights again: give it the state we just loaded (all keys, a no-op)
        current = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
        super().train(ExchangeObject(weights=current, weight_type=WeightType.WEIGHTS), extra)
        ctx.save_optimizer("optimizer", self.private)
        self.strategy.after_training(ctx)
        trained = {
            k: v.detach().cpu().clone() for k, v in self.network.state_dict().items() if k in self.private
        }
        bad = [k for k, v in trained.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:  # a diverged round: its update is rejected on the server; the site keeps its last good state
            logger.warning(
                "site %s: NaN/Inf in private %s after training; kept the previous values", self.site, bad[:3]
            )
        else:
            self.private_state = trained

    def get_weights(self, extra: dict | None = None) -> ExchangeObject:
        local = self._shared_state()
        iterations = self.trainer.state.iteration - self.iter_of_start_time
        if self.send_weight_diff:
            weights = {k: local[k] - self.ctx.global_weights[k] for k in local}
            weight_type = WeightType.WEIGHT_DIFF
        else:
            weights, weight_type = local, WeightType.WEIGHTS
        out = ExchangeObject(
            weights=weights if self.strategy.shares_weights else {},
            weight_type=weight_type,
            statistics={
                FlStatistics.NUM_EXECUTED_ITERATIONS: iterations,
                "num_samples": len(self.trainer.data_loader.dataset),
            },
        )
        out[EXTRA_KEY] = self.strategy.upload(self.ctx, local, iterations)
        return out

    def evaluate(self, data: ExchangeObject, extra: dict | None = None) -> ExchangeObject:
        """Metrics of the global shared weights with this site's private state (and the strategy's own
        evaluation weights, e.g. Ditto's personal model) on the validation split, or on the test split with
        ``extra={"split": "test"}`` (the bundle's evaluate.json, checkpoint loading disabled)."""
        self.load_for_evaluation(data)
        evaluator = self.test_evaluator() if (extra or {}).get("split") == "test" else self.evaluator
        evaluator.run()
        return ExchangeObject(metrics={k: float(v) for k, v in evaluator.state.metrics.items()})

    def load_for_evaluation(self, data: ExchangeObject) -> None:
        """Put in the network the model :meth:`evaluate` scores: the shared keys of ``data.weights``, this
        site's private state, the strategy's evaluation weights and what the server's payload carries."""
        own = self.strategy.evaluation_weights(self.ctx)
        self._load(data.weights)
        if own is not None:
            self._load(own)
        self.strategy.prepare_evaluation(self.ctx, data.get(EXTRA_KEY) or {})

    def test_evaluator(self):
        """The bundle's test-split evaluator (train.json + evaluate.json) on this client's network."""
        if getattr(self, "_test_workflow", None) is None:
            workflow = train_workflow(
                self.bundle_root,
                ("train.json", "evaluate.json"),
                **{**self.overrides, "network": self.network},
            )
            disable_ckpt_loaders(workflow.parser)
            workflow.initialize()
            self._test_workflow = workflow
        return self._test_workflow.evaluator
