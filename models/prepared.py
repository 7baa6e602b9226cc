"""Reading a corpus made by `proxyscale prepare-data` (data.kind = prepared): manifest.json + token shards.

Training streams the training shards in a seeded order that depends only on the run's seed. Each shard
is cut into sequences of seq_len + 1 tokens (stride seq_len; a shard's tail shorter than one is left out);
epoch e visits the shards in the order rng([seed, e]).permutation and, inside a shard, its sequences in the
order rng([seed, e, shard]).permutation. Sequence number g of the run (g = step * sequences per step +
micro * sequences per micro-batch + row) is a pure function of the seed, so a resumed run and a fork (same
seed, the parent's step) continue exactly where the parent's data stood.

Evaluation reads the validation split: eval batch i holds the sequences EVAL_SEED's fixed permutation of
the split lists at i * n ... (i + 1) * n - 1, the same for every run and seed.

Only numpy and the standard library here (models/ imports no Hydra, Ray, W&B or tokenizers).
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from proxyscale.models.spec import DataSpec, SpecError

MANIFEST = "manifest.json"
EVAL_SEED = 20_221_122


def manifest_hash(manifest: dict[str, Any]) -> str:
    """The hash recorded in a run's spec (orchestrator.prepare.manifest_hash computes the same)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_manifest(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise SpecError(f"data.path={path}: no {MANIFEST} there; make the corpus with "
                        f"`proxyscale prepare-data INPUT... -o {path}`")
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SpecError(f"data.path={path}: {MANIFEST} does not load ({error})") from None


SHARDS_MAPPED = 64
"""At most this many shards of each split stay memory-mapped at once (least recently read ones are dropped)."""


