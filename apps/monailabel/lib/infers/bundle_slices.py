"""MONAI Label inference from an omnifm_monai 2D bundle's own configs: a volume goes through it slice by slice."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from monai.bundle import ConfigParser
from monai.transforms import SaveImaged, SqueezeDimd
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from omnifm_monai.data.validation import DataValidationError, check_inference_input

logger = logging.getLogger(__name__)


class BundleSliceInferTask(BasicInferTask):
    """A segmentation task built from ``configs/train.json`` + ``configs/inference.json`` of a bundle.

    The configs are read as ``python -m monai.bundle run --config_file "['configs/train.json',
    'configs/inference.json']"`` reads them: the network is ``network_def``, the checkpoint
    ``models/model.pt``, and ``preprocessing``, ``inferer`` (``PlanarInferer``: slice by slice along the last
    axis after the RAS reorientation) and ``postprocessing`` (softmax, ``Invertd`` back to the input's grid,
    argmax) run unchanged. Only the bundle's ``SaveImaged`` is left out: MONAI Label writes the label map
    (3D for a volume, ``uint8``, on the input's grid and affine). Label names come from the metadata's
    ``channel_def``. MONAI Label's ``BundleInferTask`` is not used: it reads ``inference.json`` alone (this
    bundle's network is defined in ``train.json``) and imports ``torchvision``, which has no build for the
    CPU torch of this environment.
    """

    def __init__(self, bundle_dir: str | Path, configs=("train.json", "inference.json"), **kwargs) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        configs_dir = self.bundle_dir / "configs"
        self.parser = ConfigParser()
        self.parser.read_config([str(configs_dir / c) for c in configs])
        self.parser["bundle_root"] = str(self.bundle_dir)
        self.parser.get_parsed_content("imports")  # the modules the configs' expressions use
        metadata = json.loads((configs_dir / "metadata.json").read_text())
        pred = next(iter(metadata["network_data_format"]["outputs"].values()))
        labels = {name: int(k) for k, name in pred["channel_def"].items() if name.lower() != "background"}
        super().__init__(
            path=str(self.bundle_dir / "models" / "model.pt"),
            network=self.parser.get_parsed_content("network_def"),
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=3,
            description=f"{metadata['name']} {metadata['version']}: {metadata['task']}",
            load_strict=True,
            **kwargs,
        )
        self.version = metadata["version"]

    def info(self) -> dict:
        return {**super().info(), "version": self.version}

    def __call__(self, request, callbacks=None):
        image = request.get("image")
        if isinstance(image, str):  # refuse what the bundle's own run refuses, before any work
            try:
                check_inference_input(image)
            except DataValidationError as err:
                problem = str(err).removeprefix(f"{image}: ").replace(image, "the upload")
                message = f"cannot segment this image: {problem}"
                raise MONAILabelException(MONAILabelError.INVALID_INPUT, message) from None
        return super().__call__(request, callbacks)

    def pre_transforms(self, data=None):
        return list(self.parser.get_parsed_content("preprocessing").transforms)

    def inferer(self, data=None):
        return self.parser.get_parsed_content("inferer")

    def post_transforms(self, data=None):
        post = self.parser.get_parsed_content("postprocessing").transforms
        return [t for t in post if not isinstance(t, SaveImaged)] + [SqueezeDimd(keys="pred", dim=0)]

    def writer(self, data, extension=None, dtype=None):
        # a client may ask for its own format (3D Slicer: .nrrd); otherwise NIfTI with the bundle's uint8 labels
        extension = extension or (None if data.get("result_extension") else ".nii.gz")
        dtype = dtype or (None if data.get("result_dtype") else "uint8")
        return super().writer(data, extension=extension, dtype=dtype)
