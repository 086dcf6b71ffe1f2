"""The README's Python examples run as written and their own asserts hold (each block in a fresh namespace, from an
empty working directory)."""

import re
from pathlib import Path

import pytest
from test_cli import _trained_ddpm

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
DEMO_RUN = "runs/demo/ddpm-digits"  # the trained-run example reads the run `make demo` writes


def test_the_readme_has_its_four_examples():
    assert len(BLOCKS) == 4
    assert sum(DEMO_RUN in block for block in BLOCKS) == 1


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    code = BLOCKS[index]
    if DEMO_RUN in code:  # a tiny class-conditional DDPM run stands in for the demo's
        code = code.replace(DEMO_RUN, str(_trained_ddpm(tmp_path)))
    monkeypatch.chdir(tmp_path)  # files an example writes land here
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
