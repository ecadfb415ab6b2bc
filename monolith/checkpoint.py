"""Checkpoints of a whole model: dense parameters, dense optimizer, every embedding table, step.

Layout under ``model_dir``::

    checkpoint               JSON index: {"latest": "ckpt-200", "all": ["ckpt-100", "ckpt-200"]}
    ckpt-200/dense.pt        torch.save of dense params, optimizer state, global step, RNG states
    ckpt-200/tables/NAME.shard-00001-of-00002.npz   each rank's shard of each table
    ckpt-200/manifest.json   global step, table names and the number of shards, written last

A checkpoint is assembled in a staging directory (every rank writing its own shards) and renamed
into place by rank 0 once all ranks are done, then the index is replaced atomically: a crash or a
dead rank at any point leaves the previous checkpoint as the latest one. Shards are merged and
split again on reading, so a checkpoint written by N ranks restores into M ranks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from typing import Any, Callable

import numpy as np
import torch

from monolith.atomic import atomic_write
from monolith.table.embedding_table import read_table_file

logger = logging.getLogger(__name__)

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
        """Path of the newest complete checkpoint, or None.

        A checkpoint the index names but that is gone or incomplete (no manifest: a crash while it
        was being replaced) is skipped for the newest complete one the index lists; so is a damaged
        one (a file missing or cut short), with a warning. When every complete checkpoint is
        damaged, ``ValueError`` names them: training must not start over on top of them.
        """
        index = self._read_index()
        names = [n for n in index["all"] if n != index["latest"]] + ([index["latest"]] if index["latest"] else [])
        damaged = []
        for name in reversed(names):
            path = os.path.join(self.model_dir, name)
            if not os.path.isfile(os.path.join(path, "manifest.json")):
                continue
            damage = _damage(path)
            if damage is None:
                if damaged:
                    logger.warning("checkpoint(s) %s damaged; using %s", "; ".join(damaged), path)
                return path
            damaged.append(f"{path} ({damage})")
        if damaged:  # starting over would replace trained checkpoints with untrained ones
            raise ValueError(f"{self.model_dir}: every checkpoint is damaged: {'; '.join(damaged)}")
        return None

    # ------------------------------------------------------------------ writing
    def save(self, global_step: int, dense_state: dict[str, Any] | None,
             table_states: dict[str, dict[str, np.ndarray]], extra: dict[str, Any] | None = None,
             rank: int = 0, world_size: int = 1, barrier: Callable[[], None] = lambda: None) -> str:
        """Writes checkpoint ``ckpt-{global_step}`` and makes it the latest; returns its path.

        Every rank calls this with its own table shards; ``dense_state`` is only needed on rank 0.
        ``barrier`` synchronises the ranks (a no-op in one process).
        """
        name = f"{_PREFIX}{global_step}"
        final = os.path.join(self.model_dir, name)
        staging = os.path.join(self.model_dir, f".{name}.staging")
        if rank == 0:
            os.makedirs(self.model_dir, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(os.path.join(staging, "tables"))
        barrier()
        for table_name, state in table_states.items():
            with open(os.path.join(staging, "tables", _shard_file(table_name, rank, world_size)), "wb") as f:
                np.savez(f, **state)
        barrier()
        if rank == 0:
            torch.save(dense_state, os.path.join(staging, "dense.pt"))
            manifest = {"global_step": global_step, "tables": sorted(table_states), "num_shards": world_size,
                        **(extra or {})}
            with atomic_write(os.path.join(staging, "manifest.json"), "w") as f:
                json.dump(manifest, f)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(staging, final)
            index = self._read_index()
            kept = [n for n in index["all"] if n != name] + [name]
            with atomic_write(os.path.join(self.model_dir, INDEX_FILE), "w") as f:
                json.dump({"latest": name, "all": kept[-self.keep_checkpoint_max:]}, f)
            for old in kept[: -self.keep_checkpoint_max]:
                shutil.rmtree(os.path.join(self.model_dir, old), ignore_errors=True)
        barrier()
        return final

    # ------------------------------------------------------------------ reading
    @staticmethod
    def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
        """The manifest of the checkpoint at ``path`` (cheap: no tables are read)."""
        manifest_path = os.path.join(os.fspath(path), "manifest.json")
        try:
            with open(manifest_path) as f:
                return json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{os.fspath(path)}: not a checkpoint (no manifest.json)") from None
        except ValueError as error:
            raise ValueError(f"{manifest_path}: unreadable manifest ({error})") from error

    @staticmethod
    def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, list[dict[str, np.ndarray]]], dict[str, Any]]:
        """``(dense_state, {table: [shard states]}, manifest)`` of the checkpoint at ``path``."""
        path = os.fspath(path)
        manifest = CheckpointManager.read_manifest(path)
        try:
            dense = torch.load(os.path.join(path, "dense.pt"), weights_only=False)
        except Exception as error:  # torch raises several kinds for a damaged file
            raise ValueError(f"{path}/dense.pt: unreadable dense state ({error})") from error
        tables: dict[str, list[dict[str, np.ndarray]]] = {}
        shards = int(manifest.get("num_shards", 1))
        for table_name in manifest["tables"]:
            tables[table_name] = []
            for rank in range(shards):
                file = os.path.join(path, "tables", _shard_file(table_name, rank, shards))
                try:
                    tables[table_name].append(read_table_file(file))
                except FileNotFoundError:
                    raise FileNotFoundError(f"{file}: shard {rank} of {shards} of table '{table_name}' "
                                            f"is missing") from None
        return dense, tables, manifest


def _damage(path: str) -> str | None:
    """What makes the checkpoint at ``path`` unreadable, found without reading its contents: a bad
    manifest, or a file missing or cut short (every file is a zip archive whose directory sits at
    its end); None for a sound one."""
    try:
        manifest = CheckpointManager.read_manifest(path)
        shards = int(manifest.get("num_shards", 1))
        files = [os.path.join(path, "dense.pt")] + [
            os.path.join(path, "tables", _shard_file(name, rank, shards))
            for name in manifest["tables"] for rank in range(shards)]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"manifest: {error}"
    for file in files:
        if not os.path.isfile(file):
            return f"{file} is missing"
        if not zipfile.is_zipfile(file):
            return f"{file} is cut short or not a checkpoint file"
    return None


def _shard_file(table_name: str, rank: int, world_size: int) -> str:
    return f"{table_file_stem(table_name)}.shard-{rank:05d}-of-{world_size:05d}.npz"


def table_file_stem(name: str) -> str:
    """Table names become file names; keep them to a portable character set."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

