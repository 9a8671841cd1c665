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

# the efficacy table: per data set, the best configuration found and the vanilla baseline beside it. The search
# (2026-11-23, 2-core VM shared with other jobs; one or two seeds per candidate, batch 256 unless said):
# ring8: before packing, sn + r1 + --lr-decay at 5000 steps covered 8/8 on four seeds at 92-93% high quality and
#   collapsed on seed 2. --pack 4 --ema 0.999 --lr-decay: 5000 steps seeds 2/0 8/8 at 79.9%/74.9% (the modes had the
#   data's std; ~15% of G's samples lay on bridges between modes); the same with sn + r1 48.4%/62.8%; without --ema
#   80.4%; --ema 0.99 81.2%; lr 3e-4 38.6%; 10000 steps 91.1%; 20000 steps seeds 2/0 95.8%/94.4%. --pack 2, 20000
#   steps, seed 0: 8/8, 97.0%, KL 0.008 (chosen). --model large (G 4 x 400 with batch norm, D 3 x 200) --pack 4,
#   5000 steps: 47.8% at 4x the time per step. No pack, --ema, 5000 steps, seed 2: 7/8, 91.0%.
# grid25: --pack 4 --ema 0.999 --lr-decay 20000 steps: 21/25, 20.4%; --pack 2 10000 steps: 21/25, 54.3%, KL 0.80
#   (chosen then: no candidate came near 24.8/25 and 93%); --model large --pack 2 10000 steps: 21/25, 17.0% at 47 ms
#   per step. The vanilla GAN at 5000 steps (5 seeds, earlier): 20/25, 52%. Then R1 without packing (the cures
#   table's best grid coverage at 2000 steps, 22.0/25), seed 0, lr 1e-3: --gp r1 --lr-decay 10000 steps 25/25, 89.1%,
#   KL 0.007 (the misses lie on straight bridges between neighbouring modes); the same with --ema 0.999 88.5%;
#   --gp-weight 0.3 25/25, 67.8%, KL 0.100; --gp-weight 3 88.7%; 20000 steps seeds 0/1 25/25, 95.2%/95.5%, KL
#   0.006/0.009 (chosen: R1 keeps every mode, the second half's decay to lr 0 pulls the bridges in).
# stacked-digits (batch 64, --ema 0.999 --lr-decay, 3000 steps, seed 0): --pack 2 lr 5e-4 1000 modes, KL 0.119
#   (chosen, at 4000 steps); --pack 2 lr 1e-3 KL 0.142; --pack 4 lr 5e-4 998 modes, KL 0.240; no packing 3 modes,
#   KL 6.75. Before: sn + r1 at batch 128, 1500 steps, 9 modes. At 4000 steps, seed 0 (final run: KL 0.106): lr 2e-4
#   KL 0.214; lr_g 5e-4 with lr_d 1e-3 KL 0.171. Longer, seed 0: 6000 steps KL 0.085; --lr-schedule cosine (instead
#   of --lr-decay) at 4000 steps KL 0.160. 8000 steps, 5 seeds: KL 0.103 +- 0.011 (0.093-0.121; seed 3 worst).
#   Seed 3, 6000 steps: --gp r1 KL 0.103; --batch-size 128 0.107; --model large 0.111; --batch-size 128 --gp r1
#   0.089 (chosen: 5 seeds below).
# 5 seeds (README, efficacy): ring8 8.00/8, 97.1%, KL 0.014 (targets met); grid25, --gp r1 --lr-decay 20000 steps:
#   25.00/25, 95.4%, KL 0.006 (targets met; the vanilla GAN as long 18.8/25, 94.2%; before, --pack 2 --ema 0.999
#   10000 steps: 21.2/25, 49.9%); stacked-digits, --pack 2 --gp r1 batch 128 6000 steps:
#   1000/1000, KL 0.089 (targets met; the vanilla GAN 6.6/1000, KL 6.53).
BEST = {
    "ring8": {"pack": 2, "ema": 0.999, "lr_decay": True},
    "grid25": {"gp": "r1", "lr_decay": True},
    "stacked-digits": {
        "pack": 2, "gp": "r1", "ema": 0.999, "lr_decay": True, "batch_size": 128, "lr_g": 5e-4, "lr_d": 5e-4,
    },
}
# the vanilla GAN beside it, per data set: the best configuration's batch, learning rates and schedule, no cure
# (ring8 and grid25 evaluate G itself, as the runs before --ema did; stacked digits its moving average, as the best)
VANILLA = {
    "ring8": {"lr_decay": True},
    "grid25": {"lr_decay": True},
    "stacked-digits": {"ema": 0.999, "lr_decay": True, "batch_size": 128, "lr_g": 5e-4, "lr_d": 5e-4},
}
EFFICACY_STEPS = {"ring8": 20000, "grid25": 20000, "stacked-digits": 6000}
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
