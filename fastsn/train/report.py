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
            "world_size": result.world_size, "events": result.events,
            "checks": [{"step": c.step, "modes": c.modes, "diversity": c.diversity, "sigmas": c.sigmas}
                       for c in result.checks],
            "history": {k: _thin(v) for k, v in result.history.items()}}


def write_json(path: pathlib.Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, allow_nan=False, default=_jsonable) + "\n")


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


def write_run(out: pathlib.Path, name: str, result: RunResult, data) -> dict:
    """The JSON record and the three pictures of one run, under out/<name>*.

    Returns:
        The run's record.
    """
    out.mkdir(parents=True, exist_ok=True)
    record = run_record(result)
    title = f"{name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in result.metrics.items()
                                    if k in ("modes", "high_quality", "reverse_kl"))
    if result.samples is not None:
        centers = getattr(data, "centers", None)
        plot_samples(out / f"{name}-samples.png", result.samples, centers, getattr(data, "std", 0.0), title)
    plot_losses(out / f"{name}-losses.png", result.history, name)
    if record["checks"]:
        plot_monitor(out / f"{name}-modes.png", record, name)
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
