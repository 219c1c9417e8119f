import pytest
import torch
from torch import nn

from oneformore.continual.layers import input_dim, input_rows, select_layers, weight_matrix


@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, 0), (3, 1, 1), (3, 2, 1)])
def test_conv_input_rows_reproduce_the_convolution(kernel, stride, padding):
    conv = nn.Conv2d(5, 7, kernel, stride=stride, padding=padding, bias=False).double()
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
    rows = input_rows(conv, x)
    assert rows.shape[1] == input_dim(conv) == 5 * kernel * kernel
    y = conv(x)
    ref = y.permute(0, 2, 3, 1).reshape(-1, 7)
    torch.testing.assert_close(rows @ weight_matrix(conv.weight).T, ref)


def test_linear_rows_and_selection():
    model = nn.Sequential(nn.Linear(4, 3), nn.Conv2d(3, 6, 3, groups=3), nn.Conv2d(3, 3, 1))
    chosen = select_layers(model)
    assert list(chosen) == ["0", "2"]  # the grouped conv is skipped
    assert list(select_layers(model, exclude=["0"])) == ["2"]
    assert list(select_layers(model, include=["2"])) == ["2"]
    x = torch.randn(2, 5, 4)
    assert input_rows(model[0], x).shape == (10, 4)
