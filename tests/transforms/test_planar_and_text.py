import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, Invertd

from omnifm_monai.transforms import ResizePlanard, SliceItemsd, TokenizeQuestiond, build_vocabulary, words


def _meta_image(*shape):
    affine = torch.diag(torch.tensor([0.5, 0.7, 2.0, 1.0], dtype=torch.float64))
    return MetaTensor(torch.rand(*shape), affine=affine)


@pytest.mark.parametrize("shape,expected", [((1, 40, 56), (1, 32, 32)), ((1, 40, 56, 5), (1, 32, 32, 5))])
def test_resize_planar_keeps_slices_and_inverts(shape, expected):
    pre = Compose([ResizePlanard("image", 32)])
    out = pre({"image": _meta_image(*shape)})
    assert tuple(out["image"].shape) == expected
    out["pred"] = out["image"].clone()
    restored = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(out)["pred"]
    assert tuple(restored.shape) == shape
    assert torch.allclose(restored.affine, _meta_image(*shape).affine)


def test_slice_items_split_volumes_and_keep_2d():
    vol = {"image": torch.arange(2 * 3 * 4 * 5.0).reshape(1, 6, 4, 5), "name": "v"}
    items = SliceItemsd("image")(vol)
    assert [i["slice_index"] for i in items] == list(range(5))
    assert torch.equal(items[3]["image"], vol["image"][..., 3]) and items[3]["name"] == "v"
    assert list_data_collate([items])["image"].shape == (5, 1, 6, 4)
    single = SliceItemsd("image")({"image": torch.zeros(1, 6, 4)})
    assert len(single) == 1 and single[0]["slice_index"] == 0


def test_vocabulary_and_tokenisation_round_trip():
    questions = ["Is white matter visible?", "What modality is this image?", "is GREY matter larger?"]
    vocab = build_vocabulary(questions)
    assert vocab[:2] == ["<pad>", "<unk>"] and vocab[2:] == sorted(set(vocab[2:]))
    tok = TokenizeQuestiond("q", vocab, max_length=6)
    ids = tok({"q": "What modality is this image?"})["q"]
    assert ids.dtype == torch.long and ids.shape == (6,)
    assert [vocab[i] for i in ids if i] == words("What modality is this image?")
    assert ids[5] == 0  # padded
    assert tok({"q": "is bone visible"})["q"][1] == 1  # unknown word
    assert len(tok({"q": " ".join(["is"] * 10)})["q"]) == 6  # truncated
    with pytest.raises(ValueError, match="vocabulary"):
        TokenizeQuestiond("q", ["a", "b"])


def test_plane_orientation_keeps_a_single_slice_in_its_plane_and_its_voxels_in_place():
    """A sagittal / coronal slice goes to RAS with its normal last (ASR / RSA): one slice on the last axis,
    each voxel at the same world position; a volume goes to RAS; Invertd-style inverse restores the input."""
    import numpy as np
    import torch
    from monai.data import MetaTensor

    from omnifm_monai.transforms import PlaneOrientation, PlaneOrientationd

    values = torch.arange(1 * 4 * 3 * 1, dtype=torch.float32).reshape(1, 4, 3, 1)
    # array axes (i, j, k) -> world: i along -S, j along +A, k (the singleton) along +R: a sagittal slice
    affine = torch.tensor([[0, 0, 2.0, 0], [0, 1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 1]])
    image = MetaTensor(values, affine=affine)
    out = PlaneOrientation(axcodes="RAS")(image)
    assert out.shape == (1, 3, 4, 1)  # (A, S, R): the plane first, the normal last

    def world(img):
        a = np.asarray(img.affine)
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in img.shape[1:]], indexing="ij"), -1).reshape(-1, 3)
        pos = idx @ a[:3, :3].T + a[:3, 3]
        return {tuple(np.round(p, 6)): float(v) for p, v in zip(pos, img[0].numpy().reshape(-1), strict=True)}

    assert world(out) == world(image)
    volume = MetaTensor(torch.rand(1, 4, 3, 2), affine=affine)
    assert PlaneOrientation(axcodes="RAS")(volume).shape == (1, 2, 3, 4)  # a volume: plain RAS
    xform = PlaneOrientationd(keys="image", axcodes="RAS")
    restored = xform.inverse(xform({"image": image}))["image"]
    assert torch.equal(restored.as_tensor(), values) and torch.allclose(
        restored.affine.double(), affine.double()
    )
