"""The Python API of the package's detectors: ``Detector(config).fit(tasks, data, out_dir)``, ``.test()``,
``.predict()``, ``.save()`` / ``Detector.load()``.

One class drives both models (``config["model"]``: ``"continual"``, the One-for-More diffusion detector, or
``"refiner"``, the diffusion-transformer refiner), since both follow the same model interface (see
:mod:`oneformore.models.continual_model`) and train with the same :class:`~oneformore.train.Trainer`.

``fit`` learns a sequence of tasks (lists of categories) in one of three variants:

- ``"projection"``: task after task; after each task the layers' input bases are built by the streaming iterative
  SVD (:func:`~oneformore.continual.task_bases.build_task_bases`), and every step of a later task projects the
  gradients, and the resulting weight update, off them with the fused op (GPM). Parameters outside the projected
  layers (normalisation scales, the biases of projected layers) are frozen after the first task, as GPM does.
- ``"naive"``: task after task with plain fine-tuning (the lower bound: catastrophic forgetting).
- ``"joint"``: one training on the union of all tasks with the same total number of steps (the upper bound).

After each task the model is tested on every category seen so far: R[t, j] (mean over task j's categories) for
image AUROC, pixel AUROC and AUPRO. The run directory holds the resolved config, one trainer directory per task
(``task{t}/last.pt``, so a killed run resumes mid-task), ``detector.pt`` (the model, the projector's bases, the R
matrices and the index of the last finished task: a run resumes mid-sequence), ``metrics.json``, ``report.md``,
plots and heatmap strips. Checkpoints hold tensors and primitive containers only (``torch.load(...,
weights_only=True)``) and are written atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

from .config import load_config
from .continual import GradientProjector
from .continual.task_bases import BasisConfig, build_task_bases
from .data.loader import collate_samples
from .data.protocols import Protocol, get_protocol
from .data.source import DataSource
from .data.transforms import AnomalyTransform
from .evaluation import Evaluation, evaluate
from .metrics.continual import continual_summary
from .report import RunWriter
from .report.atomic import write_text_atomic
from .report.calibration import DisplayScale, scale_from_normal_maps
from .report.strips import save_strip
from .train import Trainer, TrainerConfig
from .train.distributed import is_main
from .train.trainer import atomic_save, load_checkpoint

VARIANTS = ("projection", "naive", "joint")
R_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")
CHECKPOINT = "detector.pt"


def build_model(config: dict) -> nn.Module:
    """The model named by ``config['model']``, initialised from ``config['train']['seed']`` without touching the
    global RNG (two detectors built from one config start from the same weights, wherever they are built)."""
    kind = config.get("model", "continual")
    if kind not in ("continual", "refiner"):
        raise ValueError(f"config 'model': expected 'continual' or 'refiner', got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.get("train", {}).get("seed", 0)))
        if kind == "continual":
            from .models.continual_model import ContinualDiffusionModel

            return ContinualDiffusionModel(config)
        from .models.refiner import build_refiner

        return build_refiner(config)


@dataclass
class RunResult:
    """What ``fit`` measured: ``r[metric]`` is the R matrix (rows: after task t; NaN above the diagonal; one row
    for ``joint``), ``final[category]`` the primary output's metrics after the last task, ``summary[metric]`` ACC
    (and FM, BWT for sequential variants)."""

    variant: str
    tasks: list[list[str]]
    r: dict[str, list[list[float]]] = field(default_factory=dict)
    final: dict[str, dict[str, float]] = field(default_factory=dict)
    final_by_output: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)


class Detector:
    """A detector model with its training, testing and prediction.

    Args:
        config: a preset name (``tiny``, ``base``, ``refiner``), a YAML path, or a resolved config dict.
        overrides: ``"a.b=value"`` strings applied to the config.
        device: default CUDA when available, else CPU.
        progress: tqdm progress bars.
    """

    def __init__(self, config: str | Path | dict = "tiny", overrides: Sequence[str] = (), *,
                 device: str | torch.device | None = None, progress: bool = True):
        self.config = dict(config) if isinstance(config, dict) else load_config(config, overrides)
        if isinstance(config, dict) and overrides:
            from .config import apply_overrides

            self.config = apply_overrides(self.config, overrides)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress = progress
        self.model = build_model(self.config).to(self.device)
        self.projector: GradientProjector | None = None
        self.tasks: list[list[str]] = []
        self.variant: str | None = None
        self.completed = -1
        self.r: dict[str, list[list[float]]] = {}
        self.calibration: DisplayScale | None = None

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {
            "format": 1,
            "config": self.config,
            "model": self.model.state_dict(),
            "projector": self.projector.state_dict() if self.projector is not None else None,
            "tasks": self.tasks,
            "variant": self.variant,
            "completed": self.completed,
            "r": self.r,
            "calibration": None if self.calibration is None else
            {"vmin": self.calibration.vmin, "threshold": self.calibration.threshold, "method": self.calibration.method},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.tasks = [list(t) for t in state["tasks"]]
        self.variant, self.completed, self.r = state["variant"], int(state["completed"]), dict(state["r"])
        if state["projector"] is not None:
            self._projector().load_state_dict(state["projector"])
        cal = state.get("calibration")
        self.calibration = DisplayScale(cal["vmin"], cal["threshold"], cal["method"]) if cal else None

    def save(self, path: str | Path) -> Path:
        """Writes the detector atomically (loadable with ``weights_only=True``)."""
        atomic_save(self.state_dict(), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, device=None, progress: bool = True) -> "Detector":
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint: no file at {path} (expected a {CHECKPOINT} written by fit)")
        state = load_checkpoint(path)
        if not isinstance(state, dict) or state.get("format") != 1 or "config" not in state:
            raise ValueError(f"checkpoint {path}: not a oneformore detector checkpoint")
        detector = cls(state["config"], device=device, progress=progress)
        detector.load_state_dict(state)
        return detector

    # ------------------------------------------------------------------ training
    def _projector(self) -> GradientProjector:
        if self.projector is None:
            cont = self.config.get("continual", {})
            self.projector = GradientProjector(self.model.trainable, freeze_bias=bool(cont.get("freeze_bias", True)))
        return self.projector

    def _trainer_config(self, task: int, steps: int) -> TrainerConfig:
        train = dict(self.config["train"])
        train["seed"] = int(train.get("seed", 0)) + task  # each task its own data order and noise
        train["steps"] = steps
        return TrainerConfig.from_dict({**train, "progress": self.progress})

    def _task_parameters(self, sequential_task: int, projected: bool) -> list[nn.Parameter] | None:
        """After the first task of the projection variant: the projected layers' weights (and biases unless
        frozen); every other parameter is frozen. Otherwise: every trainable parameter (None)."""
        if not projected or sequential_task == 0 or not bool(self.config.get("continual", {}).get("freeze_other", True)):
            return None
        projector = self._projector()
        params = []
        for module in projector.layers.values():
            params.append(module.weight)
            if module.bias is not None and not projector.freeze_bias:
                params.append(module.bias)
        return params

    def _train_task(self, task: int, dataset, out_dir: Path, steps: int, projected: bool,
                    stop_after: int | None) -> bool:
        trainer = Trainer(self.model, dataset, self._trainer_config(task, steps), out_dir, device=self.device,
                          parameters=self._task_parameters(task, projected), collate_fn=collate_samples)
        if projected and task > 0:
            projector = self._projector()
            trainer.extra_state["projector"] = projector

            def before_step(_trainer):
                projector.project()
                if bool(self.config.get("continual", {}).get("project_update", True)):
                    projector.snapshot_weights()

            trainer.pre_step_hooks.append(before_step)
            trainer.post_step_hooks.append(lambda _trainer: projector.project_update())
        trainer.fit(stop_after=stop_after)
        finished = trainer.step >= trainer.config.steps
        if finished:
            self.model.load_state_dict(trainer.ema_state_dict())
        return finished

    def fit(self, tasks: Protocol | str | Sequence[Sequence[str]], data: DataSource | str | Path | None = None,
            out_dir: str | Path = "runs/detector", *, variant: str = "projection", test: bool = True,
            shared_dir: str | Path | None = None, stop_after: int | None = None) -> RunResult | None:
        """Learns ``tasks`` (a protocol preset name, a Protocol, or a list of lists of categories) from ``data``
        (a DataSource, a folder, or None for the procedural dataset) into ``out_dir``, resuming whatever that
        directory already holds. ``shared_dir`` holds stages shared between variants (the autoencoder).
        ``stop_after``: stop after that many training steps of the current task (returns None; for tests and
        time-boxed runs; call again to resume). Under torchrun (see :mod:`oneformore.train.distributed`) the
        training steps and the bases are shared by the ranks, every rank ends with the same model, and only rank 0
        writes files and returns the result (the others return None)."""
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        protocol = get_protocol(tasks)
        data = data if isinstance(data, DataSource) else DataSource(data, image_size=self.config["image_size"])
        out_dir = Path(out_dir)
        main = is_main()  # under torchrun every rank trains, tests and computes; rank 0 alone writes
        out_dir.mkdir(parents=True, exist_ok=True)
        if main:
            write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
        ckpt = out_dir / CHECKPOINT
        sequence = [list(t) for t in protocol.tasks]
        if ckpt.is_file():
            self.load_state_dict(load_checkpoint(ckpt))
            if self.variant != variant or self.tasks != sequence:
                raise ValueError(f"{ckpt}: holds a {self.variant!r} run of {self.tasks}, not {variant!r} of {sequence}; "
                                 "use another out_dir")
        self.variant, self.tasks = variant, sequence
        train_tasks = [[c for t in sequence for c in t]] if variant == "joint" else sequence
        steps = int(self.config["train"]["steps"]) * (len(sequence) if variant == "joint" else 1)
        prepare = getattr(self.model, "prepare", None)
        if prepare is not None:
            prepare(data.dataset(train_tasks[0], "train"), Path(shared_dir or out_dir) / "autoencoder", self.progress)
        for t in range(self.completed + 1, len(train_tasks)):
            train_set = data.dataset(train_tasks[t], "train")
            if not self._train_task(t, train_set, out_dir / f"task{t}", steps, variant == "projection", stop_after):
                return None
            if variant == "projection" and t < len(train_tasks) - 1:
                self._update_bases(t, train_set)
            if test:
                last = t == len(train_tasks) - 1
                self._record(t, data, sequence, variant, out_dir / "strips" if last and main else None)
            self.completed = t
            if main:
                self.save(ckpt)
        self.calibrate(data.dataset(train_tasks[-1], "train"))
        if not main:
            return None
        self.save(ckpt)
        return self.report(data, out_dir) if test else None

    def _update_bases(self, task: int, dataset) -> None:
        projector = self._projector()
        cfg = BasisConfig.from_dict(self.config.get("continual", {}).get("bases", {}))
        bases = build_task_bases(self.model, projector.layers, dataset, dict(projector.bases), task, cfg,
                                 device=self.device, seed=int(self.config["train"].get("seed", 0)),
                                 progress=self.progress)
        projector.set_bases(bases)

    def _record(self, t: int, data: DataSource, sequence: list[list[str]], variant: str,
                strips_dir: Path | None) -> None:
        """Tests on every category seen so far and fills row t of the R matrices (the last task's evaluation,
        with its strips, is kept for the report)."""
        seen = len(sequence) if variant == "joint" else t + 1
        evaluation = self.test(data, [c for task in sequence[:seen] for c in task], strips_dir=strips_dir)
        if strips_dir is not None:
            self._final_evaluation = evaluation
        values = evaluation.values()
        for metric in R_METRICS:
            row = [float(np.mean([values[c].get(metric, math.nan) for c in task])) for task in sequence[:seen]]
            self.r.setdefault(metric, []).append(row + [math.nan] * (len(sequence) - seen))

    # ------------------------------------------------------------------ testing and prediction
    def test(self, data: DataSource | str | Path | None, categories: Sequence[str] | None = None, *,
             strips_dir: str | Path | None = None) -> Evaluation:
        """Metrics per category (and per model output) on the test split of ``categories`` (default: every
        category learned)."""
        data = data if isinstance(data, DataSource) else DataSource(data, image_size=self.config["image_size"])
        categories = list(categories or [c for t in self.tasks for c in t])
        if not categories:
            raise ValueError("categories: none given and the detector has learned none")
        ev = self.config.get("eval", {})
        return evaluate(self.model, data.dataset(categories, "test"), batch_size=int(ev.get("batch_size", 16)),
                        device=self.device, seed=int(self.config["train"].get("seed", 0)), strips_dir=strips_dir,
                        strips_per_category=int(ev.get("strips_per_category", 3)), denormalise=data.denormalise,
                        progress=self.progress)

    @torch.no_grad()
    def calibrate(self, dataset, images: int = 32, quantile: float = 0.99) -> DisplayScale:
        """The display/decision scale of ``predict``: the ``quantile`` of the pixel scores of up to ``images``
        normal training images (no anomalous labels needed; being training images, the threshold is on the low
        side, i.e. it errs towards flagging)."""
        n = min(images, len(dataset))
        batch = collate_samples([dataset[i] for i in range(n)])
        maps = next(iter(self.model.score(batch["image"].to(self.device)).values()))[0]
        self.calibration = scale_from_normal_maps(maps.cpu(), quantile)
        return self.calibration

    @torch.no_grad()
    def predict(self, images: Sequence[str | Path], out_dir: str | Path | None = None,
                batch_size: int = 8) -> list[dict]:
        """Scores image files: per image {"path", "score", "anomalous" (score above the calibrated threshold,
        when calibrated), "map" ([H, W] float32 tensor)}; with ``out_dir``, a heatmap strip per image."""
        transform = AnomalyTransform(self.config["image_size"])
        results = []
        self.model.eval()
        for start in range(0, len(images), batch_size):
            paths = [Path(p) for p in images[start : start + batch_size]]
            tensors = []
            for p in paths:
                if not p.is_file():
                    raise FileNotFoundError(f"images: no file at {p}")
                try:
                    with Image.open(p) as im:
                        tensors.append(transform.image(im.convert("RGB")))
                except OSError as exc:
                    raise OSError(f"images: cannot read {p} as an image ({exc})") from exc
            maps, scores = next(iter(self.model.score(torch.stack(tensors).to(self.device)).values()))
            for p, x, m, s in zip(paths, tensors, maps.cpu(), scores.cpu()):
                item = {"path": str(p), "score": float(s), "map": m[0]}
                if self.calibration is not None:
                    item["anomalous"] = bool(m.max() >= self.calibration.threshold)
                    if out_dir is not None:
                        save_strip(Path(out_dir) / f"{p.stem}.png", transform.denormalise(x), None, m,
                                   self.calibration)
                results.append(item)
        return results

    # ------------------------------------------------------------------ report
    def report(self, data: DataSource, out_dir: str | Path) -> RunResult:
        """Final per-category metrics with heatmap strips, the R matrices and their plots, metrics.json and
        report.md in ``out_dir``."""
        out_dir = Path(out_dir)
        result = RunResult(self.variant or "projection", self.tasks, r=self.r)
        writer = RunWriter(out_dir)
        evaluation = getattr(self, "_final_evaluation", None) or self.test(data, strips_dir=out_dir / "strips")
        for output in evaluation.outputs:
            values = evaluation.values(output)
            result.final_by_output[output] = values
            for category, metrics in evaluation.metrics.items():
                name = category if output == evaluation.outputs[0] else f"{category} ({output})"
                writer.add_metrics(name, metrics[output])
        result.final = result.final_by_output[evaluation.outputs[0]]
        names = ["+".join(t) for t in self.tasks]
        for metric, r in self.r.items():
            r = np.asarray(r, dtype=float)
            if r.shape[0] == r.shape[1]:
                result.summary[metric] = writer.add_continual(r, names, metric=metric)
            else:
                result.summary[metric] = {"acc": float(np.nanmean(r[-1])), "fm": math.nan, "bwt": math.nan}
        writer.add_strips(evaluation.strips)
        notes = f"Model `{self.config.get('model', 'continual')}` (config `{self.config.get('name')}`), variant " \
                f"`{result.variant}`, tasks: {' -> '.join(names)}."
        writer.finish(title=f"oneformore: {result.variant}", notes=notes)
        return result
