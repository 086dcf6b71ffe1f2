"""Score-matching objectives: exact, denoising, sliced (plain and variance-reduced), and NCSN.

Every objective returns a scalar: the batch mean of a per-sample loss that is summed over the
non-batch dimensions. All of them can be backpropagated into the score model's parameters.

The exact and sliced objectives need derivatives of the score with respect to its input. They
detach ``x`` from any graph it came with and differentiate with respect to a fresh leaf, so the
loss's gradient reaches the score model's parameters only. They also assume the model treats the
samples of a batch independently (no batch statistics), since the input Jacobian is taken per
sample by summing over the batch before differentiating.

Noise follows the package convention: drawn on CPU in float32 from ``generator``, then moved to
x's device and cast to x's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..denoisers import Denoiser, expand_sigma, score_from_denoised
from ..errors import ScorelabError

ScoreFn = Callable[[torch.Tensor], torch.Tensor]

PROJECTIONS = ("gaussian", "rademacher")


def _check_x(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ScorelabError(f"{name} must be a tensor of shape (B, D) or (B, ...) with B >= 1, got {shape}")


def _call_score(score: ScoreFn, x: torch.Tensor) -> torch.Tensor:
    s = score(x)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ScorelabError(f"score must return a tensor shaped like its input {tuple(x.shape)}, got {got}")
    return s


def _randn(shape, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    z = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")
    return z.to(device=x.device, dtype=x.dtype)


def _input_grad(out: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
    """d out / d x_in with create_graph=True; zeros where out does not depend on x_in."""
    if not out.requires_grad:
        return torch.zeros_like(x_in)
    (g,) = torch.autograd.grad(out, x_in, create_graph=True, allow_unused=True)
    return torch.zeros_like(x_in) if g is None else g


def exact_score_matching(score: ScoreFn, x: torch.Tensor) -> torch.Tensor:
    """Hyvärinen's score-matching objective with the Jacobian trace computed exactly.

    ``score`` is called on a tensor shaped like ``x`` and must return that shape; the non-batch
    dimensions are flattened to D for the trace. Costs one forward pass and D backward passes
    (each with create_graph=True so the loss is trainable): meant for low dimensions only.
    """
    _check_x(x)
    b = x.shape[0]
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        s = _call_score(score, x_in).reshape(b, -1)
        d = s.shape[1]
        trace = s.new_zeros(b)
        for i in range(d):
            # row i of the per-sample Jacobian, from one backward of the batch-summed component i
            trace = trace + _input_grad(s[:, i].sum(), x_in).reshape(b, -1)[:, i]
        # J(θ) = E[ tr(∇ₓ s(x)) + ½‖s(x)‖² ]  (Hyvärinen 2005, eq. 4)
        per_sample = trace + 0.5 * s.pow(2).sum(1)
    return per_sample.mean()


def _check_sigma(sigma) -> float:
    try:
        value = float(sigma)
    except (TypeError, ValueError, RuntimeError):
        raise ScorelabError(f"sigma must be a positive finite float, got {sigma!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ScorelabError(f"sigma must be a positive finite float, got {value}")
    return value


def denoising_score_matching(
    score: ScoreFn, x: torch.Tensor, sigma: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Denoising score matching at one fixed noise level: ``score`` is a function of x̃ only.

    Draws z ~ N(0, I) once per sample, x̃ = x + σz. Its minimiser over all functions is the score
    of the noised data distribution, ∇ log q_σ(x̃) (Vincent 2011, section 4.2).
    """
    _check_x(x)
    sigma = _check_sigma(sigma)
    z = _randn(x.shape, x, generator)
    x_noisy = x + sigma * z
    # ∇_x̃ log q_σ(x̃ | x) = (x − x̃)/σ² = −z/σ for q_σ(x̃|x) = N(x, σ²I)  (Vincent 2011, eq. 8), from the drawn z:
    # (x − x̃)/σ² would round x̃ and lose digits at small σ
    target = -z / sigma
    s = _call_score(score, x_noisy)
    # J_DSM(θ) = E ½‖s(x̃) − ∇_x̃ log q_σ(x̃|x)‖²  (Vincent 2011, eq. 7)
    per_sample = 0.5 * (s - target).pow(2).reshape(x.shape[0], -1).sum(1)
    return per_sample.mean()


