"""The --device option: names resolved to a torch.device with one-line errors, budgets held against a CUDA device's
free memory, and (where a CUDA GPU exists) training, resuming and sampling there giving the CPU's run."""

import pytest
import torch
import yaml
from click.testing import CliRunner

from scorelab.cli import cli
from scorelab.config import config_from_dict
from scorelab.devices import resolve_device
from scorelab.errors import ScorelabError
from scorelab.resources import check_budget
from scorelab.train.trainer import Trainer

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

_RAW = {
    "data": {"name": "ring8"},
    "model": {"kind": "mlp", "width": 16, "depth": 1},
    "noise": {"sigma_max": 5.0, "sigma_min": 0.05, "levels": 10},
    "train": {"steps": 12, "batch_size": 8, "checkpoint_every": 4, "keep_checkpoints": 5},
}


def test_device_names_resolve_and_others_are_refused_in_one_line(monkeypatch):
    assert (
        resolve_device("cpu") == resolve_device(" CPU ") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name, says in (
        ("gpu", "unknown device 'gpu'; allowed: auto, cpu, cuda or cuda:N"),
        ("mps", "device 'mps' is not supported; allowed: auto, cpu, cuda or cuda:N"),
        ("cpu:1", "device 'cpu:1' is not supported"),
        ("cuda", "device 'cuda' is not available: torch finds no CUDA GPU here"),
        ("cuda:1", "device 'cuda:1' is not available"),
    ):
        with pytest.raises(ScorelabError, match=says.replace("(", r"\(")) as e:
            resolve_device(name)
        assert "\n" not in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ScorelabError, match="device 'cuda:2' does not exist; this machine has cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_a_cuda_budget_is_the_devices_free_memory(monkeypatch):
    import scorelab.devices

    monkeypatch.setattr(scorelab.devices.torch.cuda, "mem_get_info", lambda device: (3 * 2**30, 80 * 2**30))
    cuda = torch.device("cuda", 0)
    check_budget("training", 2 * 2**30, None, option="--max-memory", device=cuda)  # fits in 3 GiB free
    with pytest.raises(
        ScorelabError, match=r"needs about 4\.0 GB .* than the 3\.0 GB allowed by the free memory of cuda:0"
    ):
        check_budget("training", 4 * 2**30, None, option="--max-memory", device=cuda)
    with pytest.raises(ScorelabError, match="allowed by --max-memory"):  # an explicit budget wins
        check_budget("training", 2 * 2**30, 2**30, option="--max-memory", device=cuda)
    check_budget("training", 4 * 2**30, None, option="--max-memory", device=torch.device("cpu"))  # RAM, not 3 GiB


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_commands_refuse_a_device_that_is_not_here_and_write_nothing(tmp_path):
    """(main() prints any ScorelabError as one line with status 2: tests/test_cli.py)"""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(_RAW))
    run = tmp_path / "run"
    r = CliRunner()
    for device, says in (("cuda", "device 'cuda' is not available"), ("gpu", "unknown device 'gpu'")):
        res = r.invoke(cli, ["train", str(cfg), "--out", str(run), "--device", device])
        assert isinstance(res.exception, ScorelabError) and says in str(res.exception), res.output
        assert not run.exists()
    assert r.invoke(cli, ["train", str(cfg), "--out", str(run), "--quiet"]).exit_code == 0
    for args in (["sample", str(run), "--device", "cuda:0"], ["evaluate", str(run), "--device", "tpu"]):
        res = r.invoke(cli, args)
        assert isinstance(res.exception, ScorelabError) and "device" in str(res.exception), res.output
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "train.json"]


def test_training_records_its_device(tmp_path):
    summary = Trainer(config_from_dict(_RAW), tmp_path / "run", progress=False, log=lambda *_: None).run()
    assert summary["device"] == "cpu"


@needs_cuda
@pytest.mark.parametrize("data", ["ring8", "digits"])
def test_a_cuda_run_follows_the_cpu_run_and_resumes_on_either(tmp_path, data, monkeypatch):
    """Same initial weights and the same noise on both devices: the first step's loss agrees to float rounding.
    Later weights can differ by up to the learning rate where a gradient is near zero (Adam's normalised step turns
    a rounding-level sign flip into a step of lr), so the runs are compared by their losses, which a different
    noise stream or initialisation would move by far more. TF32 is off: PyTorch's cuDNN default rounds to ~1e-3."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    raw = {**_RAW, "data": {"name": data}}
    if data == "digits":
        raw["model"] = {"kind": "unet", "channels": 8, "attention_levels": []}

    def run(steps, folder, device="cpu", resume=False):
        cfg = config_from_dict({**raw, "train": {**raw["train"], "steps": steps}})
        t = Trainer(cfg, tmp_path / folder, device=device, progress=False, log=lambda *_: None)
        if resume:
            t.resume()
        return t.run()

    first_cpu, first_cuda = run(1, "one_cpu"), run(1, "one_cuda", "cuda")
    assert first_cuda["device"] == "cuda:0"
    assert first_cuda["final_loss"] == pytest.approx(first_cpu["final_loss"], rel=1e-5)
    run(8, "cpu")
    run(8, "cuda", "cuda")
    cpu_tail, cuda_tail = run(12, "cpu", resume=True), run(12, "cuda", resume=True, device="cpu")  # CUDA -> CPU
    assert cuda_tail["step"] == 12 and cuda_tail["final_loss"] == pytest.approx(cpu_tail["final_loss"], rel=1e-3)
    run(8, "back")
    assert run(12, "back", "cuda", resume=True)["final_loss"] == pytest.approx(cpu_tail["final_loss"], rel=1e-3)


@needs_cuda
def test_sampling_on_cuda_matches_the_cpu(tmp_path):
    from scorelab.pipelines.sample import generate, load_run

    Trainer(config_from_dict(_RAW), tmp_path / "run", progress=False, log=lambda *_: None).run()
    cfg, cpu_model, _ = load_run(tmp_path / "run")
    _, cuda_model, _ = load_run(tmp_path / "run", "cuda")
    for sampler in ("annealed_langevin", "dpmpp_2m"):
        x = generate(cfg, cpu_model, 64, 0, sampler=sampler, steps=10, progress=False)
        y = generate(cfg, cuda_model, 64, 0, sampler=sampler, steps=10, progress=False)
        assert y.device.type == "cpu" and torch.allclose(x, y, rtol=1e-3, atol=1e-4), sampler  # the same weights


def test_building_a_trainer_leaves_other_devices_generators_alone(tmp_path, monkeypatch):
    """torch.manual_seed reseeds every CUDA device too (lazily, when CUDA is not up yet): a trainer seeds only the
    CPU generator and its own device's, so the caller's CUDA streams stay theirs."""

    def reseeds_cuda(seed):
        raise AssertionError("the trainer reseeded every CUDA device")

    torch.manual_seed(3)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeds_cuda)
    before = torch.get_rng_state()
    Trainer(config_from_dict(_RAW), tmp_path / "run", progress=False, log=lambda *_: None)
    assert torch.equal(torch.get_rng_state(), before)