def _chunk_counts(tokens: dict[str, np.ndarray], split: str, seq_len: int) -> np.ndarray:
    """Sequences of seq_len + 1 tokens (stride seq_len) in each shard of the split, from the shards' token counts."""
    return np.maximum(0, (tokens[split] - 1) // seq_len)


def _shard_order(counts: Callable[[str, int], np.ndarray], seed: int, epoch: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    train = counts("train", seq_len)
    order = np.random.default_rng([seed, epoch]).permutation(len(train))
    return order, np.cumsum(train[order])


def _chunk_order(seed: int, epoch: int, shard: int, count: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, shard]).permutation(count)


def _eval_order(counts: Callable[[str, int], np.ndarray], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    val = counts("val", seq_len)
    return np.random.default_rng(EVAL_SEED).permutation(int(val.sum())), np.cumsum(val)


class ShardFiles(Sequence[np.ndarray]):
    """One split's shard files, each memory-mapped when first read; only the `mapped` most recently read stay mapped.

    Every np.memmap holds an open file (mmap keeps a duplicate of the descriptor), so mapping all shards at once
    failed with 'Too many open files' for a corpus of small shards. A dropped map is unmapped, and its file closed,
    once nothing refers to it: the arrays the reader returns are copies, never views of a map."""

    def __init__(self, files: list[Path], dtype: np.dtype, mapped: int = SHARDS_MAPPED) -> None:
        self.files = files
        self.dtype = dtype
        self.mapped = max(1, mapped)
        self._maps: OrderedDict[int, np.memmap] = OrderedDict()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        index = operator.index(index)
        if index < 0:
            index += len(self.files)
        if not 0 <= index < len(self.files):
            raise IndexError(f"shard {index} of {len(self.files)}")
        shard = self._maps.get(index)
        if shard is None:
            shard = np.memmap(self.files[index], dtype=self.dtype, mode="r")
            self._maps[index] = shard
            if len(self._maps) > self.mapped:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(index)
        return shard

    def open_maps(self) -> int:
        """How many shards are mapped now (by this cache)."""
        return len(self._maps)


class PreparedCorpus:
    """The shards of one prepared directory, memory-mapped on demand, with the seeded sampling described above.

    Opening checks every shard's size against the manifest but maps none: at most SHARDS_MAPPED per split are
    mapped at a time (see ShardFiles), so the open files stay bounded whatever the shard count."""

    def __init__(self, directory: str | Path, manifest: dict[str, Any], mapped: int = SHARDS_MAPPED) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.splits: dict[str, ShardFiles] = {}
        tokens: dict[str, np.ndarray] = {}
        for split in ("train", "val"):
            files = []
            for shard in manifest["splits"][split]["shards"]:
                file = self.directory / shard["file"]
                expected = shard["tokens"] * self.dtype.itemsize
                if not file.is_file() or file.stat().st_size != expected:
                    raise SpecError(f"data.path={directory}: shard {shard['file']} is missing or not {expected} bytes; "
                                    "prepare the corpus again")
                files.append(file)
            self.splits[split] = ShardFiles(files, self.dtype, mapped)
            # the manifest's counts are the files' lengths (checked above), so counting sequences maps no shard
            tokens[split] = np.array([s["tokens"] for s in manifest["splits"][split]["shards"]], dtype=np.int64)
        # Per-corpus caches of pure functions, built on the token counts and not on self: a cache on the class (the
        # methods' lru_cache before) kept every corpus a worker process had opened alive, with its mapped shards.
        self._counts = functools.lru_cache(maxsize=8)(functools.partial(_chunk_counts, tokens))
        self._shard_order = functools.lru_cache(maxsize=16)(functools.partial(_shard_order, self._counts))
        self._chunk_order = functools.lru_cache(maxsize=8)(_chunk_order)
        self._eval_order = functools.lru_cache(maxsize=4)(functools.partial(_eval_order, self._counts))

    def chunk_counts(self, split: str, seq_len: int) -> np.ndarray:
        """Sequences of seq_len + 1 tokens in each shard of the split (a shard's shorter tail left out)."""
        return self._counts(split, seq_len)

    def train_windows(self, seed: int, first: int, count: int, seq_len: int) -> np.ndarray:
        """Sequences first .. first + count - 1 of the run's stream, as a (count, seq_len + 1) array."""
        counts = self.chunk_counts("train", seq_len)
        total = int(counts.sum())
        if total == 0:
            raise SpecError(f"data.path={self.directory}: the training shards hold no sequence of {seq_len + 1} tokens")
        epochs, ks = np.divmod(np.arange(first, first + count, dtype=np.int64), total)
        out = np.empty((count, seq_len + 1), dtype=self.dtype)
        offsets = np.arange(seq_len + 1)
        for epoch in np.unique(epochs).tolist():
            rows = np.nonzero(epochs == epoch)[0]
            order, cumulative = self._shard_order(seed, epoch, seq_len)
            position = np.searchsorted(cumulative, ks[rows], side="right")
            shards = order[position]
            local = ks[rows] - (cumulative[position] - counts[shards])
            for shard in np.unique(shards).tolist():
                chosen = shards == shard
                chunks = self._chunk_order(seed, epoch, shard, int(counts[shard]))[local[chosen]]
                out[rows[chosen]] = self.splits["train"][shard][chunks[:, None] * seq_len + offsets]
        return out

    def eval_windows(self, index: int, count: int, seq_len: int) -> np.ndarray:
        order, cumulative = self._eval_order(seq_len)
        if len(order) < count:
            raise SpecError(f"data.path={self.directory}: the validation split holds {len(order)} sequences of "
                            f"{seq_len} + 1 tokens, fewer than one eval batch ({count}); prepare it with a larger "
                            "--val-fraction, or lower train.eval_batch_tokens")
        ks = order[np.arange(index * count, (index + 1) * count) % len(order)]
        shards = np.searchsorted(cumulative, ks, side="right")
        local = ks - np.where(shards > 0, cumulative[np.maximum(shards - 1, 0)], 0)
        out = np.empty((count, seq_len + 1), dtype=self.dtype)
        offsets = np.arange(seq_len + 1)
        for shard in np.unique(shards).tolist():
            chosen = shards == shard
            out[chosen] = self.splits["val"][shard][local[chosen][:, None] * seq_len + offsets]
        return out


def as_batch(windows: np.ndarray):
    """(inputs, targets) as int64 torch tensors."""
    import torch

    window = torch.from_numpy(windows.astype(np.int64))
    return window[:, :-1], window[:, 1:]


def load_prepared(spec: DataSpec) -> tuple[PreparedCorpus, dict[str, Any]]:
    """The corpus at data.path, refused when its manifest is not the one the run was planned on."""
    manifest = read_manifest(spec.path)
    digest = manifest_hash(manifest)
    if spec.manifest_hash is not None and digest != spec.manifest_hash:
        raise SpecError(f"data.path={spec.path}: manifest.json is now {digest[:12]} (tokenizer "
                        f"{manifest['tokenizer']['spec']}, {manifest['tokenizer']['sha256'][:12]}) but this run was "
                        f"planned on {spec.manifest_hash[:12]}: the corpus was prepared again in place; prepare into a "
                        "new directory, or plan new runs on it")
    return PreparedCorpus(spec.path, manifest), manifest
