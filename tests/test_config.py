import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorelab.config import config_from_dict, load_config
from scorelab.errors import ConfigError


@pytest.mark.parametrize("path", ["configs/ncsn-toy2d.yaml", "configs/ncsn-digits.yaml"])
def test_shipped_configs_load(path):
    load_config(path)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"trian": {}}, "'trian'"),
        ({"train": {"stepz": 1}}, "'train.stepz'"),
        ({"train": {"steps": "many"}}, "train.steps"),
        ({"train": {"steps": 1.5}}, "train.steps"),
        ({"train": {"steps": True}}, "train.steps"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"steps": 0}}, "train.steps"),
        ({"train": {"ema_decay": 1.0}}, "train.ema_decay"),
        ({"noise": {"sigma_min": 0.0}}, "noise.sigma_min"),
        ({"noise": {"sigma_max": float("nan")}}, "noise.sigma_max"),
        ({"train": {"lr": float("inf")}}, "train.lr"),
        ({"noise": {"sigma_min": 5.0, "sigma_max": 1.0}}, "noise.sigma_min"),
        ({"data": {"name": "mnist"}}, "data.name"),
        ({"model": {"channel_mult": 2}}, "model.channel_mult"),
        ({"model": {"channel_mult": [1, "x"]}}, "model.channel_mult[1]"),
        ({"sample": {"final_denoise": "yes"}}, "sample.final_denoise"),
        ({"data": {"name": "digits"}}, "model.kind"),
        ({"data": 3}, "data"),
        ({"train": {"grad_clip": -1.0}}, "train.grad_clip"),
        (
            {
                "data": {"name": "digits"},
                "model": {"kind": "unet", "num_classes": 10},
                "sample": {"guidance": 3.0},
            },
            "train.cond_dropout",
        ),
        ({"train": {"grad_clip": 0.0}}, "train.grad_clip"),
        (
            {"train": {"objective": "ddpm", "weighting": "min_snr", "snr_gamma": 0.0}, "noise": {"schedule": "linear"}},
            "train.snr_gamma",
        ),  # fmt: skip
        ({"train": {"objective": "ddpm", "snr_gamma": 2.0}, "noise": {"schedule": "linear"}}, "train.snr_gamma"),
        ({"train": {"seed": -1}}, "train.seed"),
        ({"train": {"seed": 2**32}}, "train.seed"),  # numpy's global generator takes seeds below 2**32 only
        ({"train": {"cond_dropout": 1.0}}, "train.cond_dropout"),  # every label dropped: no conditional model
        ({"train": {"cond_dropout": -0.1}}, "train.cond_dropout"),
        ({"noise": {"sigma_min": 1.0, "sigma_max": 1.0}}, "noise.sigma_min"),  # no range of levels
        ({"model": {"num_classes": 10}}, "model.num_classes"),  # ring8 has no labels
        ({"train": {"cond_dropout": 0.1}, "sample": {"guidance": 3.0}}, "model.num_classes"),  # an unconditional model
        ({"train": {"lr_warmup": -10}}, "train.lr_warmup"),
        ({"train": {"lr": "nan"}}, "train.lr"),
        ({"sample": {"n": 1}}, "sample.n"),
        ({"model": {"width": 0}}, "model.width"),
        ({"model": {"kind": "unet", "channels": 7}, "data": {"name": "digits"}}, "model.channels"),
        ({"model": {"kind": "unet", "channel_mult": []}, "data": {"name": "digits"}}, "model.channel_mult"),
        ({"model": {"kind": "unet", "channel_mult": [1, 0]}, "data": {"name": "digits"}}, "model.channel_mult"),
        (
            {"model": {"kind": "unet", "channel_mult": [1, 2, 2, 2, 2]}, "data": {"name": "digits"}},
            "model.channel_mult",
        ),
        ({"model": {"kind": "unet", "attention_levels": [9]}, "data": {"name": "digits"}}, "model.attention_levels"),
        ({"model": {"kind": "unet", "dropout": 1.5}, "data": {"name": "digits"}}, "model.dropout"),
        ({"model": {"kind": "unet", "dropout": -0.5}, "data": {"name": "digits"}}, "model.dropout"),
        (
            {
                "train": {"objective": "ddpm"},
                "noise": {"schedule": "linear", "timesteps": 10},
                "sample": {"schedule": "trailing", "steps": 20},
            },
            "sample.steps",
        ),
    ],
)
def test_bad_configs_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    msg = str(e.value)
    assert key in msg and "\n" not in msg


