"""The reward model's loss: score the chosen answer above the rejected one."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_reward_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss of a reward model (Ouyang et al. 2022, arXiv:2203.02155, eq. 1):

        loss = mean(-log sigmoid(r_chosen - r_rejected))

    the negative log-likelihood that the chosen answer is preferred, with P = sigmoid of the
    reward difference.
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs whose chosen reward is strictly higher. A tie counts as wrong: a reward
    model that scores everything the same has learned nothing and should report 0, not 1."""
    return (chosen_rewards > rejected_rewards).float().mean()

