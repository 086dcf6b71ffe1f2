"""Training throughput on CPU: scorelab's U-Net beside lucidrains' denoising-diffusion-pytorch Unet and diffusers'
UNet2DModel at (nearly) equal parameter counts, 1x16x16 images, batch 64, Adam, MSE to a noise target.

    python benchmarks/bench_training.py      (writes benchmarks/results/training.json)

FLOPs per step (forward + backward, convolution, matmul and attention) come from torch.utils.flop_counter; the share
of peak divides the achieved FLOP/s by this machine's measured fp32 matmul rate (2048^3 GEMMs).
lucidrains' package imports torchvision at module level for its data pipeline; the PyPI torchvision does not import
beside this torch build, so a stub module stands in (the Unet itself never uses it).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from scorelab.models.unet import UNet

OUT = Path(__file__).parent / "results" / "training.json"
BATCH, SIZE = 64, 16


def peers():
    from diffusers import UNet2DModel  # import before the torchvision stub: diffusers probes for the real package

    stub = types.ModuleType("torchvision")
    stub.transforms, stub.utils = types.ModuleType("torchvision.transforms"), types.ModuleType("torchvision.utils")
    sys.modules.setdefault("torchvision", stub)
    sys.modules.setdefault("torchvision.transforms", stub.transforms)
    sys.modules.setdefault("torchvision.utils", stub.utils)
    from denoising_diffusion_pytorch.denoising_diffusion_pytorch import Unet

    diff = UNet2DModel(
        sample_size=SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    lucid = Unet(dim=20, dim_mults=(1, 2, 4), channels=1)
    return {
        "diffusers_UNet2DModel": (diff, lambda m, x, t: m(x, t).sample),
        "lucidrains_Unet": (lucid, lambda m, x, t: m(x, t)),
    }


def models():
    ours = UNet(in_channels=1, channels=32, channel_mult=(1, 2), blocks_per_level=2, attention_levels=(1,))
    return {"scorelab_UNet": (ours, lambda m, x, t: m(x, t / 250.0)), **peers()}


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def bench(model, call, steps: int = 20, warmup: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, SIZE, SIZE, generator=g)
    target = torch.randn(BATCH, 1, SIZE, SIZE, generator=g)
    t = torch.randint(0, 1000, (BATCH,), generator=g).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(call(model, x, t), target)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "seconds_per_step": sec,
        "images_per_second": BATCH / sec,
        "flops_per_step": flops,
        "achieved_flops": flops / sec,
    }


def main() -> None:
    peak = matmul_peak()
    rows = {}
    for name, (model, call) in models().items():
        rows[name] = bench(model, call)
        rows[name]["share_of_matmul_peak"] = rows[name]["achieved_flops"] / peak
        print(
            f"{name:24s} {rows[name]['params'] / 1e6:.2f}M params  {rows[name]['images_per_second']:7.1f} img/s  "
            f"{100 * rows[name]['share_of_matmul_peak']:.0f}% of peak",
            flush=True,
        )
    ours = rows["scorelab_UNet"]["images_per_second"]
    result = {
        "batch": BATCH,
        "size": SIZE,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "matmul_peak_flops": peak,
        "models": rows,
        "speedup_vs_lucidrains": ours / rows["lucidrains_Unet"]["images_per_second"],
        "speedup_vs_diffusers": ours / rows["diffusers_UNet2DModel"]["images_per_second"],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(
        f"speed-up vs lucidrains {result['speedup_vs_lucidrains']:.2f}x, vs diffusers "
        f"{result['speedup_vs_diffusers']:.2f}x; wrote {OUT}"
    )


if __name__ == "__main__":
    main()
