"""Training throughput on CPU: scorelab's U-Net beside lucidrains' denoising-diffusion-pytorch Unet and diffusers'
UNet2DModel, 1x16x16 images, batch 64, MSE to a noise target, the same optimiser (torch's fused Adam) for every model.

    python benchmarks/bench_training.py      (writes benchmarks/results/training.json)

Each diffusers net is compared with a scorelab U-Net of the same level structure at (nearly) equal parameters: two
levels of 32 and 64 channels with attention at the second, and three levels of 16/32/64 with attention only at the
lowest resolution. Each diffusers net runs twice: with its NCHW layout, 8 groups and its default 8-channel heads, and
with scorelab's settings (channels-last, one 64-channel head, the one group count nearest to scorelab's ~8 channels
per group), so that the JSON shows how much of a difference is settings and how much implementation. lucidrains'
Unet (dim 20, mults 1/2/4, its own layout: channels 20/40/80, linear attention at the first two levels, full
attention at the third and in the middle) is set beside the three-level scorelab net at equal parameters but is not
the same structure, so its speed-up is also given per FLOP. Shape decides most of the cost (a three-level net spends
far fewer FLOPs per parameter), and every model's FLOPs per step are in the JSON beside its speed.
Every model runs with the allocator setting the `scorelab` command makes (scorelab.resources.keep_freed_memory).
FLOPs per step (forward + backward, convolution, matmul and attention) come from torch.utils.flop_counter; the share
of peak divides each round's achieved FLOP/s by this machine's fp32 matmul rate read around that round (2048^3
GEMMs), median over rounds (see main).
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
from scorelab.resources import keep_freed_memory

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

    def diffusers(channels, groups=8, head_dim=8, channels_last=False):
        levels = len(channels)
        net = UNet2DModel(
            sample_size=SIZE,
            in_channels=1,
            out_channels=1,
            block_out_channels=channels,
            layers_per_block=2,
            down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
            norm_num_groups=groups,
            attention_head_dim=head_dim,
        )
        if not channels_last:
            return net, lambda m, x, t: m(x, t).sample
        net = net.to(memory_format=torch.channels_last)
        return net, lambda m, x, t: m(x.contiguous(memory_format=torch.channels_last), t).sample

    lucid = Unet(dim=20, dim_mults=(1, 2, 4), channels=1)
    return {
        "diffusers_UNet2DModel_2level": diffusers((32, 64)),
        "diffusers_UNet2DModel_3level": diffusers((16, 32, 64)),
        "lucidrains_Unet": (lucid, lambda m, x, t: m(x, t)),
        # diffusers with scorelab's settings, to show where the difference comes from: channels-last, one attention
        # head of 64 channels, and the one group count nearest to scorelab's ~8 channels per group
        "diffusers_UNet2DModel_2level_scorelab_settings": diffusers((32, 64), 4, 64, True),
        "diffusers_UNet2DModel_3level_scorelab_settings": diffusers((16, 32, 64), 2, 64, True),
    }


# (scorelab model, peer of the same level structure and nearly equal parameters)
PAIRS = [
    ("scorelab_UNet_2level", "diffusers_UNet2DModel_2level"),
    ("scorelab_UNet_3level", "diffusers_UNet2DModel_3level"),
    ("scorelab_UNet_3level", "lucidrains_Unet"),
    ("scorelab_UNet_2level", "diffusers_UNet2DModel_2level_scorelab_settings"),
    ("scorelab_UNet_3level", "diffusers_UNet2DModel_3level_scorelab_settings"),
]


def models():
    def ours(**kw):
        return UNet(in_channels=1, blocks_per_level=2, **kw), lambda m, x, t: m(x, t / 250.0)

    return {
        "scorelab_UNet_2level": ours(channels=32, channel_mult=(1, 2), attention_levels=(1,)),
        "scorelab_UNet_3level": ours(channels=16, channel_mult=(1, 2, 4), attention_levels=(2,)),
        **peers(),
    }


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def stepper(model, call):
    """One training step of `model` (forward, MSE to a noise target, backward, Adam), and its FLOPs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, SIZE, SIZE, generator=g)
    target = torch.randn(BATCH, 1, SIZE, SIZE, generator=g)
    t = torch.randint(0, 1000, (BATCH,), generator=g).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # scorelab's trainer's optimiser, for every model

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(call(model, x, t), target)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    return step, counter.get_total_flops()


