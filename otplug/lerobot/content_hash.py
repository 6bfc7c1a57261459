"""A LeRobot dataset's content hash: of its decoded frames and values in a canonical order, not of its files.

Two recordings of the same data can differ in their bytes (parquet encoding, ``stats.json``'s key order, PNG
compression, MP4 muxing) while holding the same frames and values; and a copied dataset can hold the same bytes
under other modification times. :func:`content_hash` reads every row through the dataset itself (lerobot's readers
and decoders: PNG and video alike), in (episode, frame) order, and hashes each feature's value -- its key, dtype,
shape and bytes (little-endian, C order) -- in sorted key order. Changing one pixel of one frame changes the hash;
re-encoding the files does not, as long as the decoded values are the same.

:func:`cached_content_hash` keeps the hash beside the dataset (``meta/otplug_content_hash.json``) under a
fingerprint of the dataset's files (name, size, modification time), so the decode runs again only when a file
changed: then the content is hashed again, and the same content gives the same hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from otplug.atomic import save_text

__all__ = ["HASH_FILE", "cached_content_hash", "content_hash", "files_fingerprint", "kept_content_hash"]

HASH_FILE = Path("meta") / "otplug_content_hash.json"
#: bump when the hashed layout changes
HASH_VERSION = 1


def _update(h: Any, key: str, value: Any) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) or np.isscalar(value) and not isinstance(value, str):
        arr = np.ascontiguousarray(np.asarray(value))
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    else:
        h.update(f"{key}|{type(value).__name__}|{value!r}|".encode())


def content_hash(ds: Any) -> str:
    """The sha256 of ``ds``'s rows (a LeRobotDataset opened without time windows or transforms), in (episode_index,
    frame_index) order. Reads every frame once."""
    n = len(ds)
    hf = getattr(ds, "hf_dataset", None)
    order = list(range(n))
    if hf is not None and {"episode_index", "frame_index"} <= set(hf.column_names):
        ep = np.asarray(hf["episode_index"]).reshape(-1)
        fr = np.asarray(hf["frame_index"]).reshape(-1)
        order = [int(i) for i in np.lexsort((fr, ep))]
    h = hashlib.sha256(f"otplug-content-v{HASH_VERSION}|{n}|".encode())
    for i in order:
        row = ds[i]
        for key in sorted(row):
            if key == "index" or key.endswith("_is_pad"):
                continue  # the global row index depends on the file layout, not on the content
            _update(h, key, row[key])
    return h.hexdigest()


def files_fingerprint(root: Path) -> str:
    """Name, size and modification time of every file under ``root`` (the hash file itself excluded)."""
    h = hashlib.sha256()
    root = Path(root)
    skip = root / HASH_FILE
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p == skip:
                continue
            st = p.stat()
            h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def kept_content_hash(root: str | Path) -> str | None:
    """The content hash kept beside the dataset when it is still that of its files (no decode), else None."""
    root = Path(root)
    try:
        kept = json.loads((root / HASH_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("version") != HASH_VERSION or not isinstance(kept.get("sha256"), str):
        return None
    return kept["sha256"] if kept.get("files") == files_fingerprint(root) else None


def cached_content_hash(repo_id: str, root: str | Path) -> str:
    """:func:`content_hash` of the dataset at ``root``, kept in ``root/meta/otplug_content_hash.json`` under the files'
    fingerprint (recomputed when a file changed; a hash file that cannot be written is only a cost)."""
    from otplug.lerobot.datasets import open_dataset

    root = Path(root)
    kept = kept_content_hash(root)
    if kept is not None:
        return kept
    fp = files_fingerprint(root)
    path = root / HASH_FILE
    digest = content_hash(open_dataset(repo_id, root))
    try:
        save_text(path, json.dumps({"sha256": digest, "files": fp, "version": HASH_VERSION}) + "\n")
    except Exception:  # noqa: BLE001 -- a read-only dataset: the hash is still right, only not kept
        pass
    return digest
