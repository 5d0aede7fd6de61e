"""What the FL layer reads from a bundle, all through MONAI's bundle workflow objects.

MONAI's train workflow already names ``network_def``, ``train::trainer``, ``train::handlers``,
``validate::evaluator``, ``dataset_dir``, ... as properties. An omnifm_monai bundle adds the few below
(:data:`OMNIFM_PROPERTIES`), registered on the workflow with ``add_property`` so they are checked and read
as ``workflow.<name>`` like MONAI's own; nothing else in ``fl/`` knows a config id.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import optional_import
from torch import nn

from omnifm_monai.errors import SettingsError

__all__ = [
    "OMNIFM_PROPERTIES",
    "argument_names",
    "build_network",
    "bundle_parser",
    "bundle_task",
    "check_overrides",
    "find_sites",
    "key_metric",
    "network_class",
    "train_workflow",
]

#: name -> (config id, required, description)
OMNIFM_PROPERTIES: dict[str, tuple[str, bool, str]] = {
    "task": ("task", True, "the datalist a site folder holds: <dataset_dir>/<task>.json"),
    "datalist_meta": (
        "datalist_meta",
        True,
        "the site's parsed datalist (its `modality` tags the site's uploads)",
    ),
    "bank_dataloader": (
        "train::bank_dataloader",
        False,
        "the training images without random transforms (bank summaries)",
    ),
}


def _configs(bundle: str | Path, names: Sequence[str]) -> list[str]:
    configs = [str(Path(bundle) / "configs" / n) for n in names]
    missing = [c for c in configs if not Path(c).is_file()]
    if missing:
        raise FileNotFoundError(f"not a bundle: {missing[0]} does not exist.")
    return configs


def train_workflow(
    bundle: str | Path, configs: Sequence[str] = ("train.json",), **overrides: Any
) -> ConfigWorkflow:
    """The bundle's train workflow (not yet initialised) with ``overrides`` and the OmniFM properties."""
    workflow = ConfigWorkflow(
        config_file=_configs(bundle, configs),
        meta_file=None,
        logging_file=False,
        workflow_type="train",
        **overrides,
    )
    for name, (config_id, required, desc) in OMNIFM_PROPERTIES.items():
        workflow.add_property(name, required=required, config_id=config_id, desc=desc)
    return workflow


def bundle_parser(bundle: str | Path, overrides: Mapping[str, Any] | None = None) -> ConfigParser:
    """The bundle's ``train.json`` parsed lazily (nothing instantiated until asked), with ``overrides``."""
    parser = ConfigParser()
    parser.read_config(_configs(bundle, ["train.json"]))
    parser.update(dict(overrides or {}))
    return parser


def check_overrides(bundle: str | Path, overrides: Mapping[str, Any] | None) -> None:
    """Refuse an override that names nothing: its id must exist in the bundle's ``train.json`` (or
    ``evaluate.json``), or name an argument of a component there (``network_def#private_norms``), so a typo
    fails at once instead of being ignored."""
    parser = ConfigParser()
    names = ["train.json"] + (
        ["evaluate.json"] if (Path(bundle) / "configs" / "evaluate.json").is_file() else []
    )
    parser.read_config(_configs(bundle, names))
    unknown = []
    for key in overrides or {}:
        key_id = str(key).replace("::", "#")
        if key_id in parser:
            continue
        parent, _, arg = key_id.rpartition("#")
        target = parser.get(parent, {}).get("_target_") if parent and parent in parser else None
        if isinstance(target, str) and _accepts(target, arg):
            continue
        unknown.append(key)
    if unknown:
        raise SettingsError(
            f"override(s) {unknown} name nothing in {Path(bundle) / 'configs'} (train.json, evaluate.json): "
            "no such config id, and no argument of that name for the component."
        )


def _accepts(target: str, arg: str) -> bool:
    module, _, name = target.rpartition(".")
    component, found = optional_import(module, name=name)
    return found and arg in argument_names(component)


def argument_names(component: Any) -> set[str] | Any:
    """The keyword arguments ``component`` takes by name; a class's are those of every ``__init__`` in its
    MRO (subclasses forward ``**kwargs`` to their parents); a function with ``**kwargs`` takes any name."""
    if inspect.isclass(component):
        names: set[str] = set()
        for cls in component.__mro__[:-1]:  # object's takes nothing
            if "__init__" in vars(cls):
                names |= _named(inspect.signature(cls.__init__).parameters.values())
        return names
    params = list(inspect.signature(component).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return _AnyName()
    return _named(params)


def _named(params) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in kinds and p.name != "self"}


class _AnyName(set):
    def __contains__(self, item: object) -> bool:
        return True


def bundle_task(bundle: str | Path) -> str:
    """The datalist task a bundle reads (``segmentation``, ``classification``, ...)."""
    parser = bundle_parser(bundle)
    if OMNIFM_PROPERTIES["task"][0] not in parser:
        raise ValueError(
            f"{bundle}/configs/train.json defines no `task` id; the FL layer needs it to find site data."
        )
    return parser[OMNIFM_PROPERTIES["task"][0]]


def network_class(bundle: str | Path) -> type:
    """The class the bundle's ``network_def`` builds (what a strategy asks which switches it has)."""
    target = bundle_parser(bundle).get("network_def", {}).get("_target_")
    if not isinstance(target, str):
        raise ValueError(f"{bundle}: `network_def` must be a component with a `_target_`.")
    module, _, name = target.rpartition(".")
    cls, found = optional_import(module, name=name)
    if not found:
        raise ValueError(f"{bundle}: cannot import the network class {target!r}.")
    return cls


def build_network(bundle: str | Path, overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """The bundle's ``network_def`` with ``overrides`` (e.g. a strategy's network overrides)."""
    return bundle_parser(bundle, overrides).get_parsed_content("network_def")


def key_metric(bundle: str | Path) -> str:
    """The name of the validation key metric (e.g. ``val_mean_dice``)."""
    return next(iter(bundle_parser(bundle).get("validate::key_metric")))


def find_sites(root: str | Path, task: str) -> dict[str, str]:
    """Every site folder under ``root`` holding the task's datalist, name -> folder (the one data layout)."""
    from omnifm_monai.data.layout import find_sites as _find

    return _find(root, task)
