"""A NIfTI writer that writes a prediction with the spatial rank of the image it was made from."""

from __future__ import annotations

from collections.abc import Mapping

from monai.data import NibabelWriter

__all__ = ["InputRankNiftiWriter"]


class InputRankNiftiWriter(NibabelWriter):
    """``NibabelWriter`` that keeps as many spatial axes as the input had (its ``spatial_shape``).

    MONAI's writer squeezes every trailing axis of size 1: a single slice read as a (H, W, 1) volume is
    written 2D and its affine is cut to the in-plane 2x2 block, which is singular for a sagittal or coronal
    slice. Here only the channel axis and axes beyond the input's rank are dropped.
    """

    def set_data_array(
        self, data_array, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs
    ):
        super().set_data_array(data_array, channel_dim=channel_dim, squeeze_end_dims=False, **kwargs)

    def set_metadata(self, meta_dict: Mapping | None, resample: bool = True, **options):
        rank = len((meta_dict or {}).get("spatial_shape", ())) or 2
        while (
            self.data_obj.ndim > rank + 1 and self.data_obj.shape[-2] == 1
        ):  # (..., 1, C): surplus spatial axes
            self.data_obj = self.data_obj[..., 0, :]
        super().set_metadata(meta_dict, resample=resample, **options)  # works on channel-last data
        if self.data_obj.shape[-1] == 1:
            self.data_obj = self.data_obj[..., 0]
