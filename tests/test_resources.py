"""Memory budgets: the container's cgroup limit caps what counts as available; the allocator setting the scorelab
command makes keeps freed pages."""

import platform
import subprocess
import sys

import pytest

import scorelab.resources as resources
from scorelab.resources import _cgroup_files, available_memory, cgroup_headroom


def _group(tmp_path, name: str, limit: str, usage: str, stat: str = "", key: str = "inactive_file"):
    d = tmp_path / name
    d.mkdir()
    (d / "limit").write_text(limit)
    (d / "usage").write_text(usage)
    (d / "stat").write_text(stat)
    return (str(d / "limit"), str(d / "usage"), str(d / "stat"), key)


def test_cgroup_headroom_reads_limits_and_ignores_no_limit(tmp_path):
    assert cgroup_headroom([_group(tmp_path, "a", "4294967296\n", "1073741824\n")]) == 3 * 2**30
    assert cgroup_headroom([_group(tmp_path, "b", "max\n", "1073741824\n")]) is None  # v2: no limit
    assert cgroup_headroom([_group(tmp_path, "c", "9223372036854771712\n", "5\n")]) is None  # v1: no limit
    assert cgroup_headroom([_group(tmp_path, "d", "100\n", "300\n")]) == 0  # over the limit already
    absent = str(tmp_path / "absent")
    assert cgroup_headroom([(absent, absent, absent, "inactive_file")]) is None


def test_reclaimable_page_cache_does_not_count_as_used(tmp_path):
    stat = "anon 400\ninactive_file 300\nactive_file 50\n"
    assert cgroup_headroom([_group(tmp_path, "v2", "1000", "800", stat)]) == 500
    stat = "cache 999\ninactive_file 7\ntotal_inactive_file 300\n"  # v1: the hierarchical counter
    assert cgroup_headroom([_group(tmp_path, "v1", "1000", "800", stat, "total_inactive_file")]) == 500


def test_the_tightest_limit_on_the_way_up_wins(tmp_path):
    groups = [_group(tmp_path, "1", "1000", "100"), _group(tmp_path, "2", "500", "450")]
    groups.append(_group(tmp_path, "3", "max", "0"))
    assert cgroup_headroom(groups) == 50


def test_cgroup_files_cover_this_process_group_every_group_above_and_the_hybrid_mount(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/jobs/a\n0::/jobs/b\n")
    limits = [f[0] for f in _cgroup_files(str(proc), "/cg")]
    assert limits == [
        "/cg/jobs/b/memory.max",
        "/cg/jobs/memory.max",
        "/cg/memory.max",
        "/cg/unified/jobs/b/memory.max",
        "/cg/unified/jobs/memory.max",
        "/cg/unified/memory.max",
        "/cg/memory/jobs/a/memory.limit_in_bytes",
        "/cg/memory/jobs/memory.limit_in_bytes",
        "/cg/memory/memory.limit_in_bytes",
    ]
    proc.write_text("0::/\n")
    assert len(_cgroup_files(str(proc), "/cg")) == 3


def test_available_memory_is_capped_by_the_cgroup_headroom(monkeypatch):
    monkeypatch.setattr(resources, "cgroup_headroom", lambda: 12345)
    assert available_memory() == 12345
    monkeypatch.setattr(resources, "cgroup_headroom", lambda: None)
    assert available_memory() > 12345


# in a fresh process, so that the setting does not leak into the other tests: minor page faults per training step
# of a small U-Net
_FAULTS = """
import resource, sys
import torch
from scorelab.models.unet import UNet
from scorelab.resources import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
model = UNet(in_channels=1, channels=16, channel_mult=(1, 2), attention_levels=(1,), blocks_per_level=1)
x = torch.randn(32, 1, 16, 16)
def step():
    model(x, torch.rand(32)).square().mean().backward()
for _ in range(2):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // 5)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_stops_the_page_faults_of_training_steps():
    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        took, count = out.stdout.split()
        return took, int(count)

    took, kept = faults("keep")
    _, default = faults("default")
    assert took == "True"
    if default < 500:  # glibc hands freed activations back and faults them in again: about 4,250 per step here
        pytest.skip(f"this platform's default allocator faults only {default} times per step: nothing to compare")
    assert kept < 0.1 * default


def test_memory_sizes_are_binary_units_and_must_be_positive():
    from scorelab.errors import ScorelabError
    from scorelab.resources import parse_bytes

    assert parse_bytes("1000000") == 1_000_000
    assert parse_bytes("512K") == 512 * 2**10 and parse_bytes("1M") == 2**20 and parse_bytes("1.5G") == 3 * 2**29
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("1t") == 2**40
    for bad in ("0", "0M", "-1M", "lots", "1X", ""):
        with pytest.raises(ScorelabError, match="memory size must be a positive number"):
            parse_bytes(bad)


def test_a_request_above_the_budget_is_refused_and_one_at_it_is_not():
    from scorelab.errors import ScorelabError
    from scorelab.resources import check_budget

    check_budget("sampling", 1000, 1000, option="--max-memory")
    with pytest.raises(ScorelabError, match=r"sampling needs about 1001 B .* allowed by --max-memory"):
        check_budget("sampling", 1001, 1000, option="--max-memory")
