"""The step-based training loop shared by both detectors.

Model interface: any ``nn.Module`` with ``training_loss(batch, generator) -> Tensor`` (a scalar). ``batch`` is what
the default collate makes of the dataset's samples (for the package's datasets: a dict of stacked tensors and lists
of strings), already on the trainer's device; ``generator`` is a CPU ``torch.Generator`` seeded from
(seed, step, rank), to be used for every random draw of the loss (noise, timesteps, AMN masks), which makes a step's
randomness a function of its index: resumed and uninterrupted runs draw the same numbers.

What one step does: forward under autocast (GPU only: bf16 or fp16; fp32 everywhere on CPU) → backward (loss scaled
for fp16) → unscale → ``pre_step_hooks`` (each called as ``hook(trainer)`` with the gradients in ``.grad``: the
gradient projector registers here) → gradient clipping by global norm → AdamW step with the learning rate of the
cosine schedule with linear warmup → ``post_step_hooks`` (``hook(trainer)`` after the weights changed: the
projector's exact update projection registers here) → EMA update of the weights.

Data: a map-style dataset; the order is a seeded permutation per epoch, and global step s takes the slice
[s·B·W, (s+1)·B·W) of it (B = ``batch_size`` per process, W = world size; rank r takes its B). So the data of any step
is known without iterator state, and a DDP run sees the same global batches as one process with batch B·W.

Checkpoints (``out_dir/last.pt``, every ``checkpoint_every`` steps and at the end) hold only tensors and primitive
containers, so ``torch.load(path, weights_only=True)`` reads them: model, EMA, optimizer, grad scaler, step, the RNG
states (torch CPU and CUDA, numpy, python), the config, the loss history and ``extra`` (the ``state_dict()`` of each
object registered in ``trainer.extra_state``, e.g. the projector's bases). They are written atomically (temporary
file in the same directory, fsync, ``os.replace``). ``fit()`` resumes from ``last.pt`` when it exists.

Seeding: ``fit()`` seeds the global torch, numpy and python RNGs with ``config.seed`` (a resumed run then restores
the states saved in the checkpoint); the data order and the per-step generators depend on the seed only.

Distributed: when ``torch.distributed`` is initialised (``torchrun``), the model is wrapped in DDP, each rank trains
on its share of every global batch, and rank 0 alone writes checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate
from tqdm.auto import tqdm

CHECKPOINT_NAME = "last.pt"
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass
class TrainerConfig:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the cosine decays to lr · min_lr_ratio
    ema_decay: float = 0.999  # 0 disables the EMA
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    precision: str = "bf16"  # autocast dtype on GPU; CPU always runs fp32
    seed: int = 0
    checkpoint_every: int = 0  # 0: only at the end
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size: expected >= 1, got {self.steps}, {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected in [0, 1), got {self.ema_decay}")
        self.betas = tuple(self.betas)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainerConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"train config: unknown keys {unknown}; expected some of {sorted(names)}")
        return cls(**d)


def lr_at(step: int, cfg: TrainerConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from ``lr`` to ``lr · min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``: a crash at any point leaves
    either the old file or the new one, never a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :class:`Trainer`, read with ``weights_only=True`` onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_to_tuples(state["python"]))


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class StepBatchSampler(Sampler[list[int]]):
    """Index batches for steps ``start .. steps-1`` of one rank (see the module docstring for the layout)."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        self.global_batch = batch_size * world
        if n < self.global_batch:
            raise ValueError(f"dataset: {n} samples, fewer than one global batch ({self.global_batch})")
        self.n, self.batch_size, self.steps, self.seed = n, batch_size, steps, seed
        self.start, self.rank = start, rank
        self.per_epoch = n // self.global_batch  # incomplete last batch of an epoch is dropped

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def _order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self):
        epoch, order = None, None
        for step in range(self.start, self.steps):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                order = self._order(epoch)
            first = (step % self.per_epoch) * self.global_batch + self.rank * self.batch_size
            yield order[first : first + self.batch_size].tolist()


