"""IterativeSVD: streaming bases vs full SVDs (GPM's rule, first task and residual update), the 20000×2304
stream, distributed equality on 2 gloo processes, bad input; ActivationCollector."""

import os
import socket
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from oneformore.continual import ActivationCollector, IterativeSVD
from oneformore.continual.layers import input_rows
from oneformore.continual.synthetic import SpectralMatrix, decaying_spectrum


def activations(n, d, rank, seed, noise=0.02):
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 / (1.0 + torch.arange(rank, dtype=torch.float64))
    a = (torch.randn(n, rank, generator=g, dtype=torch.float64) * scale) @ torch.randn(rank, d, generator=g,
                                                                                          dtype=torch.float64)
    return (a + noise * torch.randn(n, d, generator=g, dtype=torch.float64)).float()


# ---- GPM's update_GPM (official code), with full SVDs, on activation matrices [d, n] -------------------------
def gpm_first_task(activation: np.ndarray, threshold: float) -> np.ndarray:
    U, S, _ = np.linalg.svd(activation, full_matrices=False)
    ratio = np.cumsum(S**2) / (S**2).sum()
    r = int(np.searchsorted(ratio, threshold) + 1)  # smallest r reaching the threshold (see IterativeSVD docs)
    return U[:, :r]


def gpm_update(activation: np.ndarray, threshold: float, feature: np.ndarray) -> np.ndarray:
    U1, S1, _ = np.linalg.svd(activation, full_matrices=False)
    sval_total = (S1**2).sum()
    act_hat = activation - feature @ (feature.T @ activation)
    U, S, _ = np.linalg.svd(act_hat, full_matrices=False)
    sval_hat = (S**2).sum()
    sval_ratio = (S**2) / sval_total
    accumulated_sval = (sval_total - sval_hat) / sval_total
    r = 0
    for ii in range(sval_ratio.shape[0]):
        if accumulated_sval < threshold:
            accumulated_sval += sval_ratio[ii]
            r += 1
        else:
            break
    if r == 0:
        return feature
    Ui = np.hstack((feature, U[:, 0:r]))
    return Ui[:, 0 : Ui.shape[0]] if Ui.shape[1] > Ui.shape[0] else Ui


def projector(U):
    U = torch.as_tensor(U, dtype=torch.float64)
    return U @ U.T


def stream(builder, layers: dict, block=256):
    n = next(iter(layers.values())).shape[0]
    for start in range(0, n, block):
        builder.update({name: a[start : start + block] for name, a in layers.items()})


@pytest.mark.parametrize("mode", ["gram", "isvd"])
def test_first_task_and_residual_update_reproduce_gpm(mode):
    task0 = {"conv": activations(3000, 72, 30, 1), "fc": activations(2000 + 1000, 40, 25, 2)}
    task1 = {"conv": activations(3000, 72, 30, 3), "fc": activations(3000, 40, 25, 4)}
    first = IterativeSVD(0.97, mode=mode, max_rank=72, chunk_rows=128)
    stream(first, task0)
    spectra = first.spectra()
    old = {}
    for name, a in task0.items():
        expected = gpm_first_task(a.double().numpy().T, 0.97)
        got = spectra[name].basis
        assert got.shape[1] == expected.shape[1], name
        assert float((projector(got) - projector(expected)).norm()) < 1e-3
        old[name] = got
    second = IterativeSVD(0.97, threshold_step=0.003, task=1, old_bases=old, mode=mode, max_rank=72, chunk_rows=128)
    assert second.threshold == pytest.approx(0.973)
    stream(second, task1)
    bases = second.bases()
    for name, a in task1.items():
        expected = gpm_update(a.double().numpy().T, 0.973, old[name].double().numpy())
        got = bases[name]
        assert got.shape == expected.shape, name
        torch.testing.assert_close(got[:, : old[name].shape[1]], old[name], atol=1e-5, rtol=0)  # old basis kept
        assert float((projector(got) - projector(expected)).norm()) < 1e-3
        assert float((got.T @ got - torch.eye(got.shape[1])).abs().max()) < 1e-5


def test_layers_choose_their_mode_by_memory():
    builder = IterativeSVD(max_rank=64, chunk_rows=64)
    builder.update({"small": torch.randn(10, 128), "large": torch.randn(10, 129)})
    assert builder.layers["small"]["mode"] == "gram" and builder.layers["large"]["mode"] == "isvd"


@pytest.mark.slow
def test_streaming_20000x2304_captures_the_energy_of_the_exact_svd():
    matrix = SpectralMatrix(20000, decaying_spectrum(2304), seed=0)
    builder = IterativeSVD(0.97, max_rank=256, chunk_rows=128)
    for block in matrix.blocks(512):
        builder.update({"layer": block})
    spectrum = builder.spectra()["layer"]
    rank = spectrum.basis.shape[1]
    assert 100 < rank < 256  # the threshold rank of this spectrum (164 exactly) is found under the cap
    captured = matrix.captured_energy(spectrum.basis)
    assert captured >= 0.995 * matrix.best_energy(rank)
    assert spectrum.total_energy == pytest.approx(matrix.total_energy(), rel=1e-4)
    assert builder.memory_bytes() <= 2304 * 256 * 4 + 256 * 4  # O(d·max_rank), whatever the number of rows


