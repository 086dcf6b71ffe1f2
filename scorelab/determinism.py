"""Run-to-run determinism on CPU.

With more than one thread, some PyTorch CPU kernels accumulate in a nondeterministic order (index_put_ with
accumulate=True, the backward of advanced indexing, adds atomically), so gradients differ in the last bits from run
to run. Optimisers such as Adam then turn those bits into different parameters wherever a gradient is close to zero.
`deterministic()` switches PyTorch to its deterministic implementations for a block (about 15% slower for the
DMTet fit) and restores the previous setting after it. On a GPU, ops without a deterministic implementation only warn
(warn_only=True); docs/reliability.md lists them.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def deterministic(enabled: bool = True):
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
