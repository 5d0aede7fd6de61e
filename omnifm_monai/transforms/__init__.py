"""MONAI-style transforms: array versions and dictionary versions (``d`` / ``D`` / ``Dict``).

Spectral (Fourier-domain) transforms, the BraTS label map, planar resizing / slicing, question tokens, and a
``Compose`` that runs a training pipeline's augmentations on plain tensors.
"""

from .array import (
    AmplitudeMix,
    AmplitudeNormalize,
    ConvertBraTSLabels,
    LowFrequencyLogAmplitude,
    RandAmplitudeMix,
    SuperResolutionDegrade,
    amplitude_bank,
)
from .compose import PlainTensorCompose
from .dictionary import (
    AmplitudeMixD,
    AmplitudeMixd,
    AmplitudeMixDict,
    AmplitudeNormalizeD,
    AmplitudeNormalized,
    AmplitudeNormalizeDict,
    ConvertBraTSLabelsD,
    ConvertBraTSLabelsd,
    ConvertBraTSLabelsDict,
    LowFrequencyLogAmplitudeD,
    LowFrequencyLogAmplituded,
    LowFrequencyLogAmplitudeDict,
    RandAmplitudeMixD,
    RandAmplitudeMixd,
    RandAmplitudeMixDict,
    SuperResolutionDegradeD,
    SuperResolutionDegraded,
    SuperResolutionDegradeDict,
)
from .planar import PlaneOrientation, PlaneOrientationd, ResizePlanard, SliceItemsd, plane_axcodes
from .text import PAD, UNKNOWN, TokenizeQuestiond, build_vocabulary, words

__all__ = [
    "AmplitudeMix",
    "AmplitudeMixd",
    "AmplitudeMixD",
    "AmplitudeMixDict",
    "AmplitudeNormalize",
    "AmplitudeNormalized",
    "AmplitudeNormalizeD",
    "AmplitudeNormalizeDict",
    "ConvertBraTSLabels",
    "ConvertBraTSLabelsd",
    "ConvertBraTSLabelsD",
    "ConvertBraTSLabelsDict",
    "LowFrequencyLogAmplitude",
    "LowFrequencyLogAmplituded",
    "LowFrequencyLogAmplitudeD",
    "LowFrequencyLogAmplitudeDict",
    "RandAmplitudeMix",
    "RandAmplitudeMixd",
    "RandAmplitudeMixD",
    "RandAmplitudeMixDict",
    "SuperResolutionDegrade",
    "SuperResolutionDegraded",
    "SuperResolutionDegradeD",
    "SuperResolutionDegradeDict",
    "amplitude_bank",
    "PAD",
    "UNKNOWN",
    "PlainTensorCompose",
    "PlaneOrientation",
    "PlaneOrientationd",
    "ResizePlanard",
    "SliceItemsd",
    "TokenizeQuestiond",
    "build_vocabulary",
    "plane_axcodes",
    "words",
]
