"""Outputs of the trainer: the progress bar, the JSON report, the PNG pictures and the summary tables."""
from __future__ import annotations

import datetime
import json
import math
import pathlib
import platform
import sys
from typing import Optional, TextIO

import torch

from fastsn.train.loop import RunResult
from fastsn.train.spectra import condition_number

HISTORY_POINTS = 1000  # the JSON keeps at most this many points of each loss curve


class Progress:
    """A progress bar with live losses and modes: tqdm on a terminal, otherwise one line per tenth of the run.

    Args:
        total: steps; label: what runs; stream: where to write (stderr); enabled: False prints nothing.
    """

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr, enabled: bool = True) -> None:
        self.total, self.label, self.stream, self.enabled = total, label, stream, enabled
        self.bar = None
        if enabled and stream.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=label, file=stream, leave=False, dynamic_ncols=True)
            except ImportError:
                pass
        self.every = max(1, total // 10)

    def __call__(self, step: int, info: dict) -> None:
        if not self.enabled:
            return
        modes = "-" if info.get("modes") is None else info["modes"]
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(d=f"{info['d_loss']:.3f}", g=f"{info['g_loss']:.3f}", modes=modes, refresh=False)
        elif step % self.every == 0 or step == self.total:
            print(f"[{self.label}] step {step}/{self.total}  d_loss {info['d_loss']:.4f}  g_loss {info['g_loss']:.4f}"
                  f"  modes {modes}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def environment() -> dict:
    """Where and when: for the report's header."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.node(), "processor": _cpu_name(), "cpus": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _thin(values: list, points: int = HISTORY_POINTS) -> list:
    stride = max(1, math.ceil(len(values) / points))
    return values[::stride]


def run_record(result: RunResult) -> dict:
    """The JSON-ready record of one run."""
    return {"config": result.config, "metrics": result.metrics, "ms_per_step": result.ms_per_step,
            "steps_done": len(result.history["step"]), "stopped_at": result.stopped_at,
            "diverged_at": result.diverged_at,
            "world_size": result.world_size, "events": result.events,
            "checks": [{"step": c.step, "modes": c.modes, "diversity": c.diversity, "sigmas": c.sigmas,
                        "spectra": {k: list(v) for k, v in c.spectra.items()},
                        "condition_numbers": {k: condition_number(v) for k, v in c.spectra.items()}}
                       for c in result.checks],
            "history": {k: _thin(v) for k, v in result.history.items()}}


def write_json(path: pathlib.Path, payload: dict) -> None:
    """payload as standard JSON: a NaN or infinite float (a diverged run's losses and distances, an infinite
    condition number) is written as null, since JSON has no such numbers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite_or_null(payload), indent=1, allow_nan=False, default=_jsonable) + "\n")


