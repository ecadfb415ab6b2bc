"""Checkpoints of a whole model: dense parameters, dense optimizer, every embedding table, step.

Layout under ``model_dir``::

    checkpoint               JSON index: {"latest": "ckpt-200", "all": ["ckpt-100", "ckpt-200"]}
    ckpt-200/dense.pt        torch.save of dense params, optimizer state, global step, RNG states
    ckpt-200/tables/NAME.shard-00001-of-00002.npz   each rank's shard of each table
    ckpt-200/manifest.json   global step, table names, the number of shards and the SHA-256 of
                             every other file of the checkpoint, written last

A checkpoint is assembled in a staging directory (every rank writing its own shards) and renamed
into place by rank 0 once all ranks are done, then the index is replaced atomically: a crash or a
dead rank at any point leaves the previous checkpoint as the latest one. Shards are merged and
split again on reading, so a checkpoint written by N ranks restores into M ranks.

Every file is verified against the manifest's checksum before it is used: a damaged checkpoint is
skipped for the previous one with a warning, or, when none is sound, an error names the damaged
files. A missing index is rebuilt from the ``ckpt-N`` directories present, and an existing sound
checkpoint directory is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
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
_CHECKSUMS = "sha256"  # the manifest's key: {file path inside the checkpoint: SHA-256}
# Files known to have a checksum, by (device, inode, size, mtime, checksum): each file is hashed once
# per process (when written, or when first verified), however often its checkpoint is looked at.
_verified: set[tuple[int, int, int, int, str]] = set()


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
            return self._rebuild_index()
        try:
            with open(path) as f:
                index = json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: unreadable checkpoint index ({error})") from error
        if not isinstance(index, dict) or "all" not in index:
            raise ValueError(f"{path}: not a checkpoint index (expected keys 'latest' and 'all')")
        # A checkpoint is complete once renamed into place; a crash before the index named it leaves
        # it newer than every indexed one: it is the latest (else the next save would refuse its step).
        indexed = [int(name[len(_PREFIX):]) for name in index["all"] if name[len(_PREFIX):].isdigit()]
        newer = {step: name for step, name in self._complete_checkpoints().items() if step > max(indexed, default=-1)}
        if newer:
            names = [newer[step] for step in sorted(newer)]
            logger.warning("%s: checkpoint(s) %s complete but not in the index (a crash before it was written); "
                           "the latest is %s", self.model_dir, ", ".join(names), names[-1])
            index = {"latest": names[-1], "all": index["all"] + names}
        return index

    def _complete_checkpoints(self) -> dict[int, str]:
        """The ``ckpt-N`` directories with a manifest, by step."""
        steps = {}
        if os.path.isdir(self.model_dir):
            for name in os.listdir(self.model_dir):
                match = re.fullmatch(rf"{_PREFIX}(\d+)", name)
                if match and os.path.isfile(os.path.join(self.model_dir, name, "manifest.json")):
                    steps[int(match.group(1))] = name
        return steps

    def _rebuild_index(self) -> dict[str, Any]:
        """The index of the complete ``ckpt-N`` directories, by step: a lost index must not make
        training start over at step 0 on top of trained checkpoints. Written back when it can be."""
        steps = self._complete_checkpoints()
        if not steps:
            return {"latest": None, "all": []}
        names = [steps[step] for step in sorted(steps)]
        index = {"latest": names[-1], "all": names}
        logger.warning("%s: no checkpoint index; rebuilt it from the checkpoints present: %s",
                       self.model_dir, ", ".join(names))
        try:
            self._write_index(index["latest"], index["all"])
        except OSError as error:  # a read-only model_dir (evaluate, export) still reads the rebuilt one
            logger.warning("%s: rebuilt checkpoint index not written (%s)", self.model_dir, error)
        return index

    def _write_index(self, latest: str | None, names: list[str]) -> None:
        """The one writer of the index: ``latest`` and the kept checkpoint names, oldest first."""
        with atomic_write(os.path.join(self.model_dir, INDEX_FILE), "w") as f:
            json.dump({"latest": latest, "all": names}, f)

    def make_latest(self, path: str | os.PathLike) -> None:
        """Points the index at the checkpoint at ``path`` (one of this directory's), keeping the others
        listed: training resumes from it (Monolith's ``restore_ckpt``)."""
        name = os.path.basename(os.fspath(path))
        self._write_index(name, [n for n in self._read_index()["all"] if n != name] + [name])

    def copy_from(self, source: str | os.PathLike) -> str:
        """Copies the checkpoint directory ``source`` (another model_dir's) into this one as its only
        indexed checkpoint, through a staging copy so that a crash leaves no half checkpoint; returns
        its new path (Monolith's ``restore_dir``)."""
        name = os.path.basename(os.fspath(source))
        final = os.path.join(self.model_dir, name)
        staging = os.path.join(self.model_dir, f".{name}.restore")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        self._write_index(name, [name])
        return final

    def find(self, name: str | None) -> str:
        """The checkpoint called ``basename(name)`` (TensorFlow's ``model.ckpt-N`` names ``ckpt-N``),
        else the latest: a name this directory lacks is logged and skipped, as Monolith does.

        Raises:
            FileNotFoundError: the directory has no checkpoint.
        """
        latest = self.latest()
        if latest is None:
            raise FileNotFoundError(f"{self.model_dir}: no checkpoint to restore from")
        if name is None:
            return latest
        path = self.named(name)
        if path is not None:
            return path
        logger.warning("restore_ckpt %r is not a checkpoint of %s (it has %s); restoring its latest, %s", name,
                       self.model_dir, [os.path.basename(p) for p in self.checkpoints()], os.path.basename(latest))
        return latest

    def checkpoints(self) -> list[str]:
        """Paths of the kept checkpoints, oldest first."""
        return [os.path.join(self.model_dir, name) for name in self._read_index()["all"]]

    def named(self, name: str | os.PathLike) -> str | None:
        """The kept checkpoint ``name`` names (its path or ``ckpt-N``; TensorFlow's ``model.ckpt-N``
        names ``ckpt-N``), or None."""
        wanted = re.sub(r"^model\.ckpt-(\d+)$", r"ckpt-\1", os.path.basename(os.path.normpath(os.fspath(name))))
        return next((path for path in self.checkpoints() if os.path.basename(path) == wanted), None)

    def latest(self) -> str | None:
        """Path of the newest complete checkpoint, or None.

        A checkpoint the index names but that is gone or incomplete (no manifest: a crash while it
        was being replaced) is skipped for the newest complete one the index lists; so is a damaged
        one (a file missing, cut short or not matching its checksum), with a warning. When every complete checkpoint is
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

        Raises:
            FileExistsError: ``ckpt-{global_step}`` exists and is sound (it is never overwritten);
                an incomplete or damaged one is moved aside to ``ckpt-{global_step}.damaged``.
        """
        name = f"{_PREFIX}{global_step}"
        final = os.path.join(self.model_dir, name)
        staging = os.path.join(self.model_dir, f".{name}.staging")
        if rank == 0:
            if os.path.exists(final) and _damage(final) is None:
                # Checked before anything is written: nothing of the existing checkpoint is touched.
                raise FileExistsError(f"{final}: a checkpoint of step {global_step} exists already; it is not "
                                      f"overwritten (the index names {self._read_index()['latest']} as the latest)")
            os.makedirs(self.model_dir, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(os.path.join(staging, "tables"))
        barrier()
        checksums = {}
        for table_name, state in table_states.items():
            file = os.path.join("tables", _shard_file(table_name, rank, world_size))
            with open(os.path.join(staging, file), "wb") as f:
                np.savez(f, **state)
            checksums[file] = _sha256(os.path.join(staging, file))
        with open(os.path.join(staging, f".sha256-{rank:05d}.json"), "w") as f:
            json.dump(checksums, f)
        barrier()
        if rank == 0:
            torch.save(dense_state, os.path.join(staging, "dense.pt"))
            checksums = {"dense.pt": _sha256(os.path.join(staging, "dense.pt"))}
            for r in range(world_size):  # every rank's shards' checksums into the manifest
                part = os.path.join(staging, f".sha256-{r:05d}.json")
                with open(part) as f:
                    checksums.update(json.load(f))
                os.remove(part)
            manifest = {"global_step": global_step, "tables": sorted(table_states), "num_shards": world_size,
                        _CHECKSUMS: checksums, **(extra or {})}
            with atomic_write(os.path.join(staging, "manifest.json"), "w") as f:
                json.dump(manifest, f)
            index = self._read_index()  # before the new checkpoint is in place: a rebuilt index lacks it
            if os.path.exists(final):
                aside = f"{final}.damaged"
                logger.warning("%s is incomplete or damaged (%s); moved to %s", final, _damage(final), aside)
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(final, aside)
            os.replace(staging, final)
            kept = [n for n in index["all"] if n != name] + [name]
            self._write_index(name, kept[-self.keep_checkpoint_max:])
            for old in kept[: -self.keep_checkpoint_max]:
                shutil.rmtree(os.path.join(self.model_dir, old), ignore_errors=True)
        barrier()
        return final

    def annotate(self, path: str | os.PathLike, fields: dict[str, Any], rank: int = 0) -> None:
        """Adds ``fields`` to the manifest of the checkpoint at ``path`` (rank 0 writes it, atomically)."""
        if rank != 0:
            return
        manifest = {**self.read_manifest(path), **fields}
        with atomic_write(os.path.join(os.fspath(path), "manifest.json"), "w") as f:
            json.dump(manifest, f)

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
        """``(dense_state, {table: [shard states]}, manifest)`` of the checkpoint at ``path``.

        Raises:
            ValueError: a file of it is damaged (cut short, or not matching its checksum), named.
        """
        path = os.fspath(path)
        manifest = CheckpointManager.read_manifest(path)
        damage = _damage(path)
        if damage is not None:
            raise ValueError(f"{path}: damaged checkpoint: {damage}")
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
    manifest, or a file missing, cut short (every file is a zip archive whose directory sits at its
    end) or not matching the manifest's checksum (checkpoints written before checksums have none);
    None for a sound one."""
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
    checksums = manifest.get(_CHECKSUMS)
    if checksums is not None:
        for file in files:
            expected = checksums.get(os.path.relpath(file, path))
            if expected is None:
                return f"{file} has no checksum in the manifest"
            if not _matches(file, expected):
                return f"{file} does not match its checksum in the manifest (damaged)"
    return None


def _sha256(file: str) -> str:
    """The SHA-256 of ``file``, remembered as verified while the file is unchanged."""
    with open(file, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        stat = os.fstat(f.fileno())
    _verified.add((stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, digest))
    return digest


def _matches(file: str, expected: str) -> bool:
    """Whether ``file`` has the SHA-256 ``expected``; hashed once per process while it is unchanged."""
    stat = os.stat(file)
    if (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, expected) in _verified:
        return True
    return _sha256(file) == expected


def _shard_file(table_name: str, rank: int, world_size: int) -> str:
    return f"{table_file_stem(table_name)}.shard-{rank:05d}-of-{world_size:05d}.npz"


def table_file_stem(name: str) -> str:
    """Table names become file names; keep them to a portable character set."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

