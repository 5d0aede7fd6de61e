import pytest

from omnifm_monai.data import build_reference_sites


@pytest.fixture(scope="session")
def reference_sites(tmp_path_factory):
    """A small reference-site folder (two MR sites and the CT site when its package is installed)."""
    root = tmp_path_factory.mktemp("reference") / "sites"
    build_reference_sites(root, size=32, sites=["icbm_t1", "icbm_t2w", "head_ct"], slices_per_site=24)
    return root
