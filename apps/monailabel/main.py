"""MONAI Label app serving the omnifm_monai segmentation bundle (grey / white matter) to 3D Slicer and OHIF.

Start it (from the repository root) with ``bash run.sh label``, or in the label environment::

    monailabel start_server --app apps/monailabel --studies <folder of volumes> --host 127.0.0.1 --port 8000 \\
        --conf sam2 false --conf zoo_source github

``--conf bundle <folder>`` serves another copy of the bundle (default: ``bundles/omnifm_segmentation`` of this
repository); its checkpoint is ``<bundle>/models/model.pt``. ``--conf skip_trainers true`` serves inference only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import HTTPException
from lib.infers.bundle_slices import BundleSliceInferTask
from lib.trainers.bundle_slices import BundleSliceTrainTask
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)

MODEL = "omnifm_segmentation"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / MODEL


class OmniFMApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.bundle = Path(conf.get("bundle") or DEFAULT_BUNDLE).resolve()
        if not (self.bundle / "configs" / "inference.json").is_file():
            raise ValueError(f"--conf bundle {self.bundle}: not a bundle folder (no configs/inference.json).")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="OmniFM brain tissue segmentation",
            description="Grey / white matter segmentation of brain MR, slice by slice (omnifm_monai bundle).",
            version="0.1.0",
            labels={"grey matter": 1, "white matter": 2},
        )

    def init_infers(self):
        task = BundleSliceInferTask(self.bundle)
        if not task.is_valid():
            logger.warning("%s: no checkpoint %s yet: train the bundle first", MODEL, task.path[0])
        return {MODEL: task}

    def init_trainers(self):
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return {MODEL: BundleSliceTrainTask(self.bundle, self.conf)}

    def init_strategies(self):
        return {"random": Random(), "first": First()}

    def infer(self, request, datastore=None):
        try:
            return super().infer(request, datastore)
        except MONAILabelException as err:  # a bad upload or model name: the client's error, said in one line
            if err.error != MONAILabelError.INVALID_INPUT:
                raise
            raise HTTPException(status_code=422, detail=err.msg) from None
