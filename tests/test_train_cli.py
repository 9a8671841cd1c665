"""fastsn-train: a short run per option, the outputs, the config file, and clear errors for bad values."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from fastsn.train import cli
from fastsn.train.config import TrainConfig
from fastsn.train.loop import train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = {"steps": 3, "batch_size": 16, "monitor_every": 1}

OPTIONS = [
    {"sn": True},
    *({"gp": kind} for kind in ("wgan-gp", "wgan-lp", "r1", "r2", "dragan")),
    {"gp": "wgan-gp", "gp_weight": 2.5, "loss": "wasserstein", "n_critic": 2},
    *({"loss": kind} for kind in ("bce", "hinge", "wasserstein", "lsgan")),
    {"lr_g": 1e-4, "lr_d": 4e-4},
    {"mbd": True},
    {"mbstd": True},
    {"data": "grid25", "sn": True, "gp": "r1"},
    {"data": "stacked-digits", "sn": True, "gp": "r1", "mbstd": True, "mbd": True},
    {"on_collapse": "strengthen"},
    {"on_collapse": "strengthen", "strengthen": "mbd,lr-d,penalty"},
    {"unroll": 2, "sn": True},
    {"unroll": 1, "pack": 2, "gp": "r1"},
    {"ttur": True, "lr_schedule": "cosine"},
    {"lr_schedule": "linear"},
    {"sn": True, "n_power_iterations": 5},
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One digit-classifier cache for the module: the fit takes seconds, a cached load milliseconds."""
    return str(tmp_path_factory.mktemp("fastsn-cache"))