def _projections(shape, x: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    # both choices have E[v vᵀ] = I, which is all the sliced identities need (Song et al. 2019, §3)
    if kind == "gaussian":
        return _randn(shape, x, generator)
    v = torch.randint(0, 2, shape, generator=generator, dtype=torch.int64, device="cpu")
    return (2 * v - 1).to(device=x.device, dtype=x.dtype)


def sliced_score_matching(
    score: ScoreFn,
    x: torch.Tensor,
    *,
    n_projections: int = 1,
    projection: str = "gaussian",
    variance_reduced: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sliced score matching: the Jacobian trace replaced by random projections vᵀ∇ₓs(x)v.

    Draws ``n_projections`` independent projections per sample, all of shape x.shape, Gaussian
    N(0, I) or Rademacher (±1 with equal probability), and averages the objective over them.
    ``variance_reduced=True`` replaces ½(vᵀs)² by its expectation over v, ½‖s‖² (SSM-VR).

    How vᵀ∇ₓs(x)v is computed: by double backward, not forward mode. The gradient of the
    batch-summed ⟨v, s(x)⟩ with respect to x is (∇ₓs)ᵀv per sample; its dot product with v is the
    quadratic form. This works for every nn.Module (create_graph=True keeps it trainable), costs
    one extra backward per projection whatever the dimension, and a torch.func forward-mode jvp
    would buy nothing here: the parameter gradient of the loss still needs a reverse pass through
    that jvp, i.e. a second-order pass anyway.
    """
    _check_x(x)
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ScorelabError(f"n_projections must be a positive int, got {n_projections!r}")
    if projection not in PROJECTIONS:
        raise ScorelabError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if not isinstance(variance_reduced, bool):
        raise ScorelabError(f"variance_reduced must be a bool, got {variance_reduced!r}")
    b = x.shape[0]
    v_all = _projections((n_projections, *x.shape), x, projection, generator)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        s = _call_score(score, x_in)
        half_norm = 0.5 * s.pow(2).reshape(b, -1).sum(1)
        total = s.new_zeros(b)
        for v in v_all:
            sv = (v * s).reshape(b, -1).sum(1)  # vᵀ s(x), per sample
            jtv = _input_grad(sv.sum(), x_in)  # (∇ₓ s)ᵀ v, per sample
            vjv = (jtv * v).reshape(b, -1).sum(1)  # vᵀ ∇ₓ s(x) v
            if variance_reduced:
                # J_vr(θ) = E[ vᵀ∇ₓs(x)v + ½‖s(x)‖² ]  (Song et al. 2019, eq. 8)
                total = total + vjv + half_norm
            else:
                # J(θ; p_v) = E[ vᵀ∇ₓs(x)v + ½(vᵀs(x))² ]  (Song et al. 2019, eq. 7)
                total = total + vjv + 0.5 * sv.pow(2)
        per_sample = total / n_projections
    return per_sample.mean()


def ncsn_loss(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The NCSN objective over a set of noise levels, weighted by λ(σ) = σ².

    Unbiased estimate: each sample gets one level drawn uniformly from ``sigmas`` (1-D, positive),
    then x̃ = x + σz. ``denoiser(x̃, sigma, cond)`` is called with sigma of shape (B,), and its
    output D gives the score s = (D − x̃)/σ². Draw order from ``generator``: level indices, then z.
    """
    _check_x(x)
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ScorelabError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
    if not (torch.isfinite(sigmas).all() and (sigmas > 0).all()):
        raise ScorelabError("sigmas must be positive and finite")
    b = x.shape[0]
    idx = torch.randint(0, sigmas.numel(), (b,), generator=generator, device="cpu")
    sigma = sigmas.detach().to("cpu", torch.float64)[idx].to(device=x.device, dtype=x.dtype)  # (B,)
    z = _randn(x.shape, x, generator)
    s_b = expand_sigma(sigma, x)  # (B, 1, ..., 1)
    x_noisy = x + s_b * z
    score = score_from_denoised(x_noisy, denoiser(x_noisy, sigma, cond), sigma)
    # ℓ(θ; σ) = ½ E‖s(x̃, σ) + (x̃ − x)/σ²‖² (Song & Ermon 2019, eq. 5); times λ(σ) = σ² (eq. 6)
    per_sample = 0.5 * (s_b * score + z).pow(2).reshape(b, -1).sum(1)  # (x̃ − x)/σ = z exactly
    # L = (1/L) Σᵢ λ(σᵢ) ℓ(θ; σᵢ) (Song & Ermon 2019, eq. 6): uniform level draws make the mean unbiased
    return per_sample.mean()
