"""ML-Agents' abstract Optimizer: the one method every trainer's optimizer implements."""
from __future__ import annotations

import abc
from typing import Dict

from ludus_service.buffer import AgentBuffer


class Optimizer(abc.ABC):
    """Creates the losses and auxiliary networks (critics) needed for training and updates the policy."""

    @abc.abstractmethod
    def update(self, batch: AgentBuffer, num_sequences: int) -> Dict[str, float]:
        """Update the policy on one minibatch; `num_sequences` recurrent sequences make up the batch.

        Returns statistics by ML-Agents name (e.g. "Losses/Policy Loss").
        """
