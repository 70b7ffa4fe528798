"""The seed API: Optimizer.update, TorchOptimizer.create_reward_signals / get_trajectory_value_estimates, PPO."""
from ludus_service.optimizer.base import Optimizer
from ludus_service.optimizer.ppo import PPOOptimizer
from ludus_service.optimizer.torch_optimizer import TorchOptimizer

__all__ = ["Optimizer", "PPOOptimizer", "TorchOptimizer"]
