"""MONAI Label training with a 2D omnifm_monai bundle's own train.json, on the datastore's labelled volumes."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.bundle import ConfigParser
from monai.transforms import Compose, LoadImaged
from monailabel.tasks.train.bundle import BundleTrainTask

from omnifm_monai.transforms import PlaneOrientationd, ResizePlanard

logger = logging.getLogger(__name__)

GAP = 3  # unused slices between a volume's training and validation slabs, as in the reference sites


class BundleSliceTrainTask(BundleTrainTask):
    """MONAI Label's ``BundleTrainTask`` on ``configs/train.json`` as it is, which trains on 2D slices.

    Every labelled volume of the datastore is brought to what the bundle's inference gives the network (its
    ``preprocessing``: RAS, intensities scaled to [0, 1] by percentiles, slices resized to ``image_size``;
    labels by nearest neighbour) and cut into its axial slices that hold a label. Each volume's lower slices
    train and its upper ``val_split`` share validates, ``GAP`` slices apart, so a single labelled volume
    trains too. The slices and their datalist (the bundle's ``dataset_dir`` layout) live in a temporary
    folder for the run; the best checkpoint replaces ``models/model.pt``, which the inference task reloads.
    """

    def __init__(self, bundle_dir: str | Path, conf: dict, **kwargs) -> None:
        super().__init__(str(Path(bundle_dir).resolve()), conf, load_strict=True, **kwargs)
        self.dataset_dir: Path | None = None

    def config(self):
        return {**super().config(), "max_epochs": 5, "modality": "MR T1w"}

    def __call__(self, request, datastore):
        with tempfile.TemporaryDirectory(prefix="omnifm_slices_") as folder:
            self.dataset_dir = Path(folder)
            self.modality = request.get("modality", "MR T1w")
            try:
                return super().__call__(request, datastore)
            finally:
                self.dataset_dir = None

    def _partition_datalist(self, datalist, request, shuffle=False):
        if not datalist:
            raise ValueError("no labelled volume in the datastore: save a label for an image first.")
        val_split = float(request.get("val_split", 0.2))
        preprocessing = self._preprocessing()
        training, validation = [], []
        for index, item in enumerate(datalist):
            slices = self._write_slices(preprocessing(dict(item)), index)
            if len(slices) < 2 + GAP:
                raise ValueError(f"{item['label']}: {len(slices)} labelled slices, {2 + GAP} at least.")
            n_val = min(max(1, round(val_split * len(slices))), len(slices) - GAP - 1)
            training += slices[: len(slices) - n_val - GAP]
            validation += slices[len(slices) - n_val :]
        meta = json.loads(Path(self.bundle_metadata_path).read_text())
        channels = next(iter(meta["network_data_format"]["outputs"].values()))["channel_def"]
        content = {
            "modality": self.modality,
            "labels": channels,
            "training": training,
            "validation": validation,
        }
        (self.dataset_dir / "segmentation.json").write_text(json.dumps(content, indent=1))
        logger.info(
            "%d volume(s): %d training, %d validation slices",
            len(datalist),
            len(training),
            len(validation),
        )
        return training, validation

    def _update_overrides(self, overrides):
        # the datalist check, the modality and the bank's data come from dataset_dir
        overrides["dataset_dir"] = str(self.dataset_dir)
        return overrides

    def _preprocessing(self) -> Compose:
        """The inference ``preprocessing`` of the bundle for the image, its geometric part for the label."""
        parser = ConfigParser()
        configs = Path(self.bundle_config_path).parent
        parser.read_config([str(configs / "train.json"), str(configs / "inference.json")])
        parser["bundle_root"] = self.bundle_path
        parser.get_parsed_content("imports")
        image = parser.get_parsed_content("preprocessing").transforms
        size = parser.get_parsed_content("image_size")
        label = [
            LoadImaged(keys="label", ensure_channel_first=True, image_only=True),
            PlaneOrientationd(keys="label", axcodes="RAS"),
            ResizePlanard(keys="label", size=size, mode="nearest"),
        ]
        return Compose([*image, *label])

    def _write_slices(self, data: dict, index: int) -> list[dict]:
        image, label = np.asarray(data["image"])[0], np.rint(np.asarray(data["label"])[0]).astype(np.uint8)
        if image.shape != label.shape:
            raise ValueError(f"image and label grids differ: {image.shape} and {label.shape}.")
        if image.ndim == 2:
            image, label = image[..., None], label[..., None]
        items = []
        for z in np.nonzero(label.reshape(-1, label.shape[-1]).any(axis=0))[0]:
            item = {}
            for key, array in (("image", image[..., z].astype(np.float32)), ("label", label[..., z])):
                path = self.dataset_dir / f"{key}s" / f"v{index:03d}_z{z:04d}.nii.gz"
                path.parent.mkdir(exist_ok=True)
                nib.save(nib.Nifti1Image(array, np.eye(4)), path)
                item[key] = str(path)
            items.append(item)
        return items
