"""The trainer's fixed jobs: the main table (what ``fastsn-train`` with no options runs: five cures on ring8, each
with both backends) and the efficacy table (the best configuration and a vanilla GAN over five seeds per data set).
"""
from __future__ import annotations

# the main table: label -> settings on top of TrainConfig's defaults (ring8, bce, lr 1e-3 for G and D, batch 256)
MAIN = {
    "vanilla GAN": {},
    "spectral norm": {"sn": True},
    "WGAN-GP": {"gp": "wgan-gp", "loss": "wasserstein"},
    "R1": {"gp": "r1"},
    "minibatch discrimination": {"mbd": True},
}
MAIN_STEPS = 1500

# the efficacy table: per data set, the best configuration found and the vanilla baseline beside it
BEST = {
    "ring8": {"sn": True, "gp": "r1"},
    "grid25": {"sn": True, "gp": "r1"},
    "stacked-digits": {"sn": True, "gp": "r1"},
}
EFFICACY_STEPS = {"ring8": 4000, "grid25": 6000, "stacked-digits": 6000}
EFFICACY_SEEDS = 5
# the targets: (modes at least, high quality % at least, reverse KL at most)
TARGETS = {"ring8": (7.9, 95.0, 0.05), "grid25": (24.8, 93.0, None), "stacked-digits": (1000, None, 0.1)}
