"""fastsn-train --pack (PacGAN), --ema and --model large: packing shapes, D's input sizes, the large networks' sizes,
short runs with both backends, the two backends' agreement in float64, and clear errors for bad values."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from fastsn.train import cli, loop
from fastsn.train.compare import INITIAL_TOLERANCE, TOLERANCE, _state, compare, initial_models
from fastsn.train.config import TrainConfig
from fastsn.train.loop import ema_decay, train, update_ema
from fastsn.train.models import ModelOptions, build_models, pack_samples

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pack_2d_concatenates_consecutive_samples():
    x = torch.arange(16.0).view(8, 2)  # sample i = (2i, 2i + 1)
    packed = pack_samples(x, 4)
    assert packed.shape == (2, 8)
    assert packed[0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]  # samples 0..3 side by side
    assert torch.equal(packed[1], torch.cat([x[4], x[5], x[6], x[7]]))
    assert pack_samples(x, 1) is x


def test_pack_images_along_channels():
    x = torch.randn(6, 3, 8, 8)
    packed = pack_samples(x, 2)
    assert packed.shape == (3, 6, 8, 8)
    for i in range(3):
        assert torch.equal(packed[i, :3], x[2 * i]) and torch.equal(packed[i, 3:], x[2 * i + 1])


def test_pack_rejects_a_batch_that_does_not_split():
    with pytest.raises(ValueError, match="--pack: a batch of 10 samples does not split into packs of 4"):
        pack_samples(torch.zeros(10, 2), 4)


@pytest.mark.parametrize("backend", ["fastsn", "torch"])
@pytest.mark.parametrize("data,sample,first_size", [("ring8", (2,), lambda D: D[0].in_features),
                                                     ("stacked-digits", (3, 8, 8), lambda D: D[0].in_channels)])
def test_discriminator_input_is_sized_for_the_pack(backend, data, sample, first_size):
    for m in (1, 2, 4):
        G, D = build_models(ModelOptions(data, backend, sn=True, mbstd=True, pack=m), seed=0)
        assert first_size(D) == m * sample[0]
        fake = G(torch.randn(16, G[0].in_features))
        assert fake.shape == (16,) + sample  # G is unchanged by packing
        assert D(pack_samples(fake, m)).shape == (16 // m, 1)


@pytest.mark.parametrize("backend", ["fastsn", "torch"])
@pytest.mark.parametrize("settings", [{"sn": True, "gp": "wgan-gp"}, {"gp": "r1", "mbd": True, "ema": 0.99},
                                      {"data": "stacked-digits", "sn": True, "gp": "r1", "mbstd": True}],
                         ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_short_run_with_pack_2(settings, backend, tmp_path):
    config = TrainConfig(steps=3, batch_size=32, monitor_every=1, pack=2, backend=backend, cache_dir=str(tmp_path),
                         **settings)
    result = train(config)
    assert result.config["pack"] == 2
    assert result.D[0].weight.shape[1] == (6 if settings.get("data") else 4)  # 2 x 3 channels, or 2 x 2 features
    assert all(math.isfinite(v) for key in ("d_loss", "g_loss", "penalty") for v in result.history[key])
    assert all(p > 0 for p in result.history["penalty"])  # the penalty ran on the packed samples
    assert 0 <= result.metrics["modes"] <= result.metrics["n_modes"]


@pytest.mark.parametrize("settings", [
    {"pack": 2, "sn": True, "gp": "wgan-gp", "loss": "wasserstein", "n_critic": 2},
    {"pack": 4, "sn": True, "gp": "r1", "mbd": True, "mbstd": True, "ema": 0.99},
    {"pack": 2, "data": "stacked-digits", "sn": True, "gp": "dragan", "batch_size": 16, "steps": 4},
    {"pack": 4, "model": "large", "sn": True, "gp": "r1", "ema": 0.999, "steps": 5},
    {"pack": 2, "model": "large", "data": "stacked-digits", "gp": "r1", "batch_size": 16, "steps": 3},
], ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_backends_agree_with_packing_in_float64(settings):
    c = compare(TrainConfig(**{"steps": 10, "batch_size": 64, **settings}, dtype="float64"))
    assert c.initial_deviation <= INITIAL_TOLERANCE
    assert c.loss_deviation <= TOLERANCE["float64"] and c.param_deviation <= TOLERANCE["float64"], c
    assert c.ok is True


def test_packing_changes_what_d_sees():
    # the same seed with and without packing must train differently (packing is not a no-op)
    plain = train(TrainConfig(steps=3, batch_size=32, sn=True, gp="r1"), evaluate=False)
    packed = train(TrainConfig(steps=3, batch_size=32, sn=True, gp="r1", pack=2), evaluate=False)
    assert plain.history["d_loss"] != packed.history["d_loss"]


def test_compare_command_with_pack(tmp_path, capsys):
    assert cli.main(["--compare", "--pack", "2", "--sn", "--gp", "r1", "--steps", "4", "--batch-size", "32",
                     "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| ring8-sn-gp=r1-pack2-bce-fastsn-seed0 |" in printed and "| ok |" in printed


def test_ema_ramp_and_update():
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11) and ema_decay(0.999, 10**6) == 0.999
    a, b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        a.weight.fill_(1.0)
        b.weight.fill_(3.0)
        b.running_mean.fill_(5.0)
    update_ema(a, b, 0.75)
    assert torch.allclose(a.weight, torch.full((3,), 1.5)) and torch.equal(a.running_mean, b.running_mean)


def test_ema_is_what_gets_evaluated(monkeypatch):
    seen = []
    original = loop.Evaluator.final

    def spy(self, G, z_dim, device):
        seen.append(G)
        return original(self, G, z_dim, device)

    monkeypatch.setattr(loop.Evaluator, "final", spy)
    result = train(TrainConfig(steps=20, batch_size=32, ema=0.9, monitor_every=20))
    assert seen == [result.G_ema] and result.G_ema is not result.G
    deviation = max(float((p - q).detach().abs().max()) for p, q in zip(result.G_ema.parameters(),
                                                                        result.G.parameters()))
    assert deviation > 0  # an average of past weights, not a copy
    assert train(TrainConfig(steps=2, batch_size=32)).G_ema is None


@pytest.mark.parametrize("argv,message", [
    (["--pack", "0"], "argument --pack: must be an integer >= 1"),
    (["--pack", "3"], "--batch-size: 256 is not divisible by --pack 3"),
    (["--pack", "4", "--batch-size", "30"], "--batch-size: 30 is not divisible by --pack 4"),
    (["--pack", "2", "--mbstd", "--batch-size", "36"], "--mbstd groups samples by 4, so the batch (divided by --pack)"),
    (["--ema", "1"], "argument --ema: must be a number in [0, 1)"),
    (["--ema", "-0.5"], "argument --ema: must be a number in [0, 1)"),
])
def test_bad_pack_and_ema_values_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + ["--quiet"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_config_validation_of_pack():
    with pytest.raises(ValueError, match=r"--pack: must be an integer >= 1, got 0"):
        TrainConfig(pack=0).validate()
    with pytest.raises(ValueError, match=r"--pack: must be an integer >= 1, got 2.0"):
        TrainConfig(pack=2.0).validate()
    assert TrainConfig(pack=4, batch_size=64).validate().pack == 4


def test_each_process_share_must_split_into_packs(monkeypatch):
    # under DDP with 2 processes a global batch of 12 is divisible by 4, but each process's 6 samples are not
    monkeypatch.setattr(loop, "_world", lambda: (0, 2))
    with pytest.raises(ValueError, match=r"--batch-size: each process's share, 12 / 2 = 6, is not divisible by "
                                         r"--pack 4"):
        train(TrainConfig(steps=1, batch_size=12, pack=4), evaluate=False)


def test_config_file_key_pack(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("pack = 4\nema = 0.999\n")
    args, given = cli.parse(["--config", str(path)])
    config = cli._train_config(args)
    assert (config.pack, config.ema) == (4, 0.999) and {"pack", "ema"} <= given


@pytest.mark.parametrize("data", ["ring8", "stacked-digits"])
def test_large_model_sizes_and_identical_initial_weights(data):
    models = initial_models(TrainConfig(data=data, sn=True, model="large", pack=2))
    G, D = models["fastsn"]
    if data == "ring8":
        widths = [m.out_features for m in G if isinstance(m, torch.nn.Linear)]
        assert widths == [400, 400, 400, 400, 2] and sum(isinstance(m, torch.nn.BatchNorm1d) for m in G) == 4
        assert [m.out_features for m in D if isinstance(m, torch.nn.Linear)] == [200, 200, 200, 1]
        assert D[0].in_features == 4
    else:
        assert [m.out_channels for m in D if isinstance(m, torch.nn.Conv2d)] == [64, 128, 256]
        assert D[0].in_channels == 6 and copy.deepcopy(G)(torch.randn(4, 64)).shape == (4, 3, 8, 8)  # no BN update
    small = build_models(ModelOptions(data, "fastsn"), seed=0)[0]
    assert sum(p.numel() for p in G.parameters()) > 2 * sum(p.numel() for p in small.parameters())
    fast, plain = _state(*models["fastsn"]), _state(*models["torch"])
    assert fast.keys() == plain.keys()
    for key, value in plain.items():
        if "_u" not in key and "_v" not in key:
            assert fast[key].equal(value), key


def test_bad_model_names_the_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--model", "huge", "--quiet"])
    assert "argument --model: invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--model: invalid value 'huge'"):
        TrainConfig(model="huge").validate()