def _finite_or_null(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _finite_or_null(value.tolist())
    return value


def _jsonable(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def plot_samples(path: pathlib.Path, samples: torch.Tensor, centers: Optional[torch.Tensor], std: float,
                 title: str) -> None:
    """2-D: the samples over the mode centres with their 3-std circles; images: an 8x8 grid of the first 64.

    Args:
        samples: (N, 2) points or (N, 3, 8, 8) images in [-1, 1]; centers: (M, 2) or None for images.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    if centers is not None:
        ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label="generated")
        for cx, cy in centers.tolist():
            ax.add_patch(plt.Circle((cx, cy), 3 * std, fill=False, color="red", lw=0.8))
        ax.scatter(centers[:, 0], centers[:, 1], marker="x", color="red", s=20, label="mode centres (3 std)")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7)
    else:
        grid = samples[:64].clamp(-1, 1).add(1).div(2)  # (64, 3, 8, 8) in [0, 1]
        grid = grid.reshape(8, 8, 3, 8, 8).permute(0, 3, 1, 4, 2).reshape(64, 64, 3)  # rows of 8 images
        ax.imshow(grid.numpy(), interpolation="nearest")
        ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(path: pathlib.Path, history: dict[str, list], title: str) -> None:
    """D's loss, G's loss and the penalty over the steps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("d_loss", "g_loss", "penalty"):
        ax.plot(history["step"], history[key], lw=0.7, label=key)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_monitor(path: pathlib.Path, record: dict, title: str) -> None:
    """Modes hit and the fake/real pairwise-distance ratio at each monitor check, with the collapse events."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [c["step"] for c in record["checks"]]
    ax.plot(steps, [c["modes"] for c in record["checks"]], marker=".", color="tab:blue", label="modes hit")
    ax.set_xlabel("step")
    ax.set_ylabel("modes hit", color="tab:blue")
    twin = ax.twinx()
    twin.plot(steps, [c["diversity"] for c in record["checks"]], marker=".", color="tab:orange")
    twin.set_ylabel("fake/real pairwise distance", color="tab:orange")
    for event in record["events"]:
        ax.axvline(event["step"], color="red", lw=0.8, ls="--")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_spectra(path: pathlib.Path, record: dict, title: str) -> None:
    """Per layer of D, at each monitor check: sigma_max of its weight (by SVD; with spectral norm also the power
    iteration's estimate, dashed) and its condition number sigma_max / sigma_min (log scale)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
    steps = [c["step"] for c in record["checks"]]
    layers = list(record["checks"][0]["spectra"])
    for i, layer in enumerate(layers):
        color = f"C{i % 10}"
        spectra = [c["spectra"].get(layer, [float("nan")] * 2) for c in record["checks"]]
        top.plot(steps, [s[0] for s in spectra], color=color, marker=".", label=f"D.{layer}")
        bottom.plot(steps, [s[0] / s[1] if s[1] > 0 else float("nan") for s in spectra], color=color, marker=".")
        estimates = [c["sigmas"].get(layer) for c in record["checks"]]
        if any(e is not None for e in estimates):
            top.plot(steps, [float("nan") if e is None else e for e in estimates], color=color, ls="--", lw=0.8)
    top.set_ylabel("sigma_max (SVD; dashed: SN estimate)", fontsize=8)
    bottom.set_ylabel("condition number", fontsize=8)
    bottom.set_yscale("log")
    bottom.set_xlabel("step")
    top.legend(fontsize=6, ncol=2)
    top.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sample_grid(path: pathlib.Path, panels: list[tuple[str, torch.Tensor, object]], columns: int) -> None:
    """Sample plots side by side: one panel per (title, 2-D samples (N, 2), data set), filled column by column
    (a column per data set when the panels come data set by data set).

    Args:
        path: the PNG; panels: the panels in order; columns: panels per row.
    """
    plt = _pyplot()
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for i, (title, samples, data) in enumerate(panels):
        ax = axes[i % rows][i // rows]
        ax.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.3)
        ax.scatter(data.centers[:, 0], data.centers[:, 1], marker="x", color="red", s=10)
        span = float(data.centers.abs().max()) * 1.5
        ax.set_xlim(-span, span)
        ax.set_ylim(-span, span)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=7)
    for j in range(len(panels), rows * columns):
        axes[j % rows][j // rows].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_run(out: pathlib.Path, name: str, result: RunResult, data, pictures: bool = True) -> dict:
    """The JSON record and the four pictures of one run (samples, losses, modes, spectra), under out/<name>*
    (``pictures=False``: the record only).

    Returns:
        The run's record.
    """
    out.mkdir(parents=True, exist_ok=True)
    record = run_record(result)
    if not pictures:
        return record
    title = f"{name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in result.metrics.items()
                                    if k in ("modes", "high_quality", "reverse_kl"))
    if result.samples is not None:
        centers = getattr(data, "centers", None)
        plot_samples(out / f"{name}-samples.png", result.samples, centers, getattr(data, "std", 0.0), title)
    plot_losses(out / f"{name}-losses.png", result.history, name)
    if record["checks"]:
        plot_monitor(out / f"{name}-modes.png", record, name)
        if record["checks"][0]["spectra"]:
            plot_spectra(out / f"{name}-spectra.png", record, name)
    return record


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (also readable as plain text on stdout)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
