"""Ludus Python client SDK (torch-free).

Connect to a Ludus trainer service, register behaviours, stream trajectories, and act locally with
the policy weights the service publishes.
"""
from ludus_client.client import LudusClient, LudusError
from ludus_client.policy import LocalPolicy, PolicyOutput
from ludus_client.spec import ActionSpec, BehaviorSpec, ObservationSpec
from ludus_client.trajectory import TrajectoryBuilder

__all__ = [
    "ActionSpec",
    "BehaviorSpec",
    "LocalPolicy",
    "LudusClient",
    "LudusError",
    "ObservationSpec",
    "PolicyOutput",
    "TrajectoryBuilder",
]
