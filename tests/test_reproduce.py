import json
import math

import pytest
import torch
from click.testing import CliRunner

from scorelab.cli import cli
from scorelab.errors import ScorelabError
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
    assert data["figure"] == str(tmp_path / "ncsn_toy.png")  # where it ended up, not the staging folder
    listed = CliRunner().invoke(cli, ["reproduce", "--list"])
    assert "ncsn-toy" in listed.output


def test_reproduce_refuses_a_folder_of_other_files_and_takes_underscores(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    res = CliRunner().invoke(cli, ["reproduce", "ncsn_toy", "--quick", "--out", str(tmp_path)])
    assert isinstance(res.exception, ScorelabError) and "holds files this command did not write" in str(res.exception)
    assert [f.name for f in tmp_path.iterdir()] == ["notes.txt"]
    monkeypatch.chdir(tmp_path / "..")  # the current folder is never swapped away
    res = CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--quick", "--out", "."])
    assert isinstance(res.exception, ScorelabError) and "is the current folder" in str(res.exception)
    res = CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--out", "fig", "--json", "fig/sub/r.json"])
    assert isinstance(res.exception, ScorelabError) and "--json must be in --out" in str(res.exception)


def test_reproduce_reruns_into_its_own_folder_and_leaves_other_files_alone(tmp_path):
    """A second run replaces the first one's figures and JSON whole, with or without --json (the folder's manifest
    says what the first one wrote); a JSON it did not write is refused, not deleted."""
    from scorelab.outputs import MANIFEST

    fig = tmp_path / "fig"
    runs = [["--json", str(fig / "r.json")], [], ["--json", str(fig / "r.json")]]
    for extra in runs:
        res = CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--quick", "--out", str(fig), *extra])
        assert res.exit_code == 0, res.output
        wrote = ["ncsn_toy.png", *(["r.json"] if extra else [])]
        assert sorted(f.name for f in fig.iterdir()) == sorted([MANIFEST, *wrote])
        assert sorted(json.loads((fig / MANIFEST).read_text())["files"]) == sorted(wrote)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no staging folder left behind
    (fig / "precious.json").write_text("{}")
    res = CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--quick", "--out", str(fig)])
    assert isinstance(res.exception, ScorelabError) and "did not write (precious.json)" in str(res.exception)
    assert (fig / "precious.json").read_text() == "{}"


def test_sampler_accuracy_target_at_20_evaluations():
    """The issue's target: max_z <= 3 at 20 evaluations on both mixtures, with UniPC on the recommended schedule
    (20,000 samples, the reproduction's seeds)."""
    from scorelab.metrics.moments import moment_z_scores
    from scorelab.reproduce.sampler_accuracy import mixtures, schedule
    from scorelab.sampling import unipc
    from scorelab.sampling.common import initial_noise

    for name, mix in mixtures().items():
        sigmas, vp = schedule("lognormal", 20, mix)
        g = torch.Generator().manual_seed(0)
        x = initial_noise((20000, 2), float(sigmas[0]), vp_prior=vp, generator=g, dtype=torch.float64)
        assert moment_z_scores(unipc(mix, x, sigmas, generator=g), mix)["max_z"] <= 3.0, name


def test_an_interrupted_reproduction_leaves_no_folders(tmp_path, monkeypatch):
    """Folders for the figures and the JSON are made when they are written: Ctrl-C during the work leaves none."""

    def interrupted(out_dir, quick=False, progress=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(ncsn_toy, "run", interrupted)
    args = ["--out", str(tmp_path / "a" / "b"), "--json", str(tmp_path / "j" / "k" / "r.json")]
    res = CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--quick", *args])
    assert res.exit_code != 0
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    res = CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--quick", *args])  # and a run to the end makes them
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "b" / "ncsn_toy.png").is_file() and (tmp_path / "j" / "k" / "r.json").is_file()


def test_a_reproduction_that_does_not_show_what_the_paper_shows_exits_1(tmp_path, monkeypatch):
    def fails(out, quick=False, progress=True):
        (out / "ncsn_toy.png").write_bytes(b"png")
        return {"figure": str(out / "ncsn_toy.png"), "table": [["a"], ["1"]], "passed": False}

    monkeypatch.setattr(ncsn_toy, "run", fails)
    res = CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--out", str(tmp_path / "fig")])
    assert res.exit_code == 1 and "does not show what the paper shows" in res.stderr
    assert (tmp_path / "fig" / "ncsn_toy.png").exists()  # the figure is still written, to look at


def test_ncsn_toy_mode_weight_and_pass_criterion(tmp_path, monkeypatch):
    x = torch.tensor([[4.0, 4.0], [-4.0, -4.0], [6.0, 5.0], [0.1, 0.0], [-1.0, -1.0]])
    assert ncsn_toy.mode_weight(x) == pytest.approx(0.6)  # nearer (5, 5) than (-5, -5): the first, third and fourth
    monkeypatch.setattr(ncsn_toy, "scatter", lambda panels, path, **kw: path)
    r = ncsn_toy.run(tmp_path, seed=0)
    assert abs(r["exact_sample_weight"] - 0.8) < 4 * (0.8 * 0.2 / 1280) ** 0.5  # binomial SE
    assert [row[0] for row in r["table"][1:]] == ["exact samples", "Langevin", "annealed Langevin"]
    assert r["table"][3][1] == f"{r['annealed_weight']:.3f}"
    # annealed Langevin that does not recover the weights fails the reproduction; so does plain Langevin that does
    monkeypatch.setattr(ncsn_toy, "annealed_langevin", lambda mix, x0, *a, **kw: x0)  # uniform start: weight ~0.5
    r = ncsn_toy.run(tmp_path, seed=0)
    assert not r["passed"]
    assert abs(r["exact_sample_weight"] - 0.8) < 4 * (0.8 * 0.2 / 1280) ** 0.5  # still the exact samples' figure
    monkeypatch.undo()
    monkeypatch.setattr(ncsn_toy, "scatter", lambda panels, path, **kw: path)
    monkeypatch.setattr(ncsn_toy, "langevin", lambda score, x0, *, generator, **kw: ncsn_toy.GaussianMixture(
        [0.8, 0.2], [[5.0, 5.0], [-5.0, -5.0]], [1.0, 1.0]).sample(len(x0), generator))  # fmt: skip
    assert not ncsn_toy.run(tmp_path, seed=0)["passed"]


def test_sampler_accuracy_sigma_data_and_schedules():
    from scorelab.reproduce.sampler_accuracy import SIGMA_MAX, SIGMA_MIN, mixtures, schedule, sigma_data
    from scorelab.schedules import alphas_cumprod, beta_schedule

    mix = mixtures()
    # law of total variance per coordinate: ring 0.3^2 + 4^2 / 2 (a coordinate of 4 cos at 8 equal angles);
    # pair 1 + 0.8 * 0.2 * 10^2
    assert sigma_data(mix["ring"]) == pytest.approx(math.sqrt(0.09 + 8.0), rel=1e-12)
    assert sigma_data(mix["pair"]) == pytest.approx(math.sqrt(1.0 + 16.0), rel=1e-12)
    sigmas, vp = schedule("ddpm-linear-trailing", 10, mix["pair"])
    ab = alphas_cumprod(beta_schedule("linear", 1000)).double()
    assert vp and len(sigmas) == 11 and sigmas[-1] == 0
    # trailing spacing starts at the last of the 1,000 timesteps: sigma = sqrt((1 - abar) / abar)
    assert sigmas[0].item() == pytest.approx(((1 - ab[-1]) / ab[-1]).sqrt().item(), rel=1e-5)
    for name, m in mix.items():
        sigmas, vp = schedule("lognormal", 12, m)
        assert not vp and sigmas[-1] == 0 and sigmas[0] == SIGMA_MAX and sigmas[-2] == pytest.approx(SIGMA_MIN)
        # equally spaced quantiles of ln sigma ~ N(ln(sigma_data / 4), 2^2): the CDF steps are all equal
        q = torch.special.ndtr((sigmas[:-1].log() - math.log(sigma_data(m) / 4)) / 2.0)
        torch.testing.assert_close(q.diff(), torch.full((11,), q.diff().mean().item(), dtype=q.dtype), msg=name)


def test_sampler_accuracy_rows_count_evaluations_and_report_the_target(tmp_path, monkeypatch, capsys):
    """run()'s bookkeeping with stand-in samplers: the model calls a sampler makes on n positive sigmas (Heun 2 n - 1),
    then exact samples of the mixture."""
    from scorelab.metrics.moments import moment_z_scores
    from scorelab.reproduce import sampler_accuracy as sa

    shift = {"ring": 0.0}  # added to the ring's samples on the recommended (lognormal) schedule

    def stand_in(calls):
        def sampler(model, x, sigmas, generator):
            for _ in range(calls(len(sigmas) - 1)):
                model(x, sigmas[0])
            out = model.denoiser.sample(len(x), generator).double()
            ring_on_lognormal = len(model.denoiser.means) == 8 and sigmas[0] == sa.SIGMA_MAX
            return out + shift["ring"] if ring_on_lognormal else out

        return sampler

    monkeypatch.setattr(sa, "SAMPLERS", {"heun": stand_in(lambda n: 2 * n - 1), "unipc": stand_in(lambda n: n)})
    monkeypatch.setattr(sa, "NFES", (5, 20))
    monkeypatch.setattr(sa, "line_panels", lambda panels, path, **kw: path)
    sliced = sa.SlicedW2Reference
    monkeypatch.setattr(sa, "SlicedW2Reference", lambda y: sliced(y, n_projections=20))  # fewer slices: faster
    r = sa.run(tmp_path, quick=True, progress=False)
    assert "%|" not in capsys.readouterr().err  # no progress bar
    assert r["n"] == 5000 and len(r["results"]) == 2 * 2 * 2 * 2
    for row in r["results"]:
        assert row["nfe"] in ({5, 19} if row["sampler"] == "heun" else {5, 20})  # Heun: 3 and 10 sigmas
        assert math.isfinite(row["max_z"]) and row["sw2"] >= 0
        assert ("mode_weight" in row) == (row["mixture"] == "pair")
        if row["mixture"] == "pair":  # the (5, 5) mode's weight, 0.8 (binomial SE)
            assert abs(row["mode_weight"] - 0.8) < 4 * (0.16 / 5000) ** 0.5
    for m in ("ring", "pair"):
        key = (m, "lognormal", "unipc", 20)
        (target,) = [
            row for row in r["results"] if (row["mixture"], row["schedule"], row["sampler"], row["nfe"]) == key
        ]
        assert r["unipc_lognormal_at_20"][m] == target["max_z"]
    assert r["passed"] == all(v <= 3.0 for v in r["unipc_lognormal_at_20"].values())
    # the exact-sample baseline: max_z of 5,000 exact samples (seed + 1), not of a sampler's output
    for name, mix in sa.mixtures().items():
        want = moment_z_scores(mix.sample(5000, torch.Generator().manual_seed(1)).double(), mix)["max_z"]
        assert r["exact_max_z"][name] == want
    # the target is UniPC at 20 evaluations on the lognormal schedule, for both mixtures: a ring that is off there fails
    shift["ring"] = 0.5
    r = sa.run(tmp_path, quick=True)
    assert r["unipc_lognormal_at_20"]["ring"] > 3.0 and not r["passed"]


def test_fit_multiview_scores_each_fit_on_the_held_out_views(tmp_path, monkeypatch):
    """run()'s bookkeeping with stand-in fitters (a perfect one renders the reference mesh, a bad one grey): the rows
    are each fit's own scores on the 8 held-out views, the pass criterion needs every fit's PSNR and the DMTet
    Chamfer-L1, and the files are written."""
    from scorelab.reproduce import fit_multiview as fm
    from scorelab.three.fitting import Fitted
    from scorelab.three.objects import Snowman
    from scorelab.three.raster import render_mesh

    reference = Snowman().mesh(24)
    monkeypatch.setattr(fm, "Snowman", lambda: type("Object", (), {"mesh": lambda self, res: reference})())
    monkeypatch.setattr(fm, "SIZE", 16)
    monkeypatch.setattr(fm, "SUPERSAMPLE", 1)  # the ground truth is then exactly render_mesh at the test cameras
    monkeypatch.setattr(fm, "image_grid", lambda images, path, **kw: path)
    surface_metrics = fm.surface_metrics
    monkeypatch.setattr(fm, "surface_metrics", lambda pred, ref: surface_metrics(pred, ref, n=20_000))
    monkeypatch.setattr(fm, "turntable", lambda render, n, path: render(0.0).shape == (3, 16, 16) and path)
    calls, bad, dmtet_scale = {}, set(), [1.0]

    def stand_in(name):
        def fit(train, *, generator, progress, **settings):
            calls[name] = (len(train), generator.initial_seed(), progress, settings)
            mesh = None
            if name == "dmtet":
                mesh = type(reference)(reference.vertices * dmtet_scale[0], reference.faces, reference.vertex_colors)

            def render(cameras):
                if name in bad:
                    n, h, w = len(cameras), cameras.height, cameras.width
                    return torch.full((n, 3, h, w), 0.5), torch.zeros(n, 1, h, w)
                out = render_mesh(reference, cameras, background=(1.0, 1.0, 1.0))
                return out["color"], out["mask"]

            return Fitted(render, 7, mesh, skipped_steps=len(name))

        return fit

    monkeypatch.setattr(fm, "FITTERS", {name: stand_in(name) for name in fm.FITTERS})
    r = fm.run(tmp_path, quick=True, seed=5, progress=False)
    assert r["passed"] and r["targets"] == fm.QUICK_TARGETS
    for name, row in r["results"].items():
        assert calls[name] == (24, 5, False, fm.QUICK[name]) and row["settings"] == fm.QUICK[name]
        assert row["psnr"] > 100 and row["mask_iou"] == 1 and row["iterations"] == 7
        assert row["skipped_steps"] == len(name) and ("chamfer_l1" in row) == (name == "dmtet")
    assert r["results"]["dmtet"]["chamfer_l1"] < 0.01 and r["results"]["dmtet"]["faces"] == reference.faces.shape[0]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["dmtet.glb"]
    # a bad fit: scored against the held-out views (PSNR of grey over them), and the reproduction fails
    bad.add("gaussians")
    r = fm.run(tmp_path, quick=False, seed=0)
    test = fm.render_views(reference, fm.TEST_THETA, fm.TEST_PHI)
    grey = torch.full_like(test.color, 0.5)
    row = r["results"]["gaussians"]
    assert row["psnr"] == pytest.approx(fm.psnr(grey, test.color))
    assert row["object_psnr"] == pytest.approx(fm.psnr(grey, test.color, test.mask > 0.01)) and row["mask_iou"] == 0
    assert not r["passed"] and r["targets"] == fm.TARGETS and calls["voxels"] == (24, 0, True, fm.SETTINGS["voxels"])
    assert [t[0] for t in r["table"][1:]] == list(fm.FITTERS) and r["table"][3][1] == f"{row['psnr']:.2f}"
    assert r["table"][1][1] == f"{r['results']['voxels']['psnr']:.2f}" != r["table"][3][1]
    # every PSNR good but the DMTet surface 30% too large: Chamfer-L1 over the target fails the reproduction
    bad.clear()
    dmtet_scale[0] = 1.3
    r = fm.run(tmp_path, quick=True)
    assert all(row["psnr"] > 100 for row in r["results"].values()) and not r["passed"]
    # PSNR is of the prediction clipped to [0, 1]: values over 1 on a white target are no error
    assert fm.psnr(torch.full((1, 3, 2, 2), 1.3), torch.ones(1, 3, 2, 2)) == pytest.approx(120.0)


def test_reproduce_quiet_turns_the_progress_bars_off(tmp_path):
    """ncsn-toy's Langevin bars through the command; the other reproductions' flags are checked in their tests."""
    loud = CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--out", str(tmp_path / "a")])
    quiet = CliRunner().invoke(cli, ["reproduce", "ncsn-toy", "--quiet", "--out", str(tmp_path / "b")])
    assert loud.exit_code == quiet.exit_code == 0
    assert "it/s]" in loud.stderr and "it/s]" not in quiet.stderr and "%|" not in quiet.stderr


def test_repaint_conditional_is_the_mixture_conditional_and_w1_is_exact_for_shifts():
    """conditional(mix, a) against rejection from the joint (draws with |x1 - a| < h) on a mixture whose components
    differ in every mean and std, so a dropped weight or std term would show: mean and variance within 4 standard
    errors (the window's own bias is O(h^2), about 1e-4 here, against a standard error near 5e-3). And W1 of a sample
    and the same sample shifted by c is |c| (1-D optimal transport between equal sets)."""
    from scorelab.analytic import GaussianMixture
    from scorelab.reproduce.repaint import conditional, moments, wasserstein1

    mix, a, h = GaussianMixture([0.3, 0.7], [[0.0, 1.0], [1.0, -1.0]], [[0.5, 0.3], [0.8, 0.6]]), 0.6, 0.01
    joint = mix.sample(2_000_000, torch.Generator().manual_seed(0))
    near = joint[(joint[:, 0] - a).abs() < h, 1].double()
    mean, std = moments(conditional(mix, a))
    n = len(near)
    assert n > 10_000
    assert abs(near.mean().item() - mean) < 4 * std / math.sqrt(n)
    m4 = ((near - near.mean()) ** 4).mean().item()  # the variance's standard error, sqrt((m4 - var^2) / n), for any law
    assert abs(near.var().item() - std**2) < 4 * math.sqrt((m4 - near.var().item() ** 2) / n)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    assert wasserstein1(x, x + 0.3) == pytest.approx(0.3, abs=1e-6)


def test_repaint_reproduction_quick_shows_resampling_bringing_fills_closer_to_the_exact_conditional(tmp_path):
    from scorelab.reproduce import repaint

    result = repaint.run(tmp_path, quick=True, progress=False)
    assert result["passed"], result["table"]
    assert len(result["rows"]) == 3 * 4 and (tmp_path / "repaint.png").is_file()
    for name in repaint.cases():
        w1 = [r["w1"] for r in result["rows"] if r["case"] == name]
        assert w1[-1] < w1[0] - 3 * result["noise_floor"][name]  # what `passed` says, per case
