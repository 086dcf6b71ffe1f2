import json

from click.testing import CliRunner

from scorelab.cli import cli
from scorelab.reproduce import ncsn_toy


def test_ncsn_toy_shows_what_the_paper_shows(tmp_path):
    r = ncsn_toy.run(tmp_path, seed=0)
    assert abs(r["annealed_weight"] - 0.8) <= 0.05
    assert abs(r["langevin_weight"] - 0.8) >= 0.15
    assert r["passed"]
    assert (tmp_path / "ncsn_toy.png").stat().st_size > 0


def test_reproduce_cli_writes_json(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--json", str(out), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert {"langevin_weight", "annealed_weight", "true_weight"} <= data.keys()
    listed = CliRunner().invoke(cli, ["reproduce", "--list"])
    assert "ncsn-toy" in listed.output
