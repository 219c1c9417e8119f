"""GradientProjector under DistributedDataParallel (2 CPU ranks, gloo): the step pre-hook projects the averaged
gradient, so the ranks stay identical and match a single process trained on both ranks' data."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from oneformore.continual import GradientProjector


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 2))


def bases() -> dict:
    gen = torch.Generator().manual_seed(1)
    return {"0": torch.linalg.qr(torch.randn(27, 10, generator=gen))[0],
            "3": torch.linalg.qr(torch.randn(96, 40, generator=gen))[0]}


def data(rank: int):
    gen = torch.Generator().manual_seed(10 + rank)
    return torch.randn(8, 3, 4, 4, generator=gen), torch.randint(0, 2, (8,), generator=gen)


def train(model, batches, projector, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    projector.register_optimizer_hook(opt)
    for _ in range(steps):
        opt.zero_grad()
        for x, y in batches:
            nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _worker(rank: int, world: int, init_file: str, out_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = net()
    ddp = nn.parallel.DistributedDataParallel(model)
    projector = GradientProjector(model)
    projector.set_bases(bases())
    train(ddp, [data(rank)], projector)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_agree_with_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # single process: the mean of the two ranks' losses has the DDP-averaged gradient
    model = net()
    projector = GradientProjector(model)
    projector.set_bases(bases())
    (x0, y0), (x1, y1) = data(0), data(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    projector.register_optimizer_hook(opt)
    for _ in range(3):
        opt.zero_grad()
        loss = 0.5 * (nn.functional.cross_entropy(model(x0), y0) + nn.functional.cross_entropy(model(x1), y1))
        loss.backward()
        opt.step()
    start = net().state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0)
        torch.testing.assert_close(r0[k], v, rtol=1e-5, atol=1e-6)
    assert torch.equal(r0["0.bias"], start["0.bias"])  # frozen biases did not move on either rank
    assert not torch.equal(r0["0.weight"], start["0.weight"])
