"""The trainer's fixed jobs: the main table (what ``fastsn-train`` with no options runs: five cures on ring8, each
with both backends), the efficacy table (the best configuration and a vanilla GAN over five seeds per data set) and
the cures table (every cure on ring8 and grid25 over five seeds, one budget, one picture).
"""
from __future__ import annotations

# the main table: label -> settings on top of TrainConfig's defaults (ring8, bce, lr 1e-3 for G and D) and of
# MAIN_COMMON; sized to finish in 3 minutes on a 2-core CPU with both backends (the torch twin of minibatch
# discrimination is the slowest row: its naive broadcast is O(N^2 B C) in memory)
MAIN = {
    "vanilla GAN": {},
    "spectral norm": {"sn": True},
    "WGAN-GP": {"gp": "wgan-gp", "loss": "wasserstein"},
    "R1": {"gp": "r1"},
    "minibatch discrimination": {"mbd": True},
}
MAIN_COMMON = {"batch_size": 128, "lr_decay": True}
MAIN_STEPS = 1000

# the efficacy table: per data set, the best configuration found and the vanilla baseline beside it
# (found on ring8 seed 0, 4000 steps: sn + r1 alone 8 modes, 66% high quality; with --lr-decay 8 modes, 89.7%, KL
# 0.002; r1 alone, hinge + sn, or sn + r1 at lr 2e-4 covered 1 to 7 modes)
BEST = {
    "ring8": {"pack": 2, "ema": 0.999, "lr_decay": True},
    "grid25": {"sn": True, "gp": "r1", "lr_decay": True},
    "stacked-digits": {"pack": 2, "ema": 0.999, "lr_decay": True, "batch_size": 64, "lr_g": 5e-4, "lr_d": 5e-4},
}
# the vanilla GAN beside it, per data set: the best configuration's batch, learning rates and schedule, no cure
VANILLA = {
    "ring8": {"lr_decay": True},
    "grid25": {"lr_decay": True},
    "stacked-digits": {"ema": 0.999, "lr_decay": True, "batch_size": 64, "lr_g": 5e-4, "lr_d": 5e-4},
}
EFFICACY_STEPS = {"ring8": 20000, "grid25": 5000, "stacked-digits": 4000}
EFFICACY_SEEDS = 5
# the targets: (modes at least, high quality % at least, reverse KL at most)
TARGETS = {"ring8": (7.9, 95.0, 0.05), "grid25": (24.8, 93.0, None), "stacked-digits": (1000, None, 0.1)}

# the cures table (--suite cures): every cure the trainer offers, on the same data, steps, batch and schedule
# (CURES_COMMON), backend fastsn, over --seeds seeds on ring8 and grid25
CURES = {
    "vanilla GAN": {},
    "spectral norm": {"sn": True},
    "spectral norm, 5 power iterations": {"sn": True, "n_power_iterations": 5},
    "WGAN-GP": {"gp": "wgan-gp", "loss": "wasserstein"},
    "R1": {"gp": "r1"},
    "DRAGAN": {"gp": "dragan"},
    "minibatch discrimination": {"mbd": True},
    "minibatch std-dev": {"mbstd": True},
    "unrolled GAN (K = 5)": {"unroll": 5},
    "PacGAN (pack 4)": {"pack": 4},
    "TTUR (G 1e-4, D 4e-4)": {"ttur": True},
}
CURES_COMMON = {"batch_size": 128, "lr_decay": True, "backend": "fastsn"}
CURES_STEPS = 2000
CURES_DATA = ("ring8", "grid25")
