"""Editing with a trained Denoiser: SDEdit (noise an image part of the way, then denoise with any sampler) and
inpainting (RePaint, and a Denoiser wrapper with which any other sampler inpaints)."""

from .inpaint import Inpainting, repaint
from .sdedit import sdedit, sdedit_sigmas

__all__ = ["Inpainting", "repaint", "sdedit", "sdedit_sigmas"]
