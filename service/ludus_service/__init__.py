"""Ludus trainer service: ML-Agents' TorchOptimizer API (PPO) behind gRPC."""
__version__ = "0.1.0"
