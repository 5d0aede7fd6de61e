"""The MONAI Label app (apps/monailabel): the real server, in its own environment, serves the segmentation bundle.

The server runs from the label environment that ``bash run.sh test`` builds (``OMNIFM_LABEL_PYTHON``); outside
run.sh the test uses ``.venv-label`` and is skipped, saying why, only when that is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monai.bundle import ConfigWorkflow

from omnifm_monai.data import packaged_image

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "omnifm_segmentation"
APP = ROOT / "apps" / "monailabel"
MODEL = "omnifm_segmentation"
LABELS = {"grey matter": 1, "white matter": 2}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def label_python() -> Path:
    configured = os.environ.get("OMNIFM_LABEL_PYTHON")
    if configured:  # run.sh test built the environment: it has to be there
        assert Path(configured).is_file(), f"OMNIFM_LABEL_PYTHON={configured}: no such interpreter"
        return Path(configured)
    default = ROOT / ".venv-label" / "bin" / "python"
    if not default.is_file():
        pytest.skip(
            "no MONAI Label environment (.venv-label): `bash run.sh test` or `bash run.sh label` builds it"
        )
    return default


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _icbm(kind: str, z: slice) -> nib.Nifti1Image:
    """A slab of axial slices of the real ICBM152 2009a template (the icbm_t1 reference site's source volume):
    ``t1`` the image, ``gm`` / ``wm`` its tissue maps; the slab keeps its place in space (its own affine)."""
    t1 = Path(packaged_image("icbm152_t1"))
    return nib.load(t1.parent / t1.name.replace("_t1_", f"_{kind}_")).slicer[:, :, z]


def _icbm_labels(z: slice) -> nib.Nifti1Image:
    """Grey (1) / white (2) matter of the slab from the template's own tissue maps, as the reference sites label it."""
    gm, wm = (np.asarray(_icbm(kind, z).dataobj) for kind in ("gm", "wm"))
    label = np.where((gm > 0.5) & (gm >= wm), 1, np.where(wm > 0.5, 2, 0)).astype(np.uint8)
    return nib.Nifti1Image(label, _icbm("t1", z).affine)


@pytest.fixture(scope="module")
def bundle(reference_sites, tmp_path_factory):
    """The bundle's configs in a folder of their own, with a checkpoint trained briefly on the icbm_t1 site."""
    root = tmp_path_factory.mktemp("label_bundle") / MODEL
    shutil.copytree(BUNDLE / "configs", root / "configs")
    cfg = root / "configs"
    workflow = ConfigWorkflow(
        config_file=str(cfg / "train.json"),
        meta_file=str(cfg / "metadata.json"),
        logging_file=str(cfg / "logging.conf"),
        workflow_type="train",
        bundle_root=str(root),
        dataset_dir=str(reference_sites / "icbm_t1"),
        image_size=32,  # train small; inference runs the configs as they are (128 x 128 slices)
        batch_size=4,
        max_epochs=2,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert (root / "models" / "model.pt").is_file()
    return root


@pytest.fixture(scope="module")
def server(label_python, bundle, tmp_path_factory):
    """``monailabel start_server`` on a free localhost port; a labelled ICBM slab in its datastore."""
    tmp = tmp_path_factory.mktemp("label_server")
    studies = tmp / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    nib.save(_icbm("t1", slice(70, 110)), studies / "icbm_slab.nii.gz")
    nib.save(_icbm_labels(slice(70, 110)), studies / "labels" / "final" / "icbm_slab.nii.gz")
    port = _free_port()
    log = open(tmp / "server.log", "w")
    command = [str(label_python), "-m", "monailabel.main", "start_server", "--app", str(APP)]
    command += ["--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--conf", "bundle", str(bundle), "--conf", "sam2", "false", "--conf", "zoo_source", "github"]
    process = subprocess.Popen(command, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    tail = lambda: (tmp / "server.log").read_text()[-4000:]  # noqa: E731
    start = time.time()
    try:
        while True:
            assert process.poll() is None, f"the server exited ({process.returncode}):\n{tail()}"
            assert time.time() - start < 180, f"the server did not answer within 180 s:\n{tail()}"
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        print(f"MONAI Label server up in {time.time() - start:.1f} s")
        yield {"url": url, "process": process, "log": tail, "tmp": tmp}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _bundle_inference(bundle: Path, image: Path, output_dir: Path) -> Path:
    """The bundle's own inference command, as its docs give it."""
    cfg = bundle / "configs"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    command += [f"['{cfg / 'train.json'}','{cfg / 'inference.json'}']"]
    command += ["--meta_file", str(cfg / "metadata.json")]
    command += ["--bundle_root", str(bundle), "--input_path", str(image), "--output_dir", str(output_dir)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"the bundle's inference failed:\n{run.stderr[-3000:]}"
    (seg,) = output_dir.glob("*_seg.nii.gz")
    return seg


def test_info_names_the_bundle_and_its_labels(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    model = info["models"][MODEL]
    assert model["labels"] == LABELS and info["labels"] == LABELS
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert MODEL in info["trainers"]


def test_infer_gives_the_bundles_own_label_map_on_the_input_grid(server, bundle, tmp_path):
    volume = tmp_path / "icbm_t1_slab.nii.gz"
    nib.save(_icbm("t1", slice(60, 100)), volume)
    start = time.time()
    with open(volume, "rb") as f:
        response = requests.post(
            f"{server['url']}/infer/{MODEL}?output=image", files={"file": (volume.name, f)}, timeout=600
        )
    print(f"MONAI Label inference of a {nib.load(volume).shape} volume: {time.time() - start:.1f} s")
    assert response.status_code == 200, response.text[:2000]
    (tmp_path / "label.nii.gz").write_bytes(response.content)
    label = nib.load(tmp_path / "label.nii.gz")
    expected = nib.load(_bundle_inference(bundle, volume, tmp_path / "bundle"))
    source = nib.load(volume)

    assert label.shape == source.shape  # a 3D label map on the input's grid
    np.testing.assert_allclose(label.affine, source.affine, atol=1e-4)
    np.testing.assert_allclose(label.affine, expected.affine, atol=1e-4)
    values = np.asarray(label.dataobj)
    assert values.dtype == np.uint8 and set(np.unique(values)) <= {0, *LABELS.values()}
    assert len(np.unique(values)) > 1  # it segments something
    np.testing.assert_array_equal(values, np.asarray(expected.dataobj).reshape(values.shape))


@pytest.mark.parametrize(
    "content, problem",
    [(b"", "the file is empty"), (b"\x1f\x8b\x08\x00 not really a NIfTI", "cannot be read as an image")],
    ids=["empty", "corrupt"],
)
def test_a_bad_upload_is_refused_in_one_line_and_the_server_lives_on(server, content, problem):
    response = requests.post(
        f"{server['url']}/infer/{MODEL}?output=image", files={"file": ("scan.nii.gz", content)}, timeout=120
    )
    assert response.status_code == 422, response.text[:2000]
    detail = response.json()["detail"]
    assert detail.startswith("cannot segment this image: ") and problem in detail and "\n" not in detail
    assert "/tmp" not in detail  # the server's temporary file name means nothing to the client
    assert server["process"].poll() is None
    assert requests.get(f"{server['url']}/info/", timeout=30).status_code == 200


def test_train_with_the_bundles_train_json_replaces_the_checkpoint(server, bundle):
    checkpoint = bundle / "models" / "model.pt"
    before = torch.load(checkpoint, weights_only=True)
    start, url = time.time(), server["url"]
    response = requests.post(f"{url}/train/{MODEL}", json={"max_epochs": 1, "val_split": 0.2}, timeout=60)
    assert response.status_code == 200, response.text[:2000]
    status = response.json()
    while status["status"] in ("SUBMITTED", "RUNNING"):
        assert time.time() - start < 600, "training did not finish within 600 s"
        time.sleep(2)
        status = requests.get(f"{url}/train/", timeout=30).json()
    print(f"MONAI Label /train, 1 epoch on a labelled 40-slice volume: {time.time() - start:.1f} s")
    assert status["status"] == "DONE", "\n".join(status.get("details", []))
    after = torch.load(checkpoint, weights_only=True)
    assert after.keys() == before.keys()
    assert any(not torch.equal(after[k], before[k]) for k in before)  # trained from the datastore's labels
