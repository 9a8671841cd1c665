"""``fastsn-train`` (also ``python -m fastsn.train``): the reference GAN trainer's command line.

Modes:
    no run option          the main table: vanilla GAN, spectral norm, WGAN-GP, R1 and minibatch discrimination on
                           ring8, each with backend fastsn and backend torch (--steps/--seed/--device/--out apply)
    --suite efficacy       the best configuration and a vanilla GAN over --seeds seeds per data set (--data picks one)
    --suite cures          every cure on ring8 and grid25 over --seeds seeds: one table, one picture of the samples
    run options            one run (--data, --sn, --gp, ..., --backend)
    --compare              both backends from the same seed for --steps steps (default 100): deviation and time ratio
                           (with no run option: every configuration of the main table)
Under ``torchrun --nproc_per_node=N -m fastsn.train ...`` runs use DistributedDataParallel (gloo on CPU, nccl on
GPU); rank 0 evaluates, prints and writes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
import sys
import time
from typing import Optional, Sequence

import torch

from fastsn.train import suites
from fastsn.train.config import DEFAULT_LR, DTYPES, FIELDS, LR_SCHEDULES, TTUR_LR, TrainConfig
from fastsn.train.data import DATASETS, make_dataset
from fastsn.train.losses import LOSSES
from fastsn.train.models import BACKENDS, MODELS
from fastsn.train.monitor import ACTIONS
from fastsn.train.penalties import PENALTIES

# options that define a run: giving any of them asks for one run instead of the main table
RUN_OPTIONS = ("data", "sn", "gp", "gp_weight", "mbd", "mbstd", "loss", "n_critic", "lr_g", "lr_d", "lr_decay",
               "batch_size", "backend", "on_collapse", "monitor_every", "dtype", "unroll", "ttur", "lr_schedule",
               "n_power_iterations", "strengthen", "pack", "ema", "model")
COMPARE_STEPS = 100


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _finite_float(text: str) -> float:
    """float(text), refusing inf and nan (an infinite rate or weight only shows as NaN losses, then a failed SVD)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _unit_interval(text: str) -> float:
    value = _finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