class _LossModule(nn.Module):
    """DDP synchronises gradients of what runs through ``forward``: route ``training_loss`` through it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, generator):
        return self.model.training_loss(batch, generator)


class Trainer:
    """``Trainer(model, dataset, config, out_dir).fit()`` trains ``model`` for ``config.steps`` steps (resuming
    from ``out_dir/last.pt`` when present) and returns the loss history (one float per step, this run's and the
    resumed ones). ``pre_step_hooks`` and ``extra_state`` may be filled before ``fit``."""

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: TrainerConfig,
        out_dir: str | Path,
        device: str | torch.device | None = None,
        collate_fn: Callable | None = None,
        parameters: list[nn.Parameter] | None = None,
    ):
        if not callable(getattr(model, "training_loss", None)):
            raise TypeError(f"model: expected a module with training_loss(batch, generator), got {type(model).__name__}")
        self.config = config
        self.out_dir = Path(out_dir)
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.world = torch.distributed.get_world_size() if self.distributed else 1
        if device is None:
            if torch.cuda.is_available():
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(device)
            else:
                device = torch.device("cpu")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.dataset = dataset
        self.collate_fn = collate_fn or default_collate
        params = parameters if parameters is not None else [p for p in model.parameters() if p.requires_grad]
        self.params = params
        # fused: one kernel for every parameter (CPU and CUDA); torch's default on CPU is a per-tensor Python loop
        fused = self.device.type in ("cpu", "cuda") and all(p.dtype.is_floating_point for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
                                           fused=fused or None)
        self.autocast_dtype = PRECISIONS[config.precision] if self.device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype is torch.float16)
        self.ema = self._init_ema() if config.ema_decay > 0 else None
        self.pre_step_hooks: list[Callable[["Trainer"], None]] = []
        self.post_step_hooks: list[Callable[["Trainer"], None]] = []
        self.extra_state: dict[str, Any] = {}
        self.step = 0
        self.history: list[float] = []
        self.last_grad_norm: float | None = None
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.runner = nn.parallel.DistributedDataParallel(_LossModule(self.model), device_ids=ids)
        else:
            self.runner = _LossModule(self.model)

    # ----- EMA -----
    def _init_ema(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().float().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up of the decay (as in timm's ModelEmaV2 / LDM's LitEma) so early averages are not stuck at init.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        names = list(self.ema)
        params = dict(self.model.named_parameters())
        torch._foreach_lerp_([self.ema[n] for n in names], [params[n].detach().float() for n in names], 1 - decay)

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with EMA weights in place of the trained parameters (buffers as trained)."""
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            for name, value in self.ema.items():
                state[name] = value.to(state[name].dtype)
        return state

    # ----- checkpoints -----
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def state_dict(self) -> dict:
        return {
            "format": 1,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "config": asdict(self.config),
            "world_size": self.world,
            "history": list(self.history),
            "extra": {name: obj.state_dict() for name, obj in self.extra_state.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        for name, obj in self.extra_state.items():
            if name in state["extra"]:
                obj.load_state_dict(state["extra"][name])

    def save_checkpoint(self) -> None:
        if self.rank == 0:
            atomic_save(self.state_dict(), self.checkpoint_path)
            record = {"step": self.step, "config": asdict(self.config), "world_size": self.world,
                      "torch": torch.__version__, "loss": self.history[-1] if self.history else None}
            atomic_write_text(json.dumps(record, indent=2), self.out_dir / "trainer.json")
        if self.distributed:
            torch.distributed.barrier()

    def resume(self) -> bool:
        """Loads ``out_dir/last.pt`` when it exists; returns whether it did."""
        if not self.checkpoint_path.is_file():
            return False
        self.load_state_dict(load_checkpoint(self.checkpoint_path))
        return True

    # ----- the loop -----
    def step_generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.config.seed * 1_000_003 + step) * 1009 + self.rank)

    def train_step(self, batch) -> float:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss = self.runner(batch, self.step_generator(self.step))
        if loss.dim() != 0:
            raise ValueError(f"training_loss: expected a scalar, got shape {tuple(loss.shape)}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        for hook in self.pre_step_hooks:
            hook(self)
        if cfg.grad_clip > 0:
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for hook in self.post_step_hooks:
            hook(self)
        self.step += 1
        if self.ema is not None:
            self._update_ema()
        value = loss.detach().float()
        if self.distributed:
            torch.distributed.all_reduce(value)
            value /= self.world
        return float(value)

    def fit(self, resume: bool = True, stop_after: int | None = None) -> list[float]:
        """Trains up to ``config.steps`` (or until ``stop_after`` steps of this call, for tests and time-boxed
        runs; a checkpoint is written when it stops early)."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        if resume:
            self.resume()
        sampler = StepBatchSampler(len(self.dataset), cfg.batch_size, cfg.steps, cfg.seed, self.step,
                                   self.rank, self.world)
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                            collate_fn=self.collate_fn, pin_memory=self.device.type == "cuda",
                            # its own generator: a loader must not draw from the global RNG (resume exactness)
                            generator=torch.Generator().manual_seed(cfg.seed))
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress or self.rank != 0, desc="train")
        done = 0
        for batch in loader:
            loss = self.train_step(_to_device(batch, self.device))
            self.history.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr_at(self.step - 1, cfg):.2e}")
            done += 1
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()
            if stop_after is not None and done >= stop_after:
                break
        bar.close()
        self.save_checkpoint()
        return self.history