def test_any_even_unet_width_is_accepted_and_builds():
    """Heads (~64 channels) and GroupNorm groups (~8) divide any width; only the noise embedding needs it even."""
    import torch

    from scorelab.models.build import build_denoiser

    for channels in (6, 10, 4):
        cfg = config_from_dict({"model": {"kind": "unet", "channels": channels}, "data": {"name": "digits"}})
        out = build_denoiser(cfg)(torch.zeros(2, 1, 8, 8), torch.tensor([0.5, 2.0]))
        assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match=r"model.channels: must be even \(the noise embedding\), got 7"):
        config_from_dict({"model": {"kind": "unet", "channels": 7}, "data": {"name": "digits"}})


def test_exponent_floats_without_a_dot_and_zero_ema_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  ema_decay: 0\n")  # YAML 1.1 reads 1e-3 as a string
    cfg = load_config(path)
    assert cfg.train.lr == 1e-3 and cfg.train.ema_decay == 0.0


def test_choice_names_take_hyphens_for_underscores_and_are_stored_canonically(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sample:\n  sampler: dpmpp-2m\nnoise:\n  schedule: scaled-linear\ntrain:\n  objective: ddpm\n")
    cfg = load_config(path)
    assert cfg.sample.sampler == "dpmpp_2m" and cfg.noise.schedule == "scaled_linear"
    path.write_text("sample:\n  sampler: dpm-pp-2x\n")
    with pytest.raises(ConfigError, match=r"sample.sampler: must be one of .*, got 'dpm-pp-2x'"):
        load_config(path)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError):
        load_config(binary)


def test_merge_keys_still_load_and_an_unhashable_key_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  <<: {steps: 5, batch_size: 4}\n  batch_size: 8\n")  # a key beside a merge overrides it
    cfg = load_config(path)
    assert (cfg.train.steps, cfg.train.batch_size) == (5, 8)
    path.write_text("train:\n  [a, b]: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 2"):
        load_config(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the config is empty"),  # would silently train every default
        ("# only a comment\n", "the config is empty"),
        ("data:\n", "data: the section is empty"),  # a null section, likewise
        ("train:\n  steps: 5\n  steps: 6\n", "line 3: key 'steps' is given twice"),  # YAML keeps the last
        ("train: {steps: 5}\ntrain: {lr: 0.1}\n", "line 2: key 'train' is given twice"),
    ],
)
def test_empty_configs_and_repeated_keys_are_refused(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
sections = st.dictionaries(
    st.sampled_from(["data", "model", "noise", "train", "sample", "other"]),
    st.dictionaries(
        st.sampled_from(["name", "kind", "steps", "lr", "levels", "sigma_min", "x"]), yaml_values, max_size=3
    )
    | yaml_values,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(sections)
def test_config_loader_never_crashes_otherwise(raw):
    try:
        config_from_dict(raw)
    except ConfigError as e:
        assert "\n" not in str(e)


def test_sampler_names_in_config_and_cli_are_the_samplers_that_exist():
    # config.py and cli.py stay free of torch imports, so they spell the names out; they must not drift
    from scorelab.cli import cli
    from scorelab.config import CHOICES
    from scorelab.sampling import SAMPLERS

    assert CHOICES["sample.sampler"] == ("annealed_langevin", *SAMPLERS)
    options = {p.name: p for p in cli.commands["sample"].params}
    assert tuple(options["sampler"].type.choices) == ("annealed_langevin", *SAMPLERS)
    options = {p.name: p for p in cli.commands["evaluate"].params}
    assert tuple(options["samplers"].type.choices) == tuple(SAMPLERS)


def test_every_bad_input_error_is_one_type_and_a_value_error():
    """Library checks, config checks and CLI checks all raise ScorelabError (the CLI prints it as one line), and
    callers that catch ValueError keep catching it."""
    from scorelab.errors import ScorelabError
    from scorelab.schedules import karras_sigmas

    assert issubclass(ConfigError, ScorelabError) and issubclass(ScorelabError, ValueError)
    with pytest.raises(ValueError, match="n >= 1"):
        karras_sigmas(0.01, 80.0, 0)


def test_sizes_have_upper_bounds_below_overflow():
    """Sizes past these bounds overflowed inside torch (a C++ traceback) or in the schedule maths; now one line."""
    for key, value, bound in (
        ("model.width", 10**23, 65_536),
        ("model.channels", 10**6, 65_536),
        ("noise.levels", 10**23, 100_000),
        ("noise.timesteps", 10**9, 100_000),
        ("sample.steps", 100_000, 100_000),
    ):
        section, name = key.split(".")
        with pytest.raises(ConfigError, match=f"^{key}: must be < {bound}, got {value}$"):
            config_from_dict({section: {name: value}})