def test_truncation_is_tracked_and_warned():
    builder = IterativeSVD(0.99, max_rank=4, chunk_rows=64, mode="isvd")
    builder.update({"x": torch.randn(500, 50)})
    assert builder.truncated_energy()["x"] > 0.5
    with pytest.warns(UserWarning, match="raise max_rank"):
        assert builder.bases()["x"].shape[1] == 4


def test_bad_input_raises_clear_errors():
    builder = IterativeSVD()
    builder.update({"x": torch.randn(20, 16)})
    with pytest.raises(ValueError, match=r"blocks\['x'\]: expected d=16 columns .* got 17"):
        builder.update({"x": torch.randn(20, 17)})
    bad = torch.randn(20, 16)
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"blocks\['x'\]: expected finite values"):
        builder.update({"x": bad})
    with pytest.raises(ValueError, match=r"blocks\['y'\]: expected a floating 2-D"):
        builder.update({"y": torch.randn(3, 4, 5)})
    with pytest.raises(TypeError, match=r"blocks: expected a dict"):
        builder.update([torch.randn(3, 4)])
    with pytest.raises(ValueError, match=r"blocks\['z'\]: expected d=8 columns \(the old basis"):
        IterativeSVD(old_bases={"z": torch.eye(8)[:, :2]}).update({"z": torch.randn(4, 9)})
    with pytest.raises(ValueError, match=r"threshold: expected a fraction"):
        IterativeSVD(1.5)


# ---- distributed --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=__import__("datetime").timedelta(seconds=60))
    try:
        builder = IterativeSVD(0.97, max_rank=96, chunk_rows=64)
        shard = {name: a[rank::world] for name, a in data.items()}  # each rank its own rows
        stream(builder, shard, block=100)
        torch.save(builder.bases(), os.path.join(out_dir, f"bases{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_build_the_single_process_bases(tmp_path):
    import torch.multiprocessing as mp

    data = {"gram": activations(1200, 48, 20, 5), "isvd": activations(1200, 300, 40, 6)}
    single = IterativeSVD(0.97, max_rank=96, chunk_rows=64)
    stream(single, data, block=100)
    assert single.layers["gram"]["mode"] == "gram" and single.layers["isvd"]["mode"] == "isvd"
    expected = single.bases()
    context = mp.start_processes(_worker, args=(2, _free_port(), data, str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 120  # join() returns False while some process is still running
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process gloo run did not finish in 120 s")
    for rank in range(2):
        got = torch.load(tmp_path / f"bases{rank}.pt")
        for name, basis in expected.items():
            assert got[name].shape == basis.shape, name
            assert float((projector(got[name]) - projector(basis)).norm()) < 1e-3, name


# ---- collector ----------------------------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_collector_feeds_the_same_rows_as_input_rows():
    model = Tiny()
    xs = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    collector = ActivationCollector({"conv": model.conv, "fc": model.fc}, IterativeSVD(mode="gram"), block_rows=50,
                                    max_rows_per_call=None)
    with collector:
        for x in xs:
            model(x)
    assert not model.conv._forward_hooks and not model.fc._forward_hooks  # hooks removed on exit
    direct = IterativeSVD(mode="gram")
    rows = torch.cat([input_rows(model.conv, x) for x in xs])
    feats = torch.cat([model.conv(x).mean((2, 3)) for x in xs]).detach()
    direct.update({"conv": rows, "fc": feats})
    assert collector.rows_seen == {"conv": 3 * 128, "fc": 6}
    torch.testing.assert_close(collector.builder._layers["conv"].gram, direct._layers["conv"].gram, rtol=1e-5,
                               atol=1e-4)
    torch.testing.assert_close(collector.builder._layers["fc"].gram, direct._layers["fc"].gram, rtol=1e-5, atol=1e-5)


def test_collector_budgets():
    model = Tiny()
    collector = ActivationCollector({"conv": model.conv}, IterativeSVD(), block_rows=32, max_rows_per_call=40,
                                    max_rows_per_layer=100, sample_fraction=0.5, generator=torch.Generator().manual_seed(0))
    with collector:
        for _ in range(5):
            model(torch.randn(1, 3, 8, 8))  # 64 rows a call -> 32 sampled (fraction) -> <= 40 (per call)
    assert collector.rows_seen["conv"] == 100
    assert collector.builder.layers["conv"]["rows"] == 100
    with pytest.raises(ValueError, match="sample_fraction"):
        ActivationCollector({"conv": model.conv}, sample_fraction=0.0)
    with pytest.raises(TypeError, match="expected nn.Linear or nn.Conv2d"):
        ActivationCollector({"bn": nn.BatchNorm2d(3)})
