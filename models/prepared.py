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


class PreparedCorpus:
    """The shards of one prepared directory, memory-mapped, with the seeded sampling described above."""

    def __init__(self, directory: str | Path, manifest: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.splits: dict[str, list[np.ndarray]] = {}
        for split in ("train", "val"):
            shards = []
            for shard in manifest["splits"][split]["shards"]:
                file = self.directory / shard["file"]
                expected = shard["tokens"] * self.dtype.itemsize
                if not file.is_file() or file.stat().st_size != expected:
                    raise SpecError(f"data.path={directory}: shard {shard['file']} is missing or not {expected} bytes; "
                                    "prepare the corpus again")
                shards.append(np.memmap(file, dtype=self.dtype, mode="r"))
            self.splits[split] = shards

    @functools.lru_cache(maxsize=8)  # noqa: B019 - one corpus per process, a handful of sequence lengths
    def chunk_counts(self, split: str, seq_len: int) -> np.ndarray:
        return np.array([max(0, (len(s) - 1) // seq_len) for s in self.splits[split]], dtype=np.int64)

    @functools.lru_cache(maxsize=16)  # noqa: B019
    def _shard_order(self, seed: int, epoch: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        counts = self.chunk_counts("train", seq_len)
        order = np.random.default_rng([seed, epoch]).permutation(len(counts))
        return order, np.cumsum(counts[order])

    @functools.lru_cache(maxsize=8)  # noqa: B019
    def _chunk_order(self, seed: int, epoch: int, shard: int, count: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch, shard]).permutation(count)

    @functools.lru_cache(maxsize=4)  # noqa: B019
    def _eval_order(self, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        counts = self.chunk_counts("val", seq_len)
        return np.random.default_rng(EVAL_SEED).permutation(int(counts.sum())), np.cumsum(counts)

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
