"""Read an offline W&B run back without syncing it: history rows, config and summary.

An offline run writes ``<save_dir>/wandb/offline-run-*/run-<id>.wandb``: a 7-byte header, then
protobuf ``Record`` messages in LevelDB-style framing (32 KiB blocks; each chunk has a CRC-32,
a 2-byte length and a type: full, first, middle or last). wandb ships the message classes but no
reader; this module is that reader. Finish the run (``wandb.finish()`` or the end of ``fit``)
before reading: the tail is buffered.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any, Iterator

_BLOCK = 32 * 1024
_HEADER = 7  # b":W&B" + 2-byte magic + 1-byte version
_CHUNK_HEADER = 7  # crc32 (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def find_run_file(path: str) -> str:
    """The ``.wandb`` file for ``path``: the file itself, a run folder, or a save_dir holding one run.

    Raises:
        FileNotFoundError: if there is no run file, or a save_dir holds several runs.
    """
    if os.path.isfile(path):
        return path
    found = sorted(glob.glob(os.path.join(path, "run-*.wandb"))
                   or glob.glob(os.path.join(path, "*run-*", "run-*.wandb"))
                   or glob.glob(os.path.join(path, "wandb", "*run-*", "run-*.wandb")))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one W&B run file under {path!r}, found {len(found)}: {found}")
    return found[0]


def iter_records(path: str) -> Iterator[Any]:
    """Yield the ``wandb_internal_pb2.Record`` messages of an offline run, in order."""
    from wandb.proto import wandb_internal_pb2

    with open(find_run_file(path), "rb") as f:
        data = f.read()
    if data[:4] != b":W&B":
        raise ValueError(f"{path!r} is not a W&B run file (header {data[:4]!r})")
    pos, pending = _HEADER, b""
    while pos + _CHUNK_HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _CHUNK_HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left_in_block
            continue
        chunk = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if kind in (_FULL, _FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def _items(items) -> dict[str, Any]:
    out = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


def read_history(path: str) -> list[dict[str, Any]]:
    """The run's history rows (one dict per ``wandb.log`` call), in order."""
    return [_items(r.history.item) for r in iter_records(path) if r.WhichOneof("record_type") == "history"]


def _merged_updates(path: str, kind: str) -> dict[str, Any]:
    """The ``update`` items of every ``kind`` record ("config" or "summary"), later ones winning."""
    merged: dict[str, Any] = {}
    for r in iter_records(path):
        if r.WhichOneof("record_type") == kind:
            merged.update(_items(getattr(r, kind).update))
    return merged


def read_config(path: str) -> dict[str, Any]:
    """The run's config, later updates overriding earlier ones."""
    return _merged_updates(path, "config")


def read_summary(path: str) -> dict[str, Any]:
    """The run's summary values set explicitly (``run.summary[...] = ...``)."""
    return _merged_updates(path, "summary")