for _f in (_positive_int, _non_negative_int, _positive_float, _non_negative_float, _unit_interval):
    _f.__name__ = "value"  # argparse names the type in its message: "invalid value value: 'x'"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; options default to None so that the ones given can be told apart."""
    p = argparse.ArgumentParser(prog="fastsn-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Without options: the main table on ring8 (both backends, five cures).")
    d = TrainConfig()
    run = p.add_argument_group("run")
    run.add_argument("--data", choices=DATASETS, help=f"data set (default {d.data})")
    run.add_argument("--sn", action="store_true", default=None, help="spectral norm on D's Linear/Conv layers")
    run.add_argument("--gp", choices=PENALTIES, help=f"gradient penalty (default {d.gp})")
    run.add_argument("--gp-weight", type=_non_negative_float,
                     help="penalty weight (default 10 for wgan-gp/wgan-lp/dragan, 1 for r1/r2)")
    run.add_argument("--mbd", action="store_true", default=None, help="minibatch discrimination before D's head")
    run.add_argument("--mbstd", action="store_true", default=None, help="minibatch std-dev before D's head")
    run.add_argument("--loss", choices=LOSSES, help=f"adversarial loss (default {d.loss})")
    run.add_argument("--n-critic", type=_positive_int, help=f"D steps per G step (default {d.n_critic})")
    run.add_argument("--lr-g", type=_positive_float, help=f"G's Adam learning rate (default {DEFAULT_LR[0]:g}; "
                     f"--ttur {TTUR_LR[0]:g})")
    run.add_argument("--lr-d", type=_positive_float, help=f"D's Adam learning rate (default {DEFAULT_LR[1]:g}; "
                     f"--ttur {TTUR_LR[1]:g})")
    run.add_argument("--ttur", action="store_true", default=None,
                     help=f"two time-scale preset: G {TTUR_LR[0]:g}, D {TTUR_LR[1]:g} (--lr-g/--lr-d win)")
    run.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="factor on both learning rates over the steps: "
                     "constant; decay (1 for the first half, then linearly to 0); linear (1 to 0); cosine (1 to 0) "
                     f"(default {d.lr_schedule})")
    run.add_argument("--lr-decay", action="store_true", default=None, help="the same as --lr-schedule decay")
    run.add_argument("--unroll", type=_non_negative_int, help="unrolled GAN: G's loss looks through K "
                     "differentiable Adam steps of a copy of D (default 0: off)")
    run.add_argument("--n-power-iterations", type=_positive_int, help="spectral norm's power iterations per "
                     f"forward (default {d.n_power_iterations})")
    run.add_argument("--pack", type=_positive_int, help=f"PacGAN: D judges this many samples at once, concatenated "
                     f"along features (2-D) or channels (images) (default {d.pack}: no packing)")
    run.add_argument("--ema", type=_unit_interval, help="evaluate a moving average of G's weights with this decay, "
                     "e.g. 0.999 (default 0: G itself)")
    run.add_argument("--model", choices=MODELS, help=f"network sizes (default {d.model}; large: 2-D G 4 x 400 with "
                     "batch norm and D 3 x 200, the VEEGAN/PacGAN sizes; stacked digits twice the channels)")
    run.add_argument("--steps", type=_positive_int, help=f"G steps (default {d.steps}; main table "
                     f"{suites.MAIN_STEPS}; --compare {COMPARE_STEPS})")
    run.add_argument("--batch-size", type=_positive_int, help=f"global batch (default {d.batch_size})")
    run.add_argument("--device", help=f"torch device (default {d.device})")
    run.add_argument("--seed", type=_non_negative_int, help=f"seed of weights, data and draws (default {d.seed})")
    run.add_argument("--backend", choices=BACKENDS, help=f"fastsn's modules or plain PyTorch (default {d.backend})")
    run.add_argument("--on-collapse", choices=ACTIONS, help=f"collapse monitor's action (default {d.on_collapse})")
    run.add_argument("--strengthen", help="what --on-collapse strengthen does at each collapse event: penalty "
                     "(double the weight; none: R1), mbd (switch minibatch discrimination on), lr-d (halve D's "
                     "learning rate); comma-separated, the i-th event applies the i-th, the last repeats "
                     f"(default {d.strengthen})")
    run.add_argument("--dtype", choices=DTYPES, help=f"weights and data (default {d.dtype}; --compare: float64)")
    run.add_argument("--monitor-every", type=_non_negative_int, help="steps between monitor checks (0: steps / 20)")
    job = p.add_argument_group("job")
    job.add_argument("--compare", action="store_true", default=None, help="both backends, same seed: deviation")
    job.add_argument("--suite", choices=("main", "efficacy", "cures"),
                     help="a fixed job (default: main without run options); cures: every cure on ring8 and grid25")
    job.add_argument("--seeds", type=_positive_int, help=f"seeds of --suite efficacy (default "
                     f"{suites.EFFICACY_SEEDS})")
    job.add_argument("--out", help="output directory (default fastsn-train-out)")
    job.add_argument("--config", help="a JSON or TOML file of the same settings (keys: option names); options given "
                     "on the command line win")
    job.add_argument("--cache-dir", help="digit classifier cache (default $FASTSN_CACHE or ~/.cache/fastsn)")
    job.add_argument("--threads", type=_positive_int, help="torch CPU threads (default 1: these models are too small "
                     "to gain from more, and lose much on a shared CPU)")
    job.add_argument("--quiet", action="store_true", default=None, help="no progress output")
    return p


