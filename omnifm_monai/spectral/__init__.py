"""The project's one spectral convention: every FFT in OmniFM goes through this module."""

from .fft import (
    SPECTRAL_NORM,
    amplitude_phase,
    check_beta,
    fft_centered,
    ifft_centered,
    log_amplitude,
    low_pass_half_width,
    low_pass_log_amplitude,
    low_pass_slices,
    merge_amplitude_phase,
)

__all__ = [
    "SPECTRAL_NORM",
    "amplitude_phase",
    "check_beta",
    "fft_centered",
    "ifft_centered",
    "log_amplitude",
    "low_pass_half_width",
    "low_pass_log_amplitude",
    "low_pass_slices",
    "merge_amplitude_phase",
]