def main(rounds: int = 12, steps_per_round: int = 3) -> None:
    """Models take turns, `steps_per_round` steps each, for `rounds` rounds, in an order rotated every round, so that
    a slow spell on a shared machine falls on all of them; each model's time per step is the median over all its
    timed steps. The matmul peak is measured before and after every round (this machine's speed drifts by up to 1.5x
    within minutes, so one reading at the start misstates the share): a model's share of peak in a round is its
    FLOP/s there over the better of the two readings around it, and the share reported is the median over rounds;
    the share against the best reading of the whole run is given beside it."""
    kept = keep_freed_memory()  # as the scorelab command runs; for every model alike (benchmarks/bench_allocator.py)
    built = {name: (model, *stepper(model, call)) for name, (model, call) in models().items()}
    times = {name: [[] for _ in range(rounds)] for name in built}
    peaks = [matmul_peak()]
    names = list(built)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated, so no model always sits by a reading
            step = built[name][1]
            for _ in range(steps_per_round):
                t0 = time.perf_counter()
                step()
                times[name][r].append(time.perf_counter() - t0)
        peaks.append(matmul_peak())
    round_peaks = [max(a, b) for a, b in zip(peaks[:-1], peaks[1:], strict=True)]
    rows = {}
    for name, (model, _, flops) in built.items():
        every = [t for per_round in times[name] for t in per_round]
        sec = statistics.median(every)
        shares = [flops / statistics.median(ts) / peak for ts, peak in zip(times[name], round_peaks, strict=True)]
        rows[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "seconds_per_step": sec,
            "seconds_per_step_quartiles": statistics.quantiles(every, n=4),
            "images_per_second": BATCH / sec,
            "flops_per_step": flops,
            "achieved_flops": flops / sec,
            "share_of_matmul_peak": statistics.median(shares),
            "share_of_matmul_peak_by_round": shares,
            "share_of_best_matmul_peak": flops / sec / max(peaks),
        }
        print(
            f"{name:24s} {rows[name]['params'] / 1e6:.2f}M params  {flops / 1e9:5.1f} GFLOP/step  "
            f"{rows[name]['images_per_second']:7.1f} img/s  {100 * rows[name]['share_of_matmul_peak']:.1f}% of peak "
            f"({100 * rows[name]['share_of_best_matmul_peak']:.1f}% of the best reading)",
            flush=True,
        )
    speedups = {
        f"{ours}_vs_{peer}": rows[ours]["images_per_second"] / rows[peer]["images_per_second"] for ours, peer in PAIRS
    }
    # the same, round by round (each round's median step of the peer over ours), median over rounds: a slow spell
    # within a round falls on both
    speedups_by_round = {
        f"{ours}_vs_{peer}": statistics.median(
            statistics.median(times[peer][r]) / statistics.median(times[ours][r]) for r in range(rounds)
        )
        for ours, peer in PAIRS
    }
    for ours, peer in PAIRS:
        ratio = rows[ours]["params"] / rows[peer]["params"]
        assert 0.9 <= ratio <= 1.1, f"{ours} has {ratio:.2f}x the parameters of {peer}: not an equal-size comparison"
    speedups_per_flop = {
        f"{ours}_vs_{peer}": rows[ours]["achieved_flops"] / rows[peer]["achieved_flops"] for ours, peer in PAIRS
    }
    from importlib.metadata import version

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "versions": {p: version(p) for p in ("torch", "diffusers", "denoising_diffusion_pytorch")},
        "optimizer": "torch.optim.Adam(fused=True), every model",
        "allocator": "glibc keeps freed memory (scorelab.resources.keep_freed_memory), every model"
        if kept
        else "default",
        "batch": BATCH,
        "size": SIZE,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "matmul_peak_flops_readings": peaks,
        "models": rows,
        "speedups": speedups,
        "speedups_paired_by_round": speedups_by_round,
        "speedups_in_achieved_flops": speedups_per_flop,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(", ".join(f"{k} {v:.2f}x (by round {speedups_by_round[k]:.2f}x)" for k, v in speedups.items()))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