def _read_config(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The settings of a JSON or TOML file as command-line tokens (so they get the options' own checks).

    Raises (via parser.error): an unreadable file, an unknown key, a flag that is not true/false.
    """
    try:
        text = pathlib.Path(path).read_text()
    except OSError as e:
        parser.error(f"argument --config: cannot read {path!r}: {e.strerror}")
    try:
        if path.endswith(".toml"):
            import tomllib
            settings = tomllib.loads(text)
        else:
            settings = json.loads(text)
    except ValueError as e:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        parser.error(f"argument --config: {path!r} is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {e}")
    if not isinstance(settings, dict):
        parser.error(f"argument --config: {path!r} must hold a table of settings")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    tokens: list[str] = []
    for key, value in settings.items():
        action = actions.get(key.replace("-", "_"))
        if action is None or action.dest in ("config", "help"):
            parser.error(f"argument --config: unknown setting {key!r} in {path!r}")
        option = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                parser.error(f"argument {option}: must be true or false in {path!r}, got {value!r}")
            tokens += [option] if value else []
        else:
            if isinstance(value, (dict, list)) or value is None:
                parser.error(f"argument {option}: must be a single value in {path!r}, got {value!r}")
            # one "--option=value" token: argparse would take a value such as "-inf" for an option name
            tokens.append(f"{option}={str(value).lower() if isinstance(value, bool) else value}")
    return tokens


def parse(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, set[str]]:
    """Parse the command line (and --config).

    Returns:
        (namespace with None for options not given, the names of the options given).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    from_file = set()
    if args.config:
        tokens = _read_config(args.config, parser)
        file_args = _config_parser(args.config).parse_args(tokens)
        for key, value in vars(file_args).items():
            if getattr(args, key) is None and value is not None:
                setattr(args, key, value)
                from_file.add(key)
    given = {key for key, value in vars(args).items() if value is not None}
    args.from_config = from_file  # (set after `given`, which it is not part of)
    return args, given


def _config_parser(path: str) -> argparse.ArgumentParser:
    """The parser whose errors name the --config file (for a value read from it)."""
    parser = build_parser()
    parser.prog = f"fastsn-train (--config {path})"
    return parser


def _error_parser(args: argparse.Namespace, message: str) -> argparse.ArgumentParser:
    """The parser to report ``message`` (a setting's check, "--option: ...") with: it names the --config file
    when an option the message names took its value from that file."""
    named = {option[2:].replace("-", "_") for option in re.findall(r"--[a-z][a-z0-9-]*", message)}
    if args.config and named & getattr(args, "from_config", set()):
        return _config_parser(args.config)
    return build_parser()


def unused_options(config: TrainConfig, given: set[str]) -> list[str]:
    """Messages for options given that the run cannot use (each names the option that would make it count).

    Args:
        config: the run's settings; given: the options given (command line or --config).
    """
    unused = []
    if "gp_weight" in given and config.gp == "none":
        unused.append("--gp-weight is ignored without --gp (a strengthen event's R1 uses its own weight, 1)")
    if "n_power_iterations" in given and not config.sn:
        unused.append("--n-power-iterations is ignored without --sn")
    if "strengthen" in given and config.on_collapse != "strengthen":
        unused.append(f"--strengthen is ignored with --on-collapse {config.on_collapse} (it needs strengthen)")
    if config.ttur and {"lr_g", "lr_d"} <= given:
        unused.append("--ttur is ignored: --lr-g and --lr-d both replace its learning rates")
    return unused


def _train_config(args: argparse.Namespace, **overrides) -> TrainConfig:
    settings = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
    settings.update(overrides)
    return TrainConfig(**settings)


def _label(config: TrainConfig) -> str:
    parts = [config.data]
    parts += ["sn"] if config.sn else []
    parts += [f"gp={config.gp}"] if config.gp != "none" else []
    parts += ["mbd"] if config.mbd else []
    parts += ["mbstd"] if config.mbstd else []
    parts += [f"unroll{config.unroll}"] if config.unroll else []
    parts += [f"pi{config.n_power_iterations}"] if config.sn and config.n_power_iterations != 1 else []
    parts += ["ttur"] if config.ttur else []
    parts += [config.schedule] if config.schedule != "constant" else []
    parts += [f"pack{config.pack}"] if config.pack > 1 else []
    parts += [f"ema{config.ema:g}"] if config.ema > 0 else []
    parts += [f"model={config.model}"] if config.model != "small" else []
    parts += [config.loss, config.backend, f"seed{config.seed}"]
    return "-".join(parts)


class Job:
    """Runs configurations, writes their outputs under ``out`` and collects their records.

    Args:
        out: the output directory; rank: this process's rank (0 writes); quiet: no progress.
    """

    def __init__(self, out: pathlib.Path, rank: int, quiet: bool) -> None:
        self.out, self.rank, self.quiet = out, rank, quiet
        self.samples: dict[str, torch.Tensor] = {}  # the final samples of each run, by name (for combined pictures)

    def run(self, config: TrainConfig, name: Optional[str] = None, pictures: bool = True) -> dict:
        from fastsn.train import report
        from fastsn.train.loop import train

        name = name or _label(config)
        progress = report.Progress(config.steps, name, enabled=not self.quiet and self.rank == 0)
        started = time.perf_counter()
        try:
            result = train(config, progress)
        finally:
            progress.close()
        if self.rank != 0:
            return {}
        record = report.write_run(self.out, name, result, make_dataset(config.data), pictures)
        record["seconds"] = time.perf_counter() - started
        if result.samples is not None:
            self.samples[name] = result.samples
        return record


def _fmt_mean(values: list[float], digits: int) -> str:
    from fastsn.train.metrics import summarize
    mean, std = summarize(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def run_main(args: argparse.Namespace, job: Job) -> dict:
    """The main table: five cures on ring8, each with both backends."""
    from fastsn.train.report import markdown_table
    steps = args.steps or suites.MAIN_STEPS
    records, rows = {}, []
    for label, settings in suites.MAIN.items():
        pair = {}
        for backend in BACKENDS:
            common = {k: v for k, v in suites.MAIN_COMMON.items() if getattr(args, k) is None}
            config = _train_config(args, **common, **settings, steps=steps, backend=backend, data="ring8")
            pair[backend] = records[f"{label} [{backend}]"] = job.run(config, f"{_slug(label)}-{backend}")
        if job.rank == 0:
            f, t = pair["fastsn"], pair["torch"]
            rows.append([label, f"{f['metrics']['modes']} / {t['metrics']['modes']}",
                         f"{f['metrics']['high_quality']:.1f} / {t['metrics']['high_quality']:.1f}",
                         f"{f['metrics']['reverse_kl']:.3f} / {t['metrics']['reverse_kl']:.3f}",
                         f"{f['ms_per_step']:.2f} / {t['ms_per_step']:.2f}",
                         f"{t['ms_per_step'] / f['ms_per_step']:.2f}x"])
    batch = args.batch_size or suites.MAIN_COMMON["batch_size"]
    table = markdown_table([f"ring8, {steps} steps, batch {batch}", "modes (of 8)", "high quality %", "reverse KL",
                            "ms per step", "torch / fastsn time"], rows)
    return {"job": "main", "steps": steps, "runs": records, "table": table,
            "note": "each cell: backend fastsn / backend torch"}


def _slug(label: str) -> str:
    return label.lower().replace(" ", "-")


def run_efficacy(args: argparse.Namespace, job: Job) -> dict:
    """The best configuration and a vanilla GAN over --seeds seeds on each data set (or --data)."""
    from fastsn.train.report import markdown_table
    datasets = [args.data] if args.data else list(DATASETS)
    seeds = range(args.seed or 0, (args.seed or 0) + (args.seeds or suites.EFFICACY_SEEDS))
    records, rows = {}, []
    for data in datasets:
        for label, settings in (("best", suites.BEST[data]), ("vanilla GAN", suites.VANILLA[data])):
            runs = []
            for seed in seeds:
                steps = args.steps or suites.EFFICACY_STEPS[data]
                config = _train_config(args, **settings, data=data, seed=seed, steps=steps)
                name = f"{data}-{_slug(label)}-seed{seed}"
                runs.append(job.run(config, name))
                records[name] = runs[-1]
            if job.rank != 0:
                continue
            m = [r["metrics"] for r in runs]
            described = ", ".join(f"{k}={v}" for k, v in settings.items()) or "no cure"
            hq = _fmt_mean([x["high_quality"] for x in m], 1) if "high_quality" in m[0] else "-"
            floor = (f"{_fmt_mean([x['real_modes'] for x in m], 1)} / {_fmt_mean([x['real_reverse_kl'] for x in m], 3)}"
                     if "real_modes" in m[0] else "-")
            rows.append([data, f"{label} ({described})", str(len(runs)), str(runs[0]["config"]["steps"]),
                         f"{_fmt_mean([x['modes'] for x in m], 2)} / {m[0]['n_modes']}", hq,
                         _fmt_mean([x["reverse_kl"] for x in m], 3), floor,
                         f"{sum(r['seconds'] for r in runs) / len(runs):.0f}"])
    table = markdown_table(["data", "configuration", "seeds", "steps", "modes", "high quality %", "reverse KL",
                            "real-data floor (modes / KL)", "s per run"], rows)
    return {"job": "efficacy", "runs": records, "table": table, "targets": suites.TARGETS}


def run_cures(args: argparse.Namespace, job: Job) -> dict:
    """Every cure of :data:`suites.CURES` on ring8 and grid25 (or --data) over --seeds seeds: one table of means and
    one picture of the first seed's samples, cures down, data sets across."""
    from fastsn.train import report
    datasets = [args.data] if args.data else list(suites.CURES_DATA)
    if "stacked-digits" in datasets:
        raise ValueError("--data: --suite cures runs on the 2-D data sets (ring8, grid25)")
    seeds = range(args.seed or 0, (args.seed or 0) + (args.seeds or suites.EFFICACY_SEEDS))
    steps = args.steps or suites.CURES_STEPS
    cpu_started = time.process_time()
    records, rows, panels = {}, [], []
    for data in datasets:
        for label, settings in suites.CURES.items():
            common = {k: v for k, v in suites.CURES_COMMON.items() if getattr(args, k) is None}
            runs = []
            for seed in seeds:
                config = _train_config(args, **common, **settings, data=data, seed=seed, steps=steps)
                name = f"{data}-{_slug(label)}-seed{seed}"
                runs.append(job.run(config, name, pictures=False))
                records[name] = runs[-1]
                if seed == seeds[0] and job.rank == 0:
                    panels.append((data, label, name))
            if job.rank != 0:
                continue
            m = [r["metrics"] for r in runs]
            rows.append([data, label, f"{_fmt_mean([x['modes'] for x in m], 1)} / {m[0]['n_modes']}",
                         _fmt_mean([x["high_quality"] for x in m], 1), _fmt_mean([x["reverse_kl"] for x in m], 3),
                         _fmt_mean([x["fid_local"] for x in m], 3), _fmt_mean([x["emd"] for x in m], 3),
                         _fmt_mean([r["ms_per_step"] for r in runs], 1)])
    if job.rank != 0:
        return {}
    cpu_seconds = time.process_time() - cpu_started
    picture = job.out / "cures-samples.png"
    report.plot_sample_grid(picture, [(f"{data}: {label}", job.samples[name], make_dataset(data))
                                      for data, label, name in panels], columns=len(datasets))
    floors = {data: next(r["metrics"] for n, r in records.items() if n.startswith(data)) for data in datasets}
    batch = args.batch_size or suites.CURES_COMMON["batch_size"]
    table = report.markdown_table(
        [f"{steps} steps, batch {batch}, {len(seeds)} seeds", "cure", "modes", "high quality %", "reverse KL",
         "FID-local", "EMD", "ms per step"], rows)
    note = ("mean ± std over seeds; real-data floors at these sample sizes: " +
            "; ".join(f"{d} FID-local {f['real_fid_local']:.4f}, EMD {f['real_emd']:.3f}" for d, f in floors.items()) +
            f"; {cpu_seconds:.0f} s CPU time in this process")
    return {"job": "cures", "steps": steps, "runs": records, "table": table, "note": note,
            "cpu_seconds": cpu_seconds, "picture": str(picture)}


def run_single(args: argparse.Namespace, job: Job) -> dict:
    """One run, with its own table."""
    from fastsn.train.report import markdown_table
    config = _train_config(args).validate()
    record = job.run(config, "run")
    if job.rank != 0:
        return {}
    m = record["metrics"]
    keys = [k for k in ("modes", "high_quality", "reverse_kl", "real_modes", "real_reverse_kl", "classifier_accuracy",
                        "fid_local", "is_local", "emd", "sliced_emd",
                        "precision", "recall", "density", "coverage") if k in m]
    row = [_label(config)] + [f"{m[k]:.3f}" if isinstance(m[k], float) else str(m[k]) for k in keys]
    row += [f"{record['ms_per_step']:.2f}", str(len(record["events"]))]
    table = markdown_table(["run"] + keys + ["ms per step", "collapse events"], [row])
    return {"job": "single", "runs": {"run": record}, "table": table}


def run_compare(args: argparse.Namespace, given: set[str]) -> tuple[dict, bool]:
    """--compare: both backends, same seed; the main table's configurations when no run option is given."""
    from fastsn.train.compare import TOLERANCE, compare
    from fastsn.train.report import markdown_table
    steps = args.steps or COMPARE_STEPS
    dtype = args.dtype or "float64"
    tolerance = TOLERANCE.get(dtype)
    if given & set(RUN_OPTIONS):
        configs = {_label(_train_config(args)): {}}
    else:
        configs = suites.MAIN
    rows, results, ok = [], {}, True
    for label, settings in configs.items():
        config = _train_config(args, **settings, steps=steps, dtype=dtype).validate()
        c = compare(config)
        ok &= c.ok is not False
        results[label] = dataclasses.asdict(c) | {"ok": c.ok}
        rows.append([label, f"{c.loss_deviation:.2e}", f"{c.param_deviation:.2e} ({c.worst})",
                     f"{c.ms_fastsn:.2f}", f"{c.ms_torch:.2f}", f"{c.ms_torch / c.ms_fastsn:.2f}x",
                     {True: "ok", False: "FAIL", None: "-"}[c.ok]])
    verdict = f"within {tolerance:g}" if tolerance is not None else "no bound in float32"
    table = markdown_table([f"{steps} steps, same seed, {dtype}", "max loss deviation",
                            "max parameter deviation (where)", "fastsn ms/step", "torch ms/step", "torch / fastsn time",
                            verdict], rows)
    return {"job": "compare", "steps": steps, "dtype": dtype, "tolerance": tolerance, "results": results,
            "table": table}, ok


def _init_distributed(device: Optional[str]) -> tuple[int, int]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): nccl for CUDA, gloo otherwise."""
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    use_cuda = (device or "cpu").startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), world


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``fastsn-train``. Returns the exit status (1 when --compare exceeds its tolerance)."""
    from fastsn.train import report
    args, given = parse(argv)
    try:
        config = _train_config(args).validate()
    except ValueError as e:
        _error_parser(args, str(e)).error(str(e))
    if not args.suite:  # a suite's runs set some of these options themselves
        for message in unused_options(config, given):
            print(f"fastsn-train: warning: {message}", file=sys.stderr)
    torch.set_num_threads(args.threads or 1)
    rank, world = _init_distributed(args.device)
    out = pathlib.Path(args.out or "fastsn-train-out")
    status = 0
    try:
        started = time.perf_counter()
        if args.compare:
            payload, ok = run_compare(args, given)
            status = 0 if ok else 1
        else:
            job = Job(out, rank, bool(args.quiet))
            if args.suite == "efficacy":
                payload = run_efficacy(args, job)
            elif args.suite == "cures":
                payload = run_cures(args, job)
            elif args.suite == "main" or not (given & set(RUN_OPTIONS)):
                payload = run_main(args, job)
            else:
                payload = run_single(args, job)
        if rank == 0:
            payload.update({"environment": report.environment(), "world_size": world, "threads": args.threads or 1,
                            "seconds": time.perf_counter() - started})
            diverged = [f"{name} at step {r['diverged_at']}" for name, r in payload.get("runs", {}).items()
                        if r.get("diverged_at") is not None]
            if diverged:
                payload["note"] = "; ".join(filter(None, [payload.get("note"), (
                    f"diverged (a loss became NaN or infinite; training stopped there, the metrics are of the last "
                    f"G): {', '.join(diverged)}")]))
            report.write_json(out / "report.json", payload)
            print(payload["table"])
            if payload.get("note"):
                print(f"({payload['note']})")
            print(f"{payload['seconds']:.0f} s; report: {out / 'report.json'}")
    except (ValueError, RuntimeError) as e:
        if isinstance(e, ValueError) and str(e).startswith("--"):
            _error_parser(args, str(e)).error(str(e))
        raise
    finally:
        if world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()
    return status
