"""Checkpoints of a whole model: dense parameters, dense optimizer, every embedding table, step.

Layout under ``model_dir``::

    checkpoint               JSON index: {"latest": "ckpt-200", "all": ["ckpt-100", "ckpt-200"]}
    ckpt-200/dense.pt        torch.save of dense params, optimizer state, global step, RNG states
    ckpt-200/tables/NAME.npz one file per table (EmbeddingHashTable.save format)
    ckpt-200/manifest.json   what the checkpoint holds, written last inside the directory

A checkpoint is assembled in a temporary directory and renamed into place, then the index is
replaced atomically; a crash at any point leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np
import torch

from monolith.atomic import atomic_write

INDEX_FILE = "checkpoint"
_PREFIX = "ckpt-"


class CheckpointManager:
    """Writes, lists, prunes and reads checkpoints in ``model_dir``.

    Args:
        model_dir: where checkpoints live.
        keep_checkpoint_max: how many of the newest checkpoints to keep (older ones are deleted).
    """

    def __init__(self, model_dir: str | os.PathLike, keep_checkpoint_max: int = 5) -> None:
        if keep_checkpoint_max < 1:
            raise ValueError(f"keep_checkpoint_max must be >= 1, got {keep_checkpoint_max}")
        self.model_dir = os.fspath(model_dir)
        self.keep_checkpoint_max = keep_checkpoint_max

    # ------------------------------------------------------------------ index
    def _read_index(self) -> dict[str, Any]:
        path = os.path.join(self.model_dir, INDEX_FILE)
        if not os.path.exists(path):
            return {"latest": None, "all": []}
        try:
            with open(path) as f:
                index = json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: unreadable checkpoint index ({error})") from error
        if not isinstance(index, dict) or "all" not in index:
            raise ValueError(f"{path}: not a checkpoint index (expected keys 'latest' and 'all')")
        return index

    def checkpoints(self) -> list[str]:
        """Paths of the kept checkpoints, oldest first."""
        return [os.path.join(self.model_dir, name) for name in self._read_index()["all"]]

    def latest(self) -> str | None:
        """Path of the newest checkpoint, or None."""
        latest = self._read_index()["latest"]
        return os.path.join(self.model_dir, latest) if latest else None

    # ------------------------------------------------------------------ writing
    def save(self, global_step: int, dense_state: dict[str, Any], table_states: dict[str, dict[str, np.ndarray]],
             extra: dict[str, Any] | None = None) -> str:
        """Writes checkpoint ``ckpt-{global_step}`` and makes it the latest; returns its path."""
        os.makedirs(self.model_dir, exist_ok=True)
        name = f"{_PREFIX}{global_step}"
        final = os.path.join(self.model_dir, name)
        staging = tempfile.mkdtemp(prefix=f".{name}.", dir=self.model_dir)
        try:
            torch.save(dense_state, os.path.join(staging, "dense.pt"))
            os.makedirs(os.path.join(staging, "tables"))
            for table_name, state in table_states.items():
                with open(os.path.join(staging, "tables", f"{_safe(table_name)}.npz"), "wb") as f:
                    np.savez(f, **state)
            manifest = {"global_step": global_step, "tables": sorted(table_states), **(extra or {})}
            with atomic_write(os.path.join(staging, "manifest.json"), "w") as f:
                json.dump(manifest, f)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        index = self._read_index()
        kept = [n for n in index["all"] if n != name] + [name]
        with atomic_write(os.path.join(self.model_dir, INDEX_FILE), "w") as f:
            json.dump({"latest": name, "all": kept[-self.keep_checkpoint_max:]}, f)
        for old in kept[: -self.keep_checkpoint_max]:
            shutil.rmtree(os.path.join(self.model_dir, old), ignore_errors=True)
        return final

    # ------------------------------------------------------------------ reading
    @staticmethod
    def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]], dict[str, Any]]:
        """``(dense_state, table_states, manifest)`` of the checkpoint at ``path``."""
        path = os.fspath(path)
        manifest_path = os.path.join(path, "manifest.json")
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: not a checkpoint (no manifest.json)") from None
        except ValueError as error:
            raise ValueError(f"{manifest_path}: unreadable manifest ({error})") from error
        try:
            dense = torch.load(os.path.join(path, "dense.pt"), weights_only=False)
        except Exception as error:  # torch raises several kinds for a damaged file
            raise ValueError(f"{path}/dense.pt: unreadable dense state ({error})") from error
        tables = {}
        for table_name in manifest["tables"]:
            file = os.path.join(path, "tables", f"{_safe(table_name)}.npz")
            try:
                with np.load(file, allow_pickle=False) as npz:
                    tables[table_name] = {key: npz[key] for key in npz.files}
            except (OSError, ValueError, EOFError) as error:
                raise ValueError(f"{file}: unreadable table state ({error})") from error
        return dense, tables, manifest


def _safe(name: str) -> str:
    """Table names become file names; keep them to a portable character set."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

