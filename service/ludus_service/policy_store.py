"""Versioned, immutable policy snapshots and the watchers waiting for new ones.

A snapshot is taken (CPU numpy copies of the actor) each time the version changes, so the bytes of
a version never change afterwards. Serialisation to safetensors happens once per version, on first
request, and is cached. A bounded number of recent versions is kept.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
from safetensors.numpy import save as safetensors_save

from ludus_service.errors import NotFound

CHUNK_SIZE = 1 << 20  # 1 MiB: well under gRPC's 4 MiB default message limit


@dataclass
class PolicySnapshot:
    behavior_name: str
    version: int
    trained_steps: int
    tensors: Dict[str, np.ndarray]
    architecture: dict
    _payload: Optional[Tuple[bytes, str]] = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def serialized(self) -> Tuple[bytes, str]:
        """(safetensors bytes, sha256 hex), computed once."""
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

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[Tuple[int, bytes, bool]]:
        data, _ = self.serialized()
        for offset in range(0, max(len(data), 1), chunk_size):
            piece = data[offset:offset + chunk_size]
            yield offset, piece, offset + chunk_size >= len(data)


class PolicyStore:
    def __init__(self, behavior_name: str, keep_versions: int = 16) -> None:
        self.behavior_name = behavior_name
        self.keep_versions = keep_versions
        self._snapshots: "OrderedDict[int, PolicySnapshot]" = OrderedDict()
        self._changed = threading.Condition()
        self._closed = False

    @property
    def latest_version(self) -> int:
        with self._changed:
            return next(reversed(self._snapshots)) if self._snapshots else 0

    def publish(self, version: int, trained_steps: int, tensors: Dict[str, np.ndarray], architecture: dict) -> None:
        snapshot = PolicySnapshot(self.behavior_name, version, trained_steps, tensors, architecture)
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
