"""The ranking losses of `adapters.losses` (hand-computed values and gradient directions)."""

from __future__ import annotations

import pytest
import torch

from adapters.losses import get_loss, listwise_loss, pairwise_loss, pointwise_loss


def test_listwise_hand_computed() -> None:
    scores = torch.tensor([1.0, 0.0, -1.0])
    labels = torch.tensor([2, 1, 0])
    target = torch.tensor([3.0, 1.0, 0.0]) / 4.0
    expected = -(target * torch.log_softmax(scores, 0)).sum()
    assert listwise_loss(scores, labels).item() == pytest.approx(expected.item())


def test_pairwise_hand_computed() -> None:
    scores = torch.tensor([0.5, 1.0, 0.0])
    labels = torch.tensor([2, 1, 1])
    # pairs (0>1): s0-s1=-0.5, (0>2): 0.5 ; items 1 and 2 tie in label: no pair
    expected = (torch.nn.functional.softplus(torch.tensor(0.5)) + torch.nn.functional.softplus(torch.tensor(-0.5))) / 2
    assert pairwise_loss(scores, labels).item() == pytest.approx(expected.item())


def test_pointwise_is_bce_on_positive() -> None:
    scores = torch.tensor([2.0, -1.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(scores, torch.tensor([1.0, 0.0]))
    assert pointwise_loss(scores, torch.tensor([3, 0])).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("name", ["listwise", "pairwise", "pointwise"])
def test_losses_push_the_positive_up(name: str) -> None:
    scores = torch.zeros(4, requires_grad=True)
    get_loss(name)(scores, torch.tensor([0, 3, 0, 1])).backward()
    assert scores.grad is not None
    assert scores.grad[1] < 0 < scores.grad[0]  # gradient descent raises item 1, lowers item 0


@pytest.mark.parametrize("name", ["listwise", "pairwise"])
def test_losses_without_signal_are_zero_and_connected(name: str) -> None:
    scores = torch.randn(3, requires_grad=True)
    loss = get_loss(name)(scores, torch.tensor([0, 0, 0]))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError):
        get_loss("nope")
