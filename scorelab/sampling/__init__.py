"""Samplers: pure functions sample(denoiser, x, sigmas, *, cond, generator, callback, progress, **opts) -> x over a
materialised sigma schedule that ends in 0 (plus Langevin dynamics, which takes a score)."""

from ..errors import ScorelabError
from .ancestral import ddim, ddpm
from .dpm_solver import dpmpp_2m, dpmpp_3m
from .ode import euler, heun
from .unipc import unipc

# every diffusion sampler by the name configs and the CLI use
SAMPLERS = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "unipc": unipc,
}


def evaluations(name: str, n_sigmas: int) -> int:
    """Model evaluations a sampler spends on a schedule with n_sigmas positive entries (then 0)."""
    if name not in SAMPLERS:
        raise ScorelabError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return 2 * n_sigmas - 1 if name == "heun" else n_sigmas


__all__ = ["SAMPLERS", "ddim", "ddpm", "dpmpp_2m", "dpmpp_3m", "euler", "heun", "unipc", "evaluations"]
