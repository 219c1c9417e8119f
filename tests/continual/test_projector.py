"""GradientProjector: a two-task experiment (task-1 outputs kept), the optimizer hook, bias freezing, TRGP
scales, layer selection errors and the checkpoint round trip."""

import copy

import pytest
import torch
from torch import nn

from oneformore.continual import GradientProjector
from oneformore.continual.layers import input_rows, weight_matrix
from oneformore.ops.reference import projection as reference


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 2),
    )


def task_data(task: int, n: int = 64, seed: int = 0):
    """Task 1: grey images (the three channels equal), so conv patches fill only 9 of 27 dimensions;
    task 2: colour images. Labels: which half of the image is brighter (task 1) / redder (task 2)."""
    gen = torch.Generator().manual_seed(seed + 100 * task)
    if task == 1:
        x = torch.randn(n, 1, 8, 8, generator=gen).expand(n, 3, 8, 8).contiguous()
        y = (x[:, 0, :, :4].mean((1, 2)) > x[:, 0, :, 4:].mean((1, 2))).long()
    else:
        x = torch.randn(n, 3, 8, 8, generator=gen)
        y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long()
    return x, y


def train(model, x, y, steps, projector=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    handle = projector.register_optimizer_hook(opt) if projector is not None else None
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if handle is not None:
        handle.remove()


def layer_inputs(model, layers, x) -> dict:
    """Each layer's input rows (im2col for convs) when the model sees x."""
    rows, hooks = {}, []
    for name, m in layers.items():
        hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: rows.__setitem__(name, input_rows(mod, inp[0].detach()))))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return rows


def bases_of(rows: dict, rel_tol: float = 1e-3) -> dict:
    """Orthonormal basis of each layer's input rows: right singular vectors above rel_tol * the largest."""
    out = {}
    for name, r in rows.items():
        _, s, vh = torch.linalg.svd(r.double(), full_matrices=False)
        k = int((s > rel_tol * s[0]).sum())
        out[name] = vh[:k].T.float().contiguous()
    return out


def layer_output_change(before: nn.Module, after: nn.Module, rows: dict, layers_before, layers_after) -> dict:
    """|W' x + b' - (W x + b)| over each layer's task-1 input rows x."""
    change = {}
    for name in rows:
        a, b = layers_before[name], layers_after[name]
        out_a = rows[name] @ weight_matrix(a.weight.detach()).T + (a.bias.detach() if a.bias is not None else 0)
        out_b = rows[name] @ weight_matrix(b.weight.detach()).T + (b.bias.detach() if b.bias is not None else 0)
        change[name] = float((out_b - out_a).norm())
    return change


def test_two_tasks_projection_keeps_task1_outputs():
    torch.manual_seed(0)
    model = small_net()
    x1, y1 = task_data(1)
    train(model, x1, y1, steps=30)
    probe = GradientProjector(model)
    rows = layer_inputs(model, probe.layers, x1)
    bases = bases_of(rows)
    assert bases["0"].shape == (27, 9)  # grey images: patches live in 9 of 27 dimensions

    x2, y2 = task_data(2)
    free, kept = copy.deepcopy(model), copy.deepcopy(model)
    train(free, x2, y2, steps=30)
    projector = GradientProjector(kept)
    projector.set_bases(bases)
    train(kept, x2, y2, steps=30, projector=projector)

    layers0 = probe.layers
    moved_free = layer_output_change(model, free, rows, layers0, GradientProjector(free).layers)
    moved_kept = layer_output_change(model, kept, rows, layers0, projector.layers)
    for name in rows:
        assert moved_free[name] > 0
        assert moved_kept[name] < 0.01 * moved_free[name], (name, moved_kept[name], moved_free[name])
    # and the whole network's task-1 outputs with them
    with torch.no_grad():
        ref = model(x1)
        assert (kept(x1) - ref).norm() < 0.01 * (free(x1) - ref).norm()
    # while the projected model still learned task 2 (its first layer has 18 free dimensions)
    assert not torch.equal(kept[0].weight, model[0].weight)
    with torch.no_grad():
        loss2 = [float(nn.functional.cross_entropy(m(x2), y2)) for m in (model, kept)]
    assert loss2[1] < loss2[0]


