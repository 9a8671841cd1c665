"""fastsn-train --compare: fastsn's modules and penalties against their plain-PyTorch twins, same seed, within the
stated float64 tolerance; and a planted bug is caught."""
from __future__ import annotations

import pytest
import torch

from fastsn.train import cli, models, penalties
from fastsn.train.compare import INITIAL_TOLERANCE, TOLERANCE, _state, compare, initial_models
from fastsn.train.config import TrainConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


CASES = [
    {"sn": True, "gp": "r1"},
    {"sn": True, "gp": "wgan-gp", "loss": "wasserstein", "n_critic": 2},
    {"gp": "dragan", "loss": "hinge"},
    {"sn": True, "gp": "wgan-lp", "loss": "lsgan"},
    {"data": "stacked-digits", "sn": True, "gp": "r2", "batch_size": 16, "steps": 4},
    {"sn": True, "mbd": True, "mbstd": True, "gp": "r1"},
    {"data": "stacked-digits", "mbd": True, "mbstd": True, "batch_size": 16, "steps": 4},
]


@pytest.mark.parametrize("settings", CASES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_backends_agree_within_tolerance(settings):
    config = TrainConfig(**{"steps": 30, "batch_size": 64, **settings}, dtype="float64")
    c = compare(config)
    assert c.initial_deviation <= INITIAL_TOLERANCE
    assert c.loss_deviation <= TOLERANCE["float64"], c
    assert c.param_deviation <= TOLERANCE["float64"], c
    assert c.ok is True and c.ms_fastsn > 0 and c.ms_torch > 0


def test_float32_reports_without_a_verdict():
    c = compare(TrainConfig(steps=3, batch_size=32, sn=True, gp="r1"))
    assert c.dtype == "float32" and c.ok is None and c.loss_deviation < 1e-3


def test_initial_states_match_key_for_key():
    models = initial_models(TrainConfig(sn=True))
    fast, plain = _state(*models["fastsn"]), _state(*models["torch"])
    assert fast.keys() == plain.keys() and any(k.endswith("_u") for k in fast)
    for key, value in plain.items():
        if "_u" not in key and "_v" not in key:
            assert fast[key].equal(value), key  # the weights are the same numbers


def test_a_wrong_penalty_is_caught(monkeypatch):
    # the torch twin's R1 with the wrong convention (weight instead of weight / 2) must fail the comparison
    original = penalties.torch_gradient_penalty
    monkeypatch.setattr(penalties, "torch_gradient_penalty",
                        lambda D, real, fake, kind, weight, generator=None: original(D, real, fake, kind, 2 * weight,
                                                                                     generator))
    c = compare(TrainConfig(steps=5, batch_size=32, gp="r1", dtype="float64"))
    assert c.ok is False and c.loss_deviation > 1e-4


def test_compare_command_prints_the_table_and_exits_zero(tmp_path, capsys):
    assert cli.main(["--compare", "--sn", "--gp", "wgan-gp", "--steps", "5", "--batch-size", "32",
                     "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "max loss deviation" in printed and "| ok |" in printed


@pytest.mark.parametrize("make", [models.mlp_generator, models.conv_generator])
@pytest.mark.parametrize("size", ["small", "large"])
def test_no_generator_bias_feeds_a_batch_norm(make, size):
    # such a bias has gradient 0 in exact arithmetic; in float64 Adam normalizes the two backends' different rounding
    # noise (1e-18) into full steps, so --compare on stacked digits, wgan-gp, 100 steps deviated 1.15e-9 at G.7.bias
    layers = list(make(size))
    for layer, after in zip(layers, layers[1:] + [None]):
        if isinstance(after, torch.nn.Unflatten):
            continue  # Linear -> (C, 2, 2): one bias per position; batch norm cancels only their mean per channel
        if isinstance(after, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            assert getattr(layer, "bias", None) is None, layer
