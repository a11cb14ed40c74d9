"""row_argmin is torch.argmin over the last axis: the same indices for every row, with ties (the
first index), NaN, infinities, odd lengths and empty inputs."""

import pytest
import torch

from mvq.quantize.argmin import MIN_LENGTH, _groups, row_argmin


@pytest.mark.parametrize("k", [2, 16, 255, 256, 257, 384, 512, 1000, 1024, 4096, 7132])
def test_equals_torch_argmin_on_random_rows(k):
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(37, k, generator=gen)
    assert torch.equal(row_argmin(x), x.argmin(-1))
    assert torch.equal(row_argmin(x.double()), x.double().argmin(-1))
    three = x.view(1, 37, k).expand(2, 37, k)  # leading axes kept, non-contiguous input
    assert torch.equal(row_argmin(three), three.argmin(-1))


@pytest.mark.parametrize("k", [256, 512, 4096])
def test_ties_give_the_first_index_as_torch(k):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (200, k), generator=gen).float()  # many equal minima per row
    assert torch.equal(row_argmin(x), x.argmin(-1))
    same = torch.zeros(3, k)  # every value the minimum: index 0
    assert row_argmin(same).tolist() == [0, 0, 0]
    late = torch.ones(2, k)
    late[:, -1] = 0.0  # the minimum in the last group's last place
    late[1, k // 2] = 0.0  # and once also in a middle group: the first wins
    assert row_argmin(late).tolist() == [k - 1, k // 2]


def test_nan_and_infinities_as_torch():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(50, 512, generator=gen)
    x[3, 100] = float("nan")
    x[4, [7, 400]] = float("nan")
    x[5, 9] = float("-inf")
    x[6] = float("inf")
    x[7, 200] = float("-inf")
    x[7, 300] = float("nan")
    assert torch.equal(row_argmin(x), x.argmin(-1))


def test_groups_and_the_cases_left_to_torch():
    assert _groups(512) == 16 and _groups(256) == 8 and _groups(7132) == 4
    assert _groups(4099) == 1  # a prime: no split
    assert MIN_LENGTH == 256
    empty = torch.zeros(0, 1024)
    assert row_argmin(empty).shape == (0,)
    short = torch.randn(5, 64)
    assert torch.equal(row_argmin(short), short.argmin(-1))
