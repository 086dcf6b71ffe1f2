"""Editing with a trained Denoiser: SDEdit (noise an image part of the way, then denoise) and inpainting (a Denoiser
wrapper that keeps the known pixels, plus RePaint's resampling). Every sampler works unchanged."""

from .inpaint import Inpainting, repaint
from .sdedit import sdedit, sdedit_sigmas

__all__ = ["Inpainting", "repaint", "sdedit", "sdedit_sigmas"]
