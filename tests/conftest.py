import pytest

from omnifm_monai.data import build_reference_sites


@pytest.fixture(scope="session")
def reference_sites(tmp_path_factory):
    """A small reference-site folder (two MR sites and the CT site when its package is installed)."""
    root = tmp_path_factory.mktemp("reference") / "sites"
    build_reference_sites(root, size=32, sites=["icbm_t1", "icbm_t2w", "head_ct"], slices_per_site=24)
    return root


@pytest.fixture(scope="session")
def reference_slices(reference_sites):
    """The real training slices of the reference sites, ``(N, 1, 32, 32)``, with each slice's site index."""
    import json

    import nibabel as nib
    import numpy as np
    import torch

    images, labels = [], []
    sites = sorted(p.name for p in reference_sites.iterdir() if (p / "classification.json").is_file())
    for index, site in enumerate(sites):
        datalist = json.loads((reference_sites / site / "classification.json").read_text())
        for item in datalist["training"]:
            data = np.asarray(nib.load(reference_sites / site / item["image"]).dataobj, dtype=np.float32)
            images.append(torch.from_numpy(data.squeeze())[None])
            labels.append(index)
    return torch.stack(images), torch.tensor(labels)
