"""Checkpoint files: one safetensors file per checkpoint, written atomically, never pickled.

Layout: <checkpoint_dir>/<behavior>/checkpoint-<step>.safetensors. A file holds named tensors
(networks, Adam moments, the running normaliser, the unfinished update buffer) and a JSON document
in the safetensors metadata (spec, settings, step count, policy version, counters, RNG state).
Writing goes to a temporary file in the same directory, is fsynced, then renamed over the final
name (and the directory fsynced), so a crash can leave a stray `*.tmp` but never a partial
checkpoint under a final name. Loading uses safetensors only: a malicious file cannot run code.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from ludus_client.policy import read_safetensors_metadata  # one safetensors header parser for both sides

log = logging.getLogger(__name__)
FORMAT = "ludus.checkpoint.v1"
_NAME = re.compile(r"^checkpoint-(\d+)\.safetensors$")


def checkpoint_files(directory: Path) -> List[Tuple[int, Path]]:
    """(step, path) of the checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, step: int, tensors: Dict[str, torch.Tensor], metadata: dict, keep: int) -> Path:
    """Atomically write checkpoint-<step>.safetensors and prune to the `keep` newest (keep >= 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = safetensors_save(
        {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
        metadata={"format": FORMAT, "ludus.checkpoint": json.dumps(metadata)},
    )
    final = directory / f"checkpoint-{step:012d}.safetensors"
    fd, tmp_name = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, final)
        _fsync_dir(directory)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    for _, old in checkpoint_files(directory)[:-max(keep, 1)]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Tensors and metadata of one checkpoint; ValueError if the file is not a valid checkpoint."""
    data = path.read_bytes()
    try:
        tensors = safetensors_load(data)
        meta = read_safetensors_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    return tensors, json.loads(meta["ludus.checkpoint"])


def latest_checkpoint(directory: Path) -> Optional[Tuple[Path, Dict[str, torch.Tensor], dict]]:
    """The newest checkpoint in `directory` that loads; unreadable ones are skipped with a warning."""
    for _, path in reversed(checkpoint_files(directory)):
        try:
            tensors, meta = load_checkpoint(path)
            return path, tensors, meta
        except ValueError as err:
            log.warning("skipping %s", err)
    return None


def remove_stale_temp_files(directory: Path) -> None:
    """Temporary files left by a crash mid-write are never valid checkpoints."""
    if directory.is_dir():
        for path in directory.glob(".checkpoint-*.tmp"):
            path.unlink(missing_ok=True)


# -- pieces every trainer's checkpoint holds ---------------------------------------------------------

def module_tensors(modules: Mapping[str, torch.nn.Module]) -> Dict[str, torch.Tensor]:
    """`<prefix>.<state-dict key>` for each named module (networks, learned reward signals)."""
    return {f"{prefix}.{key}": value for prefix, module in modules.items() for key, value in module.state_dict().items()}


def module_state(tensors: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The state dict of the module saved under `prefix` (empty if none was)."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def adam_tensors(adam: torch.optim.Optimizer, prefix: str = "adam") -> Dict[str, torch.Tensor]:
    """Adam's moments and step counts as `<prefix>.<param index>.<name>` tensors (param_groups,
    plain numbers, go into the metadata)."""
    return {f"{prefix}.{index}.{key}": value if torch.is_tensor(value) else torch.tensor(value)
            for index, state in adam.state_dict()["state"].items() for key, value in state.items()}


def restore_adam(adam: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], param_groups: list,
                 prefix: str = "adam") -> None:
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    adam.load_state_dict({"state": state, "param_groups": param_groups})


def auxiliary_adam_tensors(adams: Mapping[str, torch.optim.Optimizer]) -> Tuple[Dict[str, torch.Tensor], Dict[str, list]]:
    """The Adams of learned reward signals and behavioural cloning, by checkpoint prefix: their
    tensors and (for the metadata) their param_groups."""
    tensors: Dict[str, torch.Tensor] = {}
    for prefix, adam in adams.items():
        tensors.update(adam_tensors(adam, prefix))
    return tensors, {prefix: adam.state_dict()["param_groups"] for prefix, adam in adams.items()}


def restore_auxiliary_adams(adams: Mapping[str, torch.optim.Optimizer], tensors: Mapping[str, torch.Tensor],
                            param_groups: Mapping[str, list]) -> None:
    """Restore what auxiliary_adam_tensors saved; an Adam the checkpoint lacks (written before these
    were saved, or a signal added since) starts afresh."""
    for prefix, adam in adams.items():
        if prefix in param_groups:
            restore_adam(adam, tensors, param_groups[prefix], prefix)
