"""Memory budgets: the container's cgroup limit caps what counts as available."""

import platform

import pytest

from scorelab.resources import _cgroup_files, available_memory, cgroup_headroom, keep_freed_memory


def test_cgroup_headroom_reads_v2_and_v1_files_and_ignores_no_limit(tmp_path):
    def files(limit: str, usage: str):
        (tmp_path / "limit").write_text(limit)
        (tmp_path / "usage").write_text(usage)
        return ((str(tmp_path / "limit"), str(tmp_path / "usage")),)

    assert cgroup_headroom(files("4294967296\n", "1073741824\n")) == 3 * 2**30
    assert cgroup_headroom(files("max\n", "1073741824\n")) is None  # v2: no limit
    assert cgroup_headroom(files("9223372036854771712\n", "5\n")) is None  # v1: no limit
    assert cgroup_headroom(files("100\n", "300\n")) == 0  # over the limit already
    assert cgroup_headroom(((str(tmp_path / "absent"), str(tmp_path / "absent")),)) is None


def test_cgroup_files_cover_this_process_group_and_every_group_above(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/jobs/a\n0::/jobs/b\n")
    assert _cgroup_files(str(proc), "/cg") == [
        ("/cg/jobs/b/memory.max", "/cg/jobs/b/memory.current"),
        ("/cg/jobs/memory.max", "/cg/jobs/memory.current"),
        ("/cg/memory.max", "/cg/memory.current"),
        ("/cg/memory/jobs/a/memory.limit_in_bytes", "/cg/memory/jobs/a/memory.usage_in_bytes"),
        ("/cg/memory/jobs/memory.limit_in_bytes", "/cg/memory/jobs/memory.usage_in_bytes"),
        ("/cg/memory/memory.limit_in_bytes", "/cg/memory/memory.usage_in_bytes"),
    ]
    proc.write_text("0::/\n")
    assert len(_cgroup_files(str(proc), "/cg")) == 2


def test_the_tightest_limit_on_the_way_up_wins(tmp_path):
    for name, text in {"l1": "1000", "u1": "100", "l2": "500", "u2": "450", "l3": "max", "u3": "0"}.items():
        (tmp_path / name).write_text(text)
    files = [(str(tmp_path / f"l{i}"), str(tmp_path / f"u{i}")) for i in (1, 2, 3)]
    assert cgroup_headroom(files) == 50


def test_available_memory_is_no_more_than_the_cgroup_headroom():
    headroom = cgroup_headroom()
    assert available_memory() > 0
    if headroom is not None:
        assert available_memory() <= headroom


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_takes_effect_on_glibc():
    assert keep_freed_memory() is True