def test_project_matches_reference_and_freezes_biases():
    model = small_net()
    projector = GradientProjector(model, include=["0", "6"])
    assert list(projector.layers) == ["0", "6"]
    gen = torch.Generator().manual_seed(1)
    u0 = torch.linalg.qr(torch.randn(27, 5, generator=gen))[0]
    projector.set_bases({"0": u0, "6": torch.zeros(8, 0)})
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    g0 = model[0].weight.grad.clone()
    g6 = model[6].weight.grad.clone()
    projector.project()
    want = [g0.double()]
    reference.project_gradients_(want, [u0.double()])
    torch.testing.assert_close(model[0].weight.grad, want[0].float(), rtol=1e-5, atol=1e-6)
    assert model[0].bias.grad is None  # frozen: the optimizer skips it
    assert torch.equal(model[6].weight.grad, g6) and model[6].bias.grad is not None  # k = 0: untouched
    assert projector.projected_layers() == ["0"]


def test_freeze_bias_off_and_trgp_scales():
    model = small_net()
    projector = GradientProjector(model, include=["0"], freeze_bias=False)
    gen = torch.Generator().manual_seed(2)
    u = torch.linalg.qr(torch.randn(27, 6, generator=gen))[0]
    q = torch.rand(6, 6, generator=gen)
    projector.set_bases({"0": u}, scales={"0": q})
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    g = model[0].weight.grad.clone()
    projector.project()
    want = [g.double()]
    reference.project_gradients_(want, [u.double()], [q.double()])
    torch.testing.assert_close(model[0].weight.grad, want[0].float(), rtol=1e-5, atol=1e-6)
    assert model[0].bias.grad is not None


def test_state_dict_round_trip_through_weights_only_checkpoint(tmp_path):
    model = small_net()
    projector = GradientProjector(model)
    gen = torch.Generator().manual_seed(3)
    projector.set_bases(
        {"0": torch.linalg.qr(torch.randn(27, 4, generator=gen))[0], "2": torch.linalg.qr(torch.randn(8, 3, generator=gen))[0]},
        scales={"2": torch.rand(3, 3, generator=gen)},
    )
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "projector": projector.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    model2 = small_net()
    model2.load_state_dict(ckpt["model"])
    restored = GradientProjector(model2)
    restored.load_state_dict(ckpt["projector"])
    assert set(restored.bases) == {"0", "2"} and set(restored.scales) == {"2"}
    for name in projector.bases:
        assert torch.equal(restored.bases[name], projector.bases[name])
    assert torch.equal(restored.scales["2"], projector.scales["2"])
    x = torch.randn(2, 3, 8, 8)
    for m, p in ((model, projector), (model2, restored)):
        m(x).sum().backward()
        p.project()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)
    with pytest.raises(ValueError, match=r"bases\['0'\]: expected a \[d, k\] tensor"):
        restored.load_state_dict({"bases": {"0": torch.zeros(5, 1)}})
    assert set(restored.bases) == {"0", "2"}  # unchanged after the failed load


def test_grouped_convs_rejected_or_skipped():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 6, 1), nn.Flatten(), nn.Linear(6, 2))
    with pytest.raises(ValueError, match=r"layer '0': grouped/depthwise convolutions \(groups=4\) are not supported"):
        GradientProjector(model, include=["0", "1"])
    projector = GradientProjector(model)  # all layers: the depthwise conv is left out and said so
    assert list(projector.layers) == ["1", "3"] and projector.skipped == ["0"]
    with pytest.raises(KeyError, match=r"'0' is not one of the projector's layers"):
        projector.set_bases({"0": torch.zeros(9, 1)})


def test_set_bases_errors():
    projector = GradientProjector(small_net())
    with pytest.raises(ValueError, match=r"bases\['0'\]: expected a \[d, k\] tensor with d = 27 and k <= d, got \(26, 3\)"):
        projector.set_bases({"0": torch.zeros(26, 3)})
    with pytest.raises(ValueError, match=r"bases\['0'\]: expected a \[d, k\] tensor with d = 27 and k <= d, got \(27, 28\)"):
        projector.set_bases({"0": torch.zeros(27, 28)})
    with pytest.raises(ValueError, match=r"bases\['2'\]: expected finite"):
        projector.set_bases({"2": torch.full((8, 2), float("nan"))})
    with pytest.raises(ValueError, match=r"scales\['2'\]: expected shape \(2, 2\)"):
        projector.set_bases({"2": torch.eye(8)[:, :2]}, scales={"2": torch.eye(3)})
    with pytest.raises(ValueError, match=r"no layer of types"):
        GradientProjector(small_net(), include=["nothing*"])
