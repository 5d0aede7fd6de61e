"""A MONAI FL client that drives any omnifm_monai bundle under any strategy of :mod:`.strategies`."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.bundle import ConfigWorkflow
from monai.engines import IterationEvents
from monai.fl.client import MonaiAlgo
from monai.fl.client.monai_algo import disable_ckpt_loaders
from monai.fl.utils.constants import ExtraItems, FlStatistics, WeightType
from monai.fl.utils.exchange_object import ExchangeObject
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from omnifm_monai.handlers import site_centroids
from omnifm_monai.transforms import RandAmplitudeMixd, amplitude_bank

from .strategies import Strategy, get_strategy, head_keys

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["EXTRA_KEY", "OmniFMClientAlgo"]

# key of the strategy-specific payload inside an ExchangeObject (server -> client and client -> server)
EXTRA_KEY = "fl_extra"
NO_LOCAL_VALIDATION = 10**9


class _RegularisedLoss(nn.Module):
    """The bundle's loss plus strategy terms ``term() -> scalar`` evaluated at every step."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss, self.terms = loss, {}

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = self.loss(input, target)
        for term in self.terms.values():
            value = value + term()
        return value


class OmniFMClientAlgo(MonaiAlgo):
    """MONAI ``ClientAlgo`` for omnifm_monai bundles.

    * Private keys (``strategy.private_keys``: OmniFM's suffix and bank, FedBN's norms, FedPer's head, or
      everything for local training) are never sent and never overwritten by what the server sends; they
      are kept in this object between rounds, so several clients may share one network in the simulator.
    * Per-site overrides: ``dataset_dir`` (and anything else in ``train_kwargs``); ``ckpt_dir`` and
      ``output_dir`` default to ``<workdir>/<site>/...`` so sites never share files.
    * Weights are sent as full weights, or as differences labelled ``WEIGHT_DIFF`` when
      ``send_weight_diff`` (computed once, here), with the sample and iteration counts.
    * Strategy work on the client (FedProx, FedDyn, Ditto, MOON, SCAFFOLD, FedRep, FedDG, OmniFM's bank
      upload) is switched by the strategy.

    Args:
        bundle_root: the bundle folder.
        strategy: a :class:`Strategy` or its name.
        site: site name (``ExtraItems.CLIENT_NAME`` at ``initialize`` takes precedence).
        dataset_dir: this site's data folder.
        local_epochs: epochs per round.
        send_weight_diff: send ``local - global`` instead of full weights.
        workdir: per-site checkpoints and logs go to ``workdir/<site>``.
        train_kwargs: further bundle overrides.
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
        super().__init__(bundle_root, local_epochs=local_epochs, send_weight_diff=send_weight_diff,
                         config_evaluate_filename=None, best_model_filepath=None, final_model_filepath=None)
        self.strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
        self.site, self.dataset_dir, self.workdir = site, dataset_dir, workdir
        self.extra_overrides, self.shared_network = dict(train_kwargs or {}), network
        self.private_state: dict[str, torch.Tensor] = {}
        self.private: set[str] = set()
        self.client_state: dict[str, Any] = {}  # strategy state kept on the site (controls, personal model, ...)

    # ------------------------------------------------------------------------------ set-up
    def initialize(self, extra: dict | None = None) -> None:
        extra = dict(extra or {})
        self.site = extra.get(ExtraItems.CLIENT_NAME) or self.site or "site"
        extra[ExtraItems.CLIENT_NAME] = self.site
        workdir = self.workdir or os.path.join(self.bundle_root, "fl")
        overrides = {
            "ckpt_dir": os.path.join(workdir, self.site, "models"),
            "output_dir": os.path.join(workdir, self.site, "eval"),
            "val_interval": NO_LOCAL_VALIDATION,  # the federated loop evaluates after aggregation
            **self.strategy.network_overrides,
            **({"dataset_dir": self.dataset_dir} if self.dataset_dir else {}),
            **({"network": self.shared_network} if self.shared_network is not None else {}),
            **self.extra_overrides,
        }
        self.overrides = overrides
        config = os.path.join(self.bundle_root, "configs", "train.json")
        self.train_workflow = ConfigWorkflow(config_file=config, meta_file=None, logging_file=False, workflow_type="train", **overrides)
        parser = self.train_workflow.parser
        # the server's bank replaces the standalone one-site refresh
        parser["train#handlers"] = [h for h in parser["train#handlers"] if "SpectralBankRefresh" not in str(h.get("_target_", ""))]
        if self.strategy.name == "feddg":
            opts = self.strategy.client_options
            parser["train#random_transforms"] = [
                {"_target_": "omnifm_monai.transforms.RandAmplitudeMixd", "keys": "image", "bank": None, "beta": opts["beta"]},
                *parser["train#random_transforms"],
            ]
        super().initialize(extra)
        self.evaluator = self.train_workflow.evaluator
        network = self.trainer.network
        self.private = self.strategy.private_keys(network)
        self.private_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items() if k in self.private}
        self.trainer.loss_function = _RegularisedLoss(self.trainer.loss_function)
        self._attach_strategy_hooks()

    @property
    def network(self) -> nn.Module:
        return self.trainer.network

    def _shared_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items() if k not in self.private}

    def _load(self, shared: Mapping[str, torch.Tensor] | None, private: Mapping[str, torch.Tensor] | None = None) -> None:
        """Load ``shared`` (its private keys ignored), then this site's private state (or ``private``)."""
        values = {k: v for k, v in (shared or {}).items() if k not in self.private}
        values.update(self.private_state if private is None else private)
        state = self.network.state_dict()
        for k, v in values.items():
            if k in state:
                state[k].copy_(torch.as_tensor(v).reshape(state[k].shape))

    # ------------------------------------------------------------------------------ strategy hooks
    def _attach_strategy_hooks(self) -> None:
        name, opts, loss = self.strategy.name, self.strategy.client_options, self.trainer.loss_function
        if name in ("fedprox", "feddyn"):
            mu = opts["mu"] if name == "fedprox" else opts["alpha"]
            loss.terms["proximal"] = lambda: mu / 2 * self._distance_to_global()
        if name == "feddyn":
            loss.terms["linear"] = lambda: -sum((p * self.client_state["grad"][n]).sum() for n, p in self._trainable() if n in self.client_state.get("grad", {}))
        if name == "moon":
            self._attach_moon(opts["mu"], opts["temperature"])
        if name == "scaffold":
            self.trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._scaffold_correct)
        if name == "fedrep":
            self.trainer.add_event_handler(Events.EPOCH_STARTED, self._fedrep_phase)

    def _trainable(self):
        return [(n, p) for n, p in self.network.named_parameters() if p.requires_grad and n not in self.private]

    def _distance_to_global(self) -> torch.Tensor:
        ref = self.client_state.get("global")
        if not ref:
            return torch.zeros(())
        return sum((p - ref[n].to(p.device)).pow(2).sum() for n, p in self._trainable() if n in ref)

    def _attach_moon(self, mu: float, temperature: float) -> None:
        captured: dict[str, Any] = {}
        self.network.register_forward_pre_hook(lambda _, args: captured.__setitem__("args", args))
        self._moon_models: dict[str, nn.Module] = {}

        def features(network: nn.Module, args) -> torch.Tensor:
            tokens, _ = network.adapter.encode(network.backbone, *args)
            return F.normalize(tokens.mean(1).flatten(1), dim=-1)

        def reference(name: str) -> nn.Module:
            model = self._moon_models.get(name)
            if model is None:
                model = self._moon_models[name] = copy.deepcopy(self.network).eval().requires_grad_(False)
            model.load_state_dict(self.client_state[name])
            return model

        def contrastive() -> torch.Tensor:
            if "global_model" not in self.client_state or "args" not in captured:
                return torch.zeros(())
            z = features(self.network, captured["args"])
            with torch.no_grad():
                z_glob = features(reference("global_model"), captured["args"])
                z_prev = features(reference("previous_model"), captured["args"])
            logits = torch.stack([(z * z_glob).sum(-1), (z * z_prev).sum(-1)], dim=1) / temperature
            return mu * F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))

        self.trainer.loss_function.terms["moon"] = contrastive

    def _scaffold_correct(self, engine) -> None:
        c, c_i = self.client_state.get("control"), self.client_state.get("local_control")
        if not c:
            return
        for n, p in self._trainable():
            if p.grad is not None and n in c:
                p.grad.add_(c[n].to(p.device) - c_i.get(n, torch.zeros_like(c[n])).to(p.device))

    def _fedrep_phase(self, engine) -> None:
        head = head_keys(self.network)
        head_phase = engine.state.epoch - self.client_state.get("round_start_epoch", 0) <= self.strategy.client_options["head_epochs"]
        for n, p in self.network.named_parameters():
            trainable = (n in head) == head_phase or n in self.private - head  # suffix etc. always train
            p.requires_grad_(trainable)
            if not trainable:
                p.grad = None

    # ------------------------------------------------------------------------------ rounds
    def train(self, data: ExchangeObject, extra: dict | None = None) -> None:
        """One round: load the global shared weights (and payload), train ``local_epochs``, keep private state."""
        payload = data.get(EXTRA_KEY, {}) if isinstance(data, dict) else {}
        global_weights = {k: v for k, v in (data.weights or {}).items() if k not in self.private}
        self._load(global_weights)
        self.global_weights = self._shared_state()  # what the diff is taken against
        self._before_round(payload)
        # MonaiAlgo.train loads data.weights again: give it the state we just loaded (all keys, a no-op)
        current = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
        super().train(ExchangeObject(weights=current, weight_type=WeightType.WEIGHTS), extra)
        if self.strategy.name == "ditto":
            self._train_personal(self.strategy.client_options["lam"])
        if self.strategy.name == "moon":
            self.client_state["local_model"] = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        self.private_state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items() if k in self.private}

    def _before_round(self, payload: Mapping[str, Any]) -> None:
        name = self.strategy.name
        self.client_state["round_start_epoch"] = self.trainer.state.epoch
        self.trainer.optimizer.state.clear()  # a fresh local optimiser every round: nothing stale across rounds
        if name in ("fedprox", "feddyn", "ditto"):
            self.client_state["global"] = {n: p.detach().clone() for n, p in self._trainable()}
        if name == "feddyn":
            self.client_state.setdefault("grad", {n: torch.zeros_like(p) for n, p in self._trainable()})
        if name == "moon":  # previous = this site's model after its last round (the global one at first)
            state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            self.client_state["previous_model"] = self.client_state.get("local_model", state)
            self.client_state["global_model"] = state
        if name == "scaffold":
            self.client_state["control"] = payload.get("control") or {}
            self.client_state.setdefault("local_control", {k: torch.zeros_like(v) for k, v in self.client_state["control"].items()})
            self.client_state["start_iteration"] = self.trainer.state.iteration
        if name == "feddg":
            pool = payload.get("amplitudes") or {}
            others = [a for site, a in pool.items() if site != self.site]
            for t in self.train_workflow.parser.get_parsed_content("train#random_transforms"):
                if isinstance(t, RandAmplitudeMixd):
                    t.set_bank(torch.cat(others).numpy() if others else None)
        bank = getattr(self.network, "bank", None)
        if bank is not None and payload.get("bank") is not None:
            bank.load_tensors(payload["bank"])
            self.client_state["hits_at_start"] = bank.hits.clone()

    def _train_personal(self, lam: float) -> None:
        """Ditto: from the stored personal model, the same epochs with ``lam/2 ||v - w_global||^2``."""
        global_model = self._shared_state()
        personal = self.client_state.get("personal", global_model)
        self._load(personal)
        self.trainer.optimizer.state.clear()
        loss = self.trainer.loss_function
        loss.terms["ditto"] = lambda: lam / 2 * self._distance_to_global()
        self.trainer.state.max_epochs = self.trainer.state.epoch + self.local_epochs
        self.trainer.run()
        del loss.terms["ditto"]
        self.client_state["personal"] = self._shared_state()
        self._load(global_model)  # what is sent is the global-track model

    def get_weights(self, extra: dict | None = None) -> ExchangeObject:
        local = self._shared_state()
        iterations = self.trainer.state.iteration - self.iter_of_start_time
        if self.send_weight_diff:
            weights = {k: local[k] - self.global_weights[k] for k in local}
            weight_type = WeightType.WEIGHT_DIFF
        else:
            weights, weight_type = local, WeightType.WEIGHTS
        num_samples = len(self.trainer.data_loader.dataset)
        out = ExchangeObject(
            weights={} if self.strategy.name == "local" else weights,
            weight_type=weight_type,
            statistics={FlStatistics.NUM_EXECUTED_ITERATIONS: iterations, "num_samples": num_samples},
        )
        out[EXTRA_KEY] = self._upload(local, iterations)
        return out

    def _upload(self, local: Mapping[str, torch.Tensor], iterations: int) -> dict[str, Any]:
        name, upload = self.strategy.name, {}
        bank = getattr(self.network, "bank", None)
        if name == "omnifm" and bank is not None:
            loader = self.train_workflow.parser.get_parsed_content("train#bank_dataloader", default=self.trainer.data_loader)
            upload["bank_keys"] = site_centroids(self.network, loader, self.strategy.client_options["num_centroids"], device=self.trainer.state.device)
            upload["modality"] = self.train_workflow.parser.get_parsed_content("datalist_meta")["modality"]
            start = self.client_state.get("hits_at_start", torch.zeros_like(bank.hits))
            upload["bank_hits"] = (bank.hits - start)[: len(bank)].cpu()
        if name == "scaffold" and self.client_state.get("control"):
            lr = self.trainer.optimizer.param_groups[0]["lr"]
            steps = max(1, iterations)
            c, c_i = self.client_state["control"], self.client_state["local_control"]
            new_c_i = {k: c_i[k] - c[k] + (self.global_weights[k] - local[k]) / (steps * lr) for k in c}
            upload["control_delta"] = {k: new_c_i[k] - c_i[k] for k in c}
            self.client_state["local_control"] = new_c_i
        if name == "feddyn":
            alpha = self.strategy.client_options["alpha"]
            grad = self.client_state["grad"]
            for n, _ in self._trainable():
                grad[n] = grad[n] - alpha * (local[n] - self.global_weights[n]).to(grad[n].device)
        if name == "feddg":
            dataset = self.trainer.data_loader.dataset
            count = min(self.strategy.client_options["num_amplitudes"], len(dataset))
            images = [dataset[int(i)]["image"] for i in torch.linspace(0, len(dataset) - 1, count).long()]
            upload["amplitudes"] = torch.as_tensor(amplitude_bank(images))
        return upload

    def evaluate(self, data: ExchangeObject, extra: dict | None = None) -> ExchangeObject:
        """Metrics of the global shared weights with this site's private state (Ditto: its personal model)
        on the validation split, or on the test split with ``extra={"split": "test"}`` (the bundle's
        evaluate.json, checkpoint loading disabled)."""
        self.load_for_evaluation(data)
        evaluator = self.test_evaluator() if (extra or {}).get("split") == "test" else self.evaluator
        evaluator.run()
        return ExchangeObject(metrics={k: float(v) for k, v in evaluator.state.metrics.items()})

    def load_for_evaluation(self, data: ExchangeObject) -> None:
        """Put in the network the model :meth:`evaluate` scores: the shared keys of ``data.weights``, this
        site's private state (Ditto: its personal model) and the bank of the server's payload, if any."""
        personal = self.client_state.get("personal") if self.strategy.name == "ditto" else None
        self._load(data.weights)
        if personal is not None:
            self._load(personal)
        bank = getattr(self.network, "bank", None)
        payload = data.get(EXTRA_KEY) or {}
        if bank is not None and payload.get("bank") is not None:  # evaluate with the bank the server just merged
            bank.load_tensors(payload["bank"])

    def test_evaluator(self):
        """The bundle's test-split evaluator (train.json + evaluate.json) on this client's network."""
        if getattr(self, "_test_workflow", None) is None:
            configs = [os.path.join(self.bundle_root, "configs", f) for f in ("train.json", "evaluate.json")]
            workflow = ConfigWorkflow(config_file=configs, meta_file=None, logging_file=False, workflow_type=None,
                                      **{**self.overrides, "network": self.network})
            disable_ckpt_loaders(workflow.parser)
            workflow.initialize()
            self._test_workflow = workflow
        return self._test_workflow.parser.get_parsed_content("validate#evaluator")
