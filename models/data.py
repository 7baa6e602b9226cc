"""Token data: the default corpus (the Python standard library's own source, as bytes) and memmap files.

The stdlib corpus exists on every machine that runs Python, so a fresh clone trains without a
download. Files are read in sorted order; every `val_every`-th file (by a hash of its relative
path) is held out, so the split is by file and stable. The token arrays are cached on disk and
their hash is recorded with every run (different Python versions give different corpora).

Sampling is a pure function of (seed, step, micro-batch index): a resumed run sees exactly the
batches an uninterrupted one would have seen. Evaluation batches are fixed and independent of the
run's seed, so every run of a sweep is scored on the same held-out tokens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from proxyscale.models.spec import DataSpec

EVAL_SEED = 20_221_122


@dataclass(frozen=True)
class TokenSource:
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    data_hash: str
    description: str
    val_bytes_per_token: float | None = 1.0
    """UTF-8 bytes per token of the eval split, for bits per byte (None: unknown, as for a memmap file)."""
    tokenizer_hash: str | None = None
    """prepared: the manifest's tokenizer hash (a fork must use its parent's tokenizer)."""
    stream: Any = None
    """prepared: the PreparedCorpus that train_batch / eval_batch read (train / val are then its first shards,
    for summaries only)."""
    batch_sequences: int = 0
    """prepared: sequences per optimiser step, so sequence number = step * this + micro * n_seqs + row."""


def cache_dir() -> Path:
    return Path(os.environ.get("PROXYSCALE_CACHE", Path.home() / ".cache" / "proxyscale"))


def stdlib_source_files() -> list[tuple[str, Path]]:
    """(relative path, path) of every .py file of the standard library, in a fixed order."""
    # os.walk with pruning, not Path.rglob: every worker process lists the stdlib once to key the corpus
    # cache, and rglob through site-packages took ~2 s of each worker's first run (50x slower).
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [name for name in subdirs if name not in ("site-packages", "__pycache__")]
        prefix = Path(directory).relative_to(root).as_posix()
        for name in names:
            if name.endswith(".py"):
                rel = name if prefix == "." else f"{prefix}/{name}"
                files.append((rel, Path(directory) / name))
    return sorted(files)


def _is_validation_file(rel_path: str, val_every: int) -> bool:
    digest = hashlib.sha256(rel_path.encode()).digest()
    return int.from_bytes(digest[:4], "little") % val_every == 0


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


@functools.lru_cache(maxsize=4)
def load_stdlib_corpus(val_every: int) -> TokenSource:
    """The stdlib corpus, cached on disk and, for a worker that trains many runs, in the process."""
    files = stdlib_source_files()
    listing = json.dumps([sys.version, val_every] + [(rel, p.stat().st_size) for rel, p in files])
    key = hashlib.sha256(listing.encode()).hexdigest()[:16]
    folder = cache_dir() / f"stdlib-{key}"
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        train_parts, val_parts = [], []
        for rel, path in files:
            (val_parts if _is_validation_file(rel, val_every) else train_parts).append(path.read_bytes())
        train = np.frombuffer(b"".join(train_parts), dtype=np.uint8)
        val = np.frombuffer(b"".join(val_parts), dtype=np.uint8)
        data_hash = hashlib.sha256(train.tobytes() + b"\0" + val.tobytes()).hexdigest()
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_save(folder / "train.npy", train)
        _atomic_save(folder / "val.npy", val)
        tmp = meta_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"data_hash": data_hash, "files": len(files)}))
        os.replace(tmp, meta_path)
    meta = json.loads(meta_path.read_text())
    return TokenSource(
        train=np.load(folder / "train.npy", mmap_mode="r"),
        val=np.load(folder / "val.npy", mmap_mode="r"),
        vocab_size=256,
        data_hash=meta["data_hash"],
        description=f"python{sys.version_info.major}.{sys.version_info.minor} stdlib source, {meta['files']} files",
    )


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached beside the corpus cache by (path, size, mtime)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    marker = cache_dir() / "file-hashes" / key
    if marker.exists():
        return marker.read_text()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest.hexdigest())
    return digest.hexdigest()


def load_memmap(spec: DataSpec) -> TokenSource:
    paths = {"data.train_path": Path(spec.train_path), "data.val_path": Path(spec.val_path)}
    for key, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"{key}: no such token file {str(path)!r}")
    train_path, val_path = paths.values()
    data_hash = hashlib.sha256((file_sha256(train_path) + file_sha256(val_path)).encode()).hexdigest()
    return TokenSource(
        train=np.memmap(train_path, dtype=spec.dtype, mode="r"),
        val=np.memmap(val_path, dtype=spec.dtype, mode="r"),
        vocab_size=spec.vocab_size,
        data_hash=data_hash,
        val_bytes_per_token=None,
        description=f"memmap {train_path.name} / {val_path.name} ({spec.dtype})",
    )


def load_tokens(spec: DataSpec, batch_sequences: int = 0) -> TokenSource:
    """batch_sequences: sequences per optimiser step (data.kind='prepared' streams by sequence number)."""
    if spec.kind == "prepared":
        return load_prepared_source(spec, batch_sequences)
    return load_stdlib_corpus(spec.val_every) if spec.kind == "stdlib" else load_memmap(spec)


def load_prepared_source(spec: DataSpec, batch_sequences: int) -> TokenSource:
    from proxyscale.models.prepared import load_prepared

    corpus, manifest = load_prepared(spec)
    val = manifest["splits"]["val"]
    return TokenSource(
        train=corpus.splits["train"][0], val=corpus.splits["val"][0], vocab_size=manifest["vocab_size"],
        data_hash=spec.manifest_hash or "", val_bytes_per_token=val["bytes_per_token"],
        tokenizer_hash=manifest["tokenizer"]["sha256"], stream=corpus, batch_sequences=batch_sequences,
        description=f"prepared {spec.path} ({manifest['tokenizer']['spec']}, vocab {manifest['vocab_size']}, "
                    f"{manifest['splits']['train']['tokens']:,} train / {val['tokens']:,} val tokens)",
    )


def _window_starts(n_tokens: int, rng: np.random.Generator, n_seqs: int, seq_len: int) -> np.ndarray:
    if n_tokens <= seq_len + 1:
        raise ValueError(f"token array of {n_tokens} tokens is shorter than one sequence of {seq_len + 1}")
    return rng.integers(0, n_tokens - seq_len - 1, size=n_seqs)


def _window_batch(tokens: np.ndarray, rng: np.random.Generator, n_seqs: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    starts = _window_starts(len(tokens), rng, n_seqs, seq_len)
    window = np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)
    window = torch.from_numpy(window)
    return window[:, :-1], window[:, 1:]


def train_batch(
    source: TokenSource, seed: int, step: int, micro: int, n_seqs: int, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of one micro-batch; a pure function of (seed, step, micro)."""
    if source.stream is not None:
        from proxyscale.models.prepared import as_batch

        if source.batch_sequences <= 0:
            raise ValueError("data.kind='prepared': load_tokens(spec.data, batch_sequences=...) is required to train")
        first = step * source.batch_sequences + micro * n_seqs
        return as_batch(source.stream.train_windows(seed, first, n_seqs, seq_len))
    return _window_batch(source.train, np.random.default_rng([seed, step, micro]), n_seqs, seq_len)


def train_window_starts(source: TokenSource, seed: int, step: int, micro: int, n_seqs: int, seq_len: int) -> np.ndarray:
    """Where train_batch's windows start in source.train (for a copy of the tokens held on the GPU)."""
    return _window_starts(len(source.train), np.random.default_rng([seed, step, micro]), n_seqs, seq_len)


def eval_batch(source: TokenSource, index: int, n_seqs: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The index-th fixed held-out batch; the same for every run and every seed."""
    if source.stream is not None:
        from proxyscale.models.prepared import as_batch

        return as_batch(source.stream.eval_windows(index, n_seqs, seq_len))
    return _window_batch(source.val, np.random.default_rng([EVAL_SEED, index]), n_seqs, seq_len)


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats per token) of the token frequencies: the loss of the best context-free model."""
    counts = np.bincount(np.asarray(tokens), minlength=vocab_size).astype(np.float64)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())