@pytest.mark.parametrize("backend", ["fastsn", "torch"])
@pytest.mark.parametrize("settings", OPTIONS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_short_run_per_option(settings, backend, cache_dir):
    config = TrainConfig(**{**TINY, **settings}, backend=backend, cache_dir=cache_dir)
    result = train(config)
    assert len(result.history["d_loss"]) == 3 and all(math.isfinite(v) for v in result.history["d_loss"])
    assert [c.step for c in result.checks] == [1, 2, 3]
    assert result.checks[-1].spectra and all(high >= low >= 0 for high, low in result.checks[-1].spectra.values())
    if settings.get("gp", "none") not in ("none", "wgan-lp"):  # wgan-lp is 0 while every norm is below 1
        assert all(p > 0 for p in result.history["penalty"])
    if settings.get("sn"):
        assert result.checks[-1].sigmas and all(s > 0 for s in result.checks[-1].sigmas.values())
    m = result.metrics
    assert 0 <= m["modes"] <= m["n_modes"] and 0 <= m["precision"] <= 1
    assert m["fid_local"] >= 0 and 1 - 1e-9 <= m["is_local"] <= m["n_modes"] + 1e-9
    assert m["real_fid_local"] < m["fid_local"] and m["real_is_local"] > m["is_local"]  # untrained G: far from data
    assert (m["sliced_emd"] if settings.get("data") == "stacked-digits" else m["emd"]) > 0
    if settings.get("data") == "stacked-digits":
        assert 0.85 < m["classifier_accuracy"] <= 1 and m["real_modes"] > 990 and m["real_reverse_kl"] < 0.1


def _always_collapsing(monkeypatch):
    """A monitor that sees a collapse at every check from the third on: the loop must act each time."""
    from fastsn.train import loop
    from fastsn.train.monitor import CollapseMonitor

    class AlwaysCollapsing(CollapseMonitor):
        def check(self, check):
            self.checks.append(check)
            if len(self.checks) < 3:
                return None
            event = {"step": check.step, "measure": "modes", "value": 0.0, "best": 8.0, "action": self.action}
            self.events.append(event)
            return event

    monkeypatch.setattr(loop, "CollapseMonitor", AlwaysCollapsing)


def test_strengthen_doubles_the_penalty_weight(monkeypatch):
    _always_collapsing(monkeypatch)
    with pytest.warns(UserWarning, match="collapse at step 3"):
        result = train(TrainConfig(**{**TINY, "steps": 4}, gp="wgan-gp", on_collapse="strengthen"))
    assert [(e["step"], e["gp_weight"]) for e in result.events] == [(3, 20.0), (4, 40.0)]
    assert result.history["penalty"][3] > 0 and result.config["gp_weight"] == 40.0
    with pytest.warns(UserWarning):
        result = train(TrainConfig(**{**TINY, "steps": 4}, on_collapse="strengthen"))
    assert result.events[0]["gp"] == "r1" and result.config["gp"] == "r1"
    with pytest.warns(UserWarning):
        result = train(TrainConfig(**{**TINY, "steps": 10}, on_collapse="stop"))
    assert result.stopped_at == 3 and len(result.history["step"]) == 3


@pytest.mark.parametrize("backend", ["fastsn", "torch"])
def test_strengthen_policies_in_turn(monkeypatch, backend):
    from fastsn.train.models import SwitchableFeatures
    _always_collapsing(monkeypatch)
    config = TrainConfig(**{**TINY, "steps": 6}, on_collapse="strengthen", strengthen="mbd,lr-d,penalty",
                         backend=backend, lr_d=4e-4)
    with pytest.warns(UserWarning, match="collapse at step 3"):
        result = train(config)
    changes = [(e["step"], e["policy"], e.get("mbd"), e.get("lr_d"), e.get("gp"), e.get("gp_weight"))
               for e in result.events]
    assert changes == [(3, "mbd", "switched on", None, None, None), (4, "lr-d", None, 2e-4, None, None),
                       (5, "penalty", None, None, "r1", 1.0), (6, "penalty", None, None, "r1", 2.0)]
    assert result.config["mbd_switched_on"] and result.config["lr_d"] == 2e-4
    switch = next(m for m in result.D.modules() if isinstance(m, SwitchableFeatures))
    assert switch.on.item() == 1.0


def test_switched_off_minibatch_layer_gives_zeros_and_no_gradient():
    from fastsn.train.models import ModelOptions, SwitchableFeatures, build_models
    _, D = build_models(ModelOptions("ring8", "fastsn", mbd_switch=True), 0)
    switch = next(m for m in D.modules() if isinstance(m, SwitchableFeatures))
    x = torch.randn(8, 128)
    y = switch(x)
    assert y.shape == (8, 128 + 8) and torch.equal(y[:, :128], x) and torch.equal(y[:, 128:], torch.zeros(8, 8))
    D(torch.randn(8, 2)).sum().backward()
    assert torch.equal(switch.layer.T.grad, torch.zeros_like(switch.layer.T))
    switch.switch_on()
    assert switch(x)[:, 128:].abs().sum() > 0


def test_learning_rates_and_schedules():
    from fastsn.train.config import schedule_factor
    assert TrainConfig().learning_rates == (1e-3, 1e-3)
    assert TrainConfig(ttur=True).learning_rates == (1e-4, 4e-4)
    assert TrainConfig(ttur=True, lr_g=2e-4).learning_rates == (2e-4, 4e-4)
    assert TrainConfig(lr_decay=True).schedule == "decay" == TrainConfig(lr_schedule="decay").schedule
    assert [schedule_factor("decay", s, 10) for s in (0, 5, 6, 9)] == pytest.approx([1, 1, 0.8, 0.2])
    assert [schedule_factor("linear", s, 4) for s in range(4)] == pytest.approx([1, 0.75, 0.5, 0.25])
    assert [schedule_factor("cosine", s, 4) for s in (0, 2)] == pytest.approx([1, 0.5])
    result = train(TrainConfig(**TINY, lr_schedule="linear", ttur=True), evaluate=False)
    assert result.config["lr_g"] == 1e-4 and result.config["lr_schedule"] == "linear"


def test_power_iterations_reach_the_spectral_norms():
    from fastsn.train.models import ModelOptions, build_models
    for backend in ("fastsn", "torch"):
        _, D = build_models(ModelOptions("ring8", backend, sn=True, n_power_iterations=5), 0)
        assert D[0].parametrizations.weight[0].n_power_iterations == 5


def test_cures_suite_table_and_picture(tmp_path, capsys):
    out = tmp_path / "cures"
    assert cli.main(["--suite", "cures", "--steps", "2", "--seeds", "1", "--data", "ring8", "--out", str(out),
                     "--quiet"]) == 0
    printed = capsys.readouterr().out
    from fastsn.train import suites
    for label in suites.CURES:
        assert f"| ring8 | {label} |" in printed
    assert "FID-local" in printed and "EMD" in printed and "s CPU time" in printed
    report = json.loads((out / "report.json").read_text())
    assert len(report["runs"]) == len(suites.CURES) and report["cpu_seconds"] > 0
    assert (out / "cures-samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("ring8-*-samples.png"))  # one combined picture, not one per run


def test_single_run_writes_report_pictures_and_table(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["--sn", "--gp", "r1", "--steps", "4", "--batch-size", "16", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    run = report["runs"]["run"]
    assert run["config"]["sn"] is True and run["steps_done"] == 4 and len(run["history"]["d_loss"]) == 4
    assert {"modes", "high_quality", "reverse_kl", "precision", "recall", "density", "coverage"} <= set(run["metrics"])
    assert {"fid_local", "is_local", "emd", "real_fid_local", "real_is_local", "real_emd"} <= set(run["metrics"])
    assert run["checks"][-1]["spectra"] and run["checks"][-1]["sigmas"]
    for picture in ("run-samples.png", "run-losses.png", "run-modes.png", "run-spectra.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| ring8-sn-gp=r1-bce-fastsn-seed0 |" in printed and "report.json" in printed


def test_main_table_has_every_cure_and_both_backends(tmp_path, capsys):
    out = tmp_path / "main"
    assert cli.main(["--steps", "2", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for label in ("vanilla GAN", "spectral norm", "WGAN-GP", "R1", "minibatch discrimination"):
        assert f"| {label} |" in printed
    report = json.loads((out / "report.json").read_text())
    assert len(report["runs"]) == 10 and report["environment"]["torch"] == torch.__version__


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_config_file_same_keys_and_command_line_wins(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"data": "grid25", "sn": True, "gp-weight": 3, "lr_g": 0.002, "steps": 7}))
    else:
        path.write_text('data = "grid25"\nsn = true\ngp-weight = 3\nlr_g = 0.002\nsteps = 7\n')
    args, given = cli.parse(["--config", str(path), "--steps", "9"])
    config = cli._train_config(args)
    assert (config.data, config.sn, config.gp_weight, config.lr_g, config.steps) == ("grid25", True, 3.0, 0.002, 9)
    assert "data" in given


@pytest.mark.parametrize("argv,message", [
    (["--gp", "wgan"], "argument --gp: invalid choice: 'wgan'"),
    (["--data", "mnist"], "argument --data: invalid choice"),
    (["--loss", "l1"], "argument --loss: invalid choice"),
    (["--backend", "jax"], "argument --backend: invalid choice"),
    (["--on-collapse", "panic"], "argument --on-collapse: invalid choice"),
    (["--steps", "0"], "argument --steps: must be an integer >= 1"),
    (["--steps", "ten"], "argument --steps: invalid value"),
    (["--batch-size", "-4"], "argument --batch-size: must be an integer >= 1"),
    (["--lr-g", "0"], "argument --lr-g: must be a positive number"),
    (["--lr-d=-1e-3"], "argument --lr-d: must be a positive number"),
    (["--gp-weight", "-1"], "argument --gp-weight: must be a number >= 0"),
    (["--gp", "r1", "--gp-weight", "inf"], "argument --gp-weight: must be a finite number, got inf"),
    (["--lr-g", "inf"], "argument --lr-g: must be a finite number, got inf"),
    (["--lr-d", "nan"], "argument --lr-d: must be a finite number, got nan"),
    (["--ema=-inf"], "argument --ema: must be a finite number, got -inf"),
    (["--n-critic", "0"], "argument --n-critic: must be an integer >= 1"),
    (["--batch-size", "1"], "--batch-size: must be an integer >= 2"),
    (["--mbstd", "--batch-size", "30"], "--batch-size: --mbstd groups samples by 4"),
    (["--device", "gpu0"], "--device: 'gpu0' is not a device"),
    (["--unroll", "-1"], "argument --unroll: must be an integer >= 0"),
    (["--n-power-iterations", "0"], "argument --n-power-iterations: must be an integer >= 1"),
    (["--lr-schedule", "step"], "argument --lr-schedule: invalid choice: 'step'"),
    (["--lr-decay", "--lr-schedule", "cosine"], "--lr-decay: is --lr-schedule decay; it contradicts"),
    (["--strengthen", "mbd,more"], "--strengthen: invalid value 'mbd,more'"),
    (["--suite", "cures", "--data", "stacked-digits"], "--data: --suite cures runs on the 2-D data sets"),
])
def test_bad_values_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + ["--quiet"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("content,message", [
    ('{"gp": "wgan"}', "(--config {path}): error: argument --gp: invalid choice: 'wgan'"),
    ('{"steps": -3}', "argument --steps: must be an integer >= 1"),
    ('{"sn": "yes"}', "argument --sn: must be true or false"),
    ('{"learning_rate": 0.1}', "unknown setting 'learning_rate'"),
    ('{"steps": [1, 2]}', "argument --steps: must be a single value"),
    ('{"gp": "r1", "gp_weight": "inf"}', "argument --gp-weight: must be a finite number, got inf"),
    ('{"lr_d": 1e999}', "argument --lr-d: must be a finite number, got inf"),
    ('{"ema": "-inf"}', "argument --ema: must be a finite number, got -inf"),
    ("[1, 2]", "must hold a table of settings"),
    ("{oops", "is not valid JSON"),
    # the settings' own checks, after parsing
    ('{"strengthen": "foo"}', "(--config {path}): error: --strengthen: invalid value 'foo'"),
    ('{"device": "tpu"}', "(--config {path}): error: --device: 'tpu' is not a device"),
    ('{"pack": 3, "batch_size": 10}', "(--config {path}): error: --batch-size: 10 is not divisible by --pack 3"),
    ('{"lr_decay": true, "lr_schedule": "cosine"}', "(--config {path}): error: --lr-decay: is --lr-schedule decay"),
])
def test_bad_config_file_values_name_the_option_and_file(content, message, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--config", str(path), "--quiet"])
    assert exc.value.code == 2
    assert message.format(path=path) in capsys.readouterr().err


@pytest.mark.parametrize("settings,message", [
    ({"lr_g": math.inf}, "--lr-g: must be a finite positive number, got inf"),
    ({"lr_d": math.nan}, "--lr-d: must be a finite positive number, got nan"),
    ({"gp": "r1", "gp_weight": math.inf}, "--gp-weight: must be a finite number >= 0, got inf"),
    ({"ema": math.nan}, "--ema: must be a number in [0, 1), got nan"),
])
def test_train_config_refuses_non_finite_numbers(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**settings).validate()


def test_bad_command_line_value_with_a_config_file_names_no_file(tmp_path, capsys):
    path = tmp_path / "good.json"
    path.write_text('{"steps": 5}')
    with pytest.raises(SystemExit) as exc:
        cli.main(["--config", str(path), "--strengthen", "foo", "--quiet"])
    assert exc.value.code == 2
    assert "fastsn-train: error: --strengthen: invalid value 'foo'" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--config", str(tmp_path / "nope.toml")])
    assert "argument --config: cannot read" in capsys.readouterr().err


def test_digit_classifier_is_fitted_once_and_cached(cache_dir):
    import pathlib

    from fastsn.train.classifier import load_classifier
    from fastsn.train.data import make_dataset
    data = make_dataset("stacked-digits")
    first = load_classifier(data, cache_dir)
    files = list(pathlib.Path(cache_dir).glob("digits-mlp-*.json"))
    assert len(files) == 1
    again = load_classifier(data, cache_dir)  # from the file
    assert torch.equal(first.weight, again.weight) and first.accuracy == again.accuracy > 0.9
    images, modes = data.sample_with_modes(500, torch.Generator().manual_seed(0))
    assert (first.modes(images) == modes).float().mean() > 0.85  # three digits right at ~0.97 each


def test_a_diverging_run_stops_and_reports_it(tmp_path, capsys):
    out = tmp_path / "diverged"
    argv = ["--steps", "60", "--batch-size", "32", "--lr-g", "1e4", "--lr-d", "1e4", "--loss", "wasserstein",
            "--monitor-every", "1", "--out", str(out), "--quiet"]
    with pytest.warns(UserWarning, match=r"training diverged at step \d+ \(D loss is not finite\)"):
        assert cli.main(argv) == 0
    assert "diverged (a loss became NaN or infinite" in capsys.readouterr().out
    run = json.loads((out / "report.json").read_text())["runs"]["run"]  # standard JSON: NaN written as null
    assert run["diverged_at"] == run["steps_done"] < 60
    m = run["metrics"]
    assert m["non_finite_samples"] == 2500 and m["modes"] == 0 and m["precision"] == 0.0
    assert m["fid_local"] is None and m["emd"] is None and m["real_emd"] > 0
    assert (out / "run-spectra.png").exists()


def test_checks_record_condition_numbers(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["--sn", "--steps", "2", "--batch-size", "16", "--out", str(out), "--quiet"]) == 0
    check = json.loads((out / "report.json").read_text())["runs"]["run"]["checks"][-1]
    assert check["condition_numbers"].keys() == check["spectra"].keys()
    for layer, (high, low) in check["spectra"].items():
        assert check["condition_numbers"][layer] == pytest.approx(high / low)


@pytest.mark.parametrize("argv,message", [
    (["--gp-weight", "5"], "--gp-weight is ignored without --gp"),
    (["--n-power-iterations", "3"], "--n-power-iterations is ignored without --sn"),
    (["--strengthen", "mbd"], "--strengthen is ignored with --on-collapse warn"),
    (["--ttur", "--lr-g", "1e-4", "--lr-d", "1e-4"], "--ttur is ignored: --lr-g and --lr-d both replace"),
])
def test_options_a_run_cannot_use_are_named(argv, message, tmp_path, capsys):
    assert cli.main(argv + ["--steps", "1", "--batch-size", "8", "--out", str(tmp_path), "--quiet"]) == 0
    assert f"fastsn-train: warning: {message}" in capsys.readouterr().err


def test_options_a_run_uses_draw_no_warning(tmp_path, capsys):
    argv = ["--gp", "r1", "--gp-weight", "5", "--sn", "--n-power-iterations", "2", "--on-collapse", "strengthen",
            "--strengthen", "mbd", "--ttur", "--lr-g", "1e-4", "--steps", "1", "--batch-size", "8"]
    assert cli.main(argv + ["--out", str(tmp_path), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_non_finite_digit_samples_hit_no_mode(cache_dir):
    # the classifier labels a NaN image all the same (argmax of NaN scores): such a sample must not count as a mode
    from fastsn.train.data import make_dataset
    from fastsn.train.evaluate import Evaluator
    evaluator = Evaluator(make_dataset("stacked-digits"), cache_dir)

    class HalfNaN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            x = torch.tanh(z[:, :1, None, None].expand(-1, 3, 8, 8) * self.scale).clone()  # (N, 3, 8, 8)
            x[::2] = math.nan
            return x

    samples = torch.full((6, 3, 8, 8), math.nan)
    assert evaluator.modes_hit(samples) == 0
    m, samples = evaluator.final(HalfNaN(), 64, torch.device("cpu"))
    assert m["non_finite_samples"] == 13000
    finite_modes = torch.unique(evaluator.classifier.modes(samples[1::2])).numel()
    assert m["modes"] == finite_modes
    assert math.isnan(m["fid_local"]) and math.isnan(m["sliced_emd"]) and math.isnan(m["is_local"])
