"""Versioned, immutable policy snapshots and the watchers waiting for new ones.

A snapshot is taken (CPU numpy copies of the actor) each time the version changes, so the bytes of
a version never change afterwards. Serialisation to safetensors happens once per version, on first
request, and is cached. A bounded number of recent versions is kept.

ONNX (ludus_service.onnx_export) is also produced once per version, on first request, by the
requesting RPC thread: the snapshot rebuilds an actor from its numpy copies (so the learner thread
never waits for an export, and the module it keeps training is never traced). Its own lock: a
safetensors request never queues behind an ONNX export.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterator, Optional, Tuple

import numpy as np
from safetensors.numpy import save as safetensors_save

from ludus_service.errors import NotFound, Unimplemented

if TYPE_CHECKING:
    from ludus_service.settings import NetworkSettings
    from ludus_service.spec import BehaviorSpec

CHUNK_SIZE = 1 << 20  # 1 MiB: well under gRPC's 4 MiB default message limit
#: Serialisations a snapshot offers (PolicySnapshot.serialized's `fmt`).
SAFETENSORS = "safetensors"
ONNX = "onnx"


@dataclass
class PolicySnapshot:
    behavior_name: str
    version: int
    trained_steps: int
    tensors: Dict[str, np.ndarray]
    architecture: dict
    #: What an ONNX export needs to rebuild the actor (None: this store cannot export ONNX).
    spec: Optional["BehaviorSpec"] = field(default=None, repr=False)
    network: Optional["NetworkSettings"] = field(default=None, repr=False)
    _payload: Optional[Tuple[bytes, str]] = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _onnx_payload: Optional[Tuple[bytes, str]] = field(default=None, repr=False)
    _onnx_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def serialized(self, fmt: str = SAFETENSORS) -> Tuple[bytes, str]:
        """(bytes, sha256 hex) in `fmt` (SAFETENSORS or ONNX), computed once per format."""
        if fmt == ONNX:
            return self.onnx()
        if fmt != SAFETENSORS:
            raise ValueError(f"unknown policy format {fmt!r}")
        with self._lock:
            if self._payload is None:
                metadata = {
                    "ludus.architecture": json.dumps(self.architecture, sort_keys=True),
                    "ludus.version": str(self.version),
                    "ludus.behavior": self.behavior_name,
                    "ludus.trained_steps": str(self.trained_steps),
                }
                data = safetensors_save(dict(sorted(self.tensors.items())), metadata=metadata)
                self._payload = (data, hashlib.sha256(data).hexdigest())
            return self._payload

    def onnx(self) -> Tuple[bytes, str]:
        """(ONNX model bytes, sha256 hex) with ML-Agents' model contract, exported once.

        Unimplemented when this snapshot cannot be exported (no spec/network settings were given to
        the store, or the onnx package is missing)."""
        with self._onnx_lock:
            if self._onnx_payload is None:
                if self.spec is None or self.network is None:
                    raise Unimplemented("format", f"ONNX export is not available for behaviour {self.behavior_name!r}")
                try:
                    from ludus_service.onnx_export import export_snapshot
                    data = export_snapshot(self.spec, self.network, self.tensors, self.version, self.behavior_name,
                                           self.architecture)
                except ImportError as err:
                    raise Unimplemented("format", f"ONNX export needs the onnx package on the server "
                                                  f"(pip install 'ludus[server]'): {err}") from None
                self._onnx_payload = (data, hashlib.sha256(data).hexdigest())
            return self._onnx_payload

    def chunks(self, chunk_size: int = CHUNK_SIZE, fmt: str = SAFETENSORS) -> Iterator[Tuple[int, bytes, bool]]:
        data, _ = self.serialized(fmt)
        for offset in range(0, max(len(data), 1), chunk_size):
            piece = data[offset:offset + chunk_size]
            yield offset, piece, offset + chunk_size >= len(data)


class PolicyStore:
    def __init__(self, behavior_name: str, keep_versions: int = 16, spec: Optional["BehaviorSpec"] = None,
                 network: Optional["NetworkSettings"] = None) -> None:
        """`spec` and `network` (the behaviour's network settings) let snapshots export ONNX."""
        self.behavior_name = behavior_name
        self.keep_versions = keep_versions
        self.spec = spec
        self.network = network
        self._snapshots: "OrderedDict[int, PolicySnapshot]" = OrderedDict()
        self._changed = threading.Condition()
        self._closed = False

    @property
    def latest_version(self) -> int:
        with self._changed:
            return next(reversed(self._snapshots)) if self._snapshots else 0

    def publish(self, version: int, trained_steps: int, tensors: Dict[str, np.ndarray], architecture: dict) -> None:
        snapshot = PolicySnapshot(self.behavior_name, version, trained_steps, tensors, architecture,
                                  spec=self.spec, network=self.network)
        with self._changed:
            self._snapshots[version] = snapshot
            while len(self._snapshots) > self.keep_versions:
                self._snapshots.popitem(last=False)
            self._changed.notify_all()

    def get(self, version: int = 0) -> PolicySnapshot:
        with self._changed:
            if version == 0:
                return self._snapshots[next(reversed(self._snapshots))]
            snapshot = self._snapshots.get(version)
            if snapshot is None:
                kept = list(self._snapshots)
                raise NotFound("version", f"policy version {version} of {self.behavior_name!r} is not available (kept: {kept[0]}..{kept[-1]})")
            return snapshot

    def wait_newer(self, after_version: int, timeout: float) -> Optional[PolicySnapshot]:
        """The oldest kept snapshot newer than `after_version`, waiting up to `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or (self._snapshots and next(reversed(self._snapshots)) > after_version), timeout)
            for version, snapshot in self._snapshots.items():
                if version > after_version:
                    return snapshot
            return None

    def close(self) -> None:
        """Wake every watcher so streams end promptly at shutdown."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
