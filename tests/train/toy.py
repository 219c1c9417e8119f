"""A tiny model and dataset for trainer tests (imported by the tests and by the DDP worker script)."""

import torch
from torch import nn
from torch.nn import functional as F


class ToyData(torch.utils.data.Dataset):
    """Pairs (x, y = A x) with a fixed A: a regression the toy model can fit."""

    def __init__(self, n: int = 48, dim: int = 6, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.a = torch.randn(dim, dim, generator=g)
        self.y = self.x @ self.a.T

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "path": f"toy/{i}"}


class ToyModel(nn.Module):
    """MLP with dropout (draws from the global RNG) and a noise draw from the step generator (input jitter)."""

    def __init__(self, dim: int = 6, dropout: float = 0.1, jitter: float = 0.01):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 32), nn.SiLU(), nn.Dropout(dropout), nn.Linear(32, dim))
        self.jitter = jitter

    def training_loss(self, batch, generator):
        x = batch["x"]
        if self.jitter:
            x = x + self.jitter * torch.randn(x.shape, generator=generator).to(x.device)
        return F.mse_loss(self.net(x), batch["y"])
