"""Memory budgets: the container's cgroup limit caps what counts as available."""

import platform

import pytest

from scorelab.resources import available_memory, cgroup_headroom, keep_freed_memory


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


def test_available_memory_is_no_more_than_the_cgroup_headroom():
    headroom = cgroup_headroom()
    assert available_memory() > 0
    if headroom is not None:
        assert available_memory() <= headroom


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_takes_effect_on_glibc():
    assert keep_freed_memory() is True
