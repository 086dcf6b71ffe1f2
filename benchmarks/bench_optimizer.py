"""The work after the backward pass, per training step: gradient clipping, Adam and the EMA, over the parameters one
tensor at a time (torch's fused Adam, clip_grad_norm_, diffusers' EMAModel with and without foreach) and over
scorelab's flat buffer (scorelab.train.flat.FlatParameters: one kernel each).

    python benchmarks/bench_optimizer.py      (writes benchmarks/results/optimizer.json)

Models: the digits U-Net of configs/ddpm-digits.yaml (185 parameter tensors, 1.08M values) and the 2D toy MLP of
configs/ncsn-toy2d.yaml. Each variant runs on its own copy of the model with random gradients; the variants take
turns, 15 rounds of 20 calls, medians of the per-round means. The whole training step takes turns the same way (10
rounds of 3 steps): the Trainer's step (flat) against the same loss and backward followed by per-tensor clipping,
Adam and EMA.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scorelab.config import load_config
from scorelab.resources import keep_freed_memory
from scorelab.train.ema import EMA
from scorelab.train.flat import FlatParameters
from scorelab.train.trainer import Trainer

OUT = Path(__file__).parent / "results" / "optimizer.json"
ROOT = Path(__file__).parent.parent


def per_tensor(model, ema_peer):
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.Adam(params, lr=1e-4, fused=True)
    ema = ema_peer(params)
    return {
        "clip_grad_norm_": lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
        "adam_fused": opt.step,
        "ema": lambda: ema.step(params),
    }


def flat(model):
    fp = FlatParameters(model)
    fp.flat.grad.normal_()
    opt = torch.optim.Adam([fp.flat], lr=1e-4, fused=True)
    ema = EMA(model, 0.999)
    return {
        "clip_grad_norm_": lambda: torch.nn.utils.clip_grad_norm_([fp.flat], 1.0),
        "adam_fused": opt.step,
        "ema": lambda: ema.update(fp, 10**6),
    }


def rounds(fns: dict, n_rounds: int = 15, calls: int = 20) -> dict:
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(n_rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[k].append((time.perf_counter() - t0) / calls)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def whole_step(cfg) -> dict:
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / "run", progress=False, log=lambda *_: None)
    old = copy.deepcopy(trainer.denoiser)  # independent parameters (deepcopy clones them out of the flat buffer)
    old_params = list(old.parameters())
    old_ema = copy.deepcopy(old).requires_grad_(False)
    old_opt = torch.optim.Adam(old_params, lr=cfg.train.lr, fused=True)
    gen = torch.Generator().manual_seed(0)

    def per_tensor_step():
        x, labels = trainer.source.next(gen)
        flat_model, trainer.denoiser = trainer.denoiser, old  # the same loss code on the per-tensor copy
        try:
            loss = trainer._loss(x, labels, gen)
        finally:
            trainer.denoiser = flat_model
        old_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(old_params, cfg.train.grad_clip)
        old_opt.step()
        with torch.no_grad():
            for e, p in zip(old_ema.parameters(), old_params, strict=True):
                e.lerp_(p, 1 - 0.999)

    return rounds({"per_tensor": per_tensor_step, "flat": trainer.train_step}, n_rounds=10, calls=3)


def main() -> None:
    from diffusers.training_utils import EMAModel

    keep_freed_memory()  # as the scorelab command runs
    torch.manual_seed(0)
    results = []
    for name in ("ddpm-digits", "ncsn-toy2d"):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / "run", progress=False, log=lambda *_: None)
        model = trainer.denoiser
        fns = {}
        for label, peer in (
            ("per_tensor", lambda ps: EMAModel(ps, decay=0.999, foreach=False)),
            ("per_tensor_foreach_ema", lambda ps: EMAModel(ps, decay=0.999, foreach=True)),
        ):
            for k, fn in per_tensor(copy.deepcopy(model), peer).items():
                if label == "per_tensor" or k == "ema":
                    fns[f"{label}/{k}"] = fn
        for k, fn in flat(copy.deepcopy(model)).items():
            fns[f"flat/{k}"] = fn
        ms = rounds(fns)
        step = whole_step(cfg)
        row = {
            "model": name,
            "parameter_tensors": len(list(model.parameters())),
            "parameters": sum(p.numel() for p in model.parameters()),
            "ms": ms,
            "step_ms": step,
            "step_speedup": step["per_tensor"] / step["flat"],
        }
        results.append(row)
        print(json.dumps(row, indent=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor()}
    OUT.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
