"""models/prepared.py with many small shards: the windows read are the documented ones, and the number of open files
stays bounded whatever the shard count (a corpus of 8k-token shards failed with 'Too many open files')."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest

from proxyscale.models.prepared import EVAL_SEED, PreparedCorpus, read_manifest
from proxyscale.models.spec import SpecError


def write_corpus(directory: Path, train_sizes: list[int], val_sizes: list[int], dtype: str = "uint16",
                 seed: int = 0) -> dict:
    """manifest.json + one .bin file per shard, in the layout `prepare-data` writes (only what the reader needs)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, sizes in (("train", train_sizes), ("val", val_sizes)):
        shards = []
        for i, size in enumerate(sizes):
            name = f"{split}_{i:05d}.bin"
            # values above 255 so a wrong dtype (uint8 vs uint16) cannot go unnoticed
            rng.integers(0, 60_000, size=size).astype(dtype).tofile(directory / name)
            shards.append({"file": name, "tokens": size})
        splits[split] = {"tokens": sum(sizes), "shards": shards}
    manifest = {"dtype": dtype, "splits": splits}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def raw_shards(directory: Path, manifest: dict, split: str) -> list[np.ndarray]:
    """Every shard read whole with numpy, no memory map: the reference the reader must agree with."""
    return [np.fromfile(directory / s["file"], dtype=manifest["dtype"]) for s in manifest["splits"][split]["shards"]]


def reference_train_windows(shards: list[np.ndarray], seed: int, first: int, count: int, seq_len: int) -> np.ndarray:
    """The training stream as models/prepared.py's docstring states it, one sequence at a time: epoch e visits the
    shards in rng([seed, e]).permutation order and a shard's sequences (stride seq_len, seq_len + 1 tokens, short
    tail left out) in rng([seed, e, shard]).permutation order."""
    counts = [max(0, (len(s) - 1) // seq_len) for s in shards]
    total = sum(counts)
    rows = []
    for g in range(first, first + count):
        epoch, k = divmod(g, total)
        for shard in np.random.default_rng([seed, epoch]).permutation(len(shards)).tolist():
            if k < counts[shard]:
                chunk = int(np.random.default_rng([seed, epoch, shard]).permutation(counts[shard])[k])
                rows.append(shards[shard][chunk * seq_len:chunk * seq_len + seq_len + 1])
                break
            k -= counts[shard]
    return np.stack(rows)


def reference_eval_windows(shards: list[np.ndarray], index: int, count: int, seq_len: int) -> np.ndarray:
    """Eval batch `index`: the validation sequences (in shard order) that EVAL_SEED's permutation lists at
    index * count ... (index + 1) * count - 1, wrapping around."""
    sequences = [s[c * seq_len:c * seq_len + seq_len + 1] for s in shards for c in range(max(0, (len(s) - 1) // seq_len))]
    order = np.random.default_rng(EVAL_SEED).permutation(len(sequences))
    return np.stack([sequences[order[(index * count + j) % len(order)]] for j in range(count)])


def test_windows_are_the_documented_ones_with_more_shards_than_stay_mapped(tmp_path):
    # 150 training shards (more than the reader keeps mapped per split), uneven sizes, some too short to hold one
    # sequence, tails left over; 90 validation shards, so eval batches come from shards mapped again after eviction
    rng = np.random.default_rng(1)
    train_sizes = [int(n) for n in rng.integers(5, 120, size=150)]
    val_sizes = [int(n) for n in rng.integers(5, 80, size=90)]
    manifest = write_corpus(tmp_path, train_sizes, val_sizes)
    corpus = PreparedCorpus(tmp_path, manifest)
    train, val = raw_shards(tmp_path, manifest, "train"), raw_shards(tmp_path, manifest, "val")
    for seq_len in (7, 16):
        total = sum(max(0, (n - 1) // seq_len) for n in train_sizes)
        for seed, first, count in ((0, 0, 40), (3, 17, 64), (3, total - 20, 50), (11, 2 * total + 5, 33)):
            got = corpus.train_windows(seed, first, count, seq_len)
            assert got.dtype == np.uint16 and got.shape == (count, seq_len + 1)
            assert np.array_equal(got, reference_train_windows(train, seed, first, count, seq_len)), (seq_len, seed, first)
        # one whole epoch touches every shard: every sequence exactly once, in the reference's order
        assert np.array_equal(corpus.train_windows(5, 0, total, seq_len), reference_train_windows(train, 5, 0, total, seq_len))
        for index in (0, 1, 9):
            assert np.array_equal(corpus.eval_windows(index, 24, seq_len), reference_eval_windows(val, index, 24, seq_len))


def test_a_closed_corpus_is_freed_at_once(tmp_path):
    # A worker process opens the corpus once per run: nothing (a class-level cache, say) may keep an old one, and its
    # mapped shards with it, alive. Reference counting alone must free it (the cycle collector is switched off).
    manifest = write_corpus(tmp_path, [200] * 5, [100] * 3)
    corpus = PreparedCorpus(tmp_path, manifest)
    corpus.train_windows(0, 0, 30, 8)
    corpus.eval_windows(0, 4, 8)
    freed = weakref.ref(corpus)
    gc.disable()
    try:
        del corpus
        assert freed() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("damage", ["missing", "short"])
def test_a_damaged_shard_is_refused_when_the_corpus_opens(tmp_path, damage):
    manifest = write_corpus(tmp_path, [300] * 6, [100] * 2)
    shard = tmp_path / manifest["splits"]["train"]["shards"][4]["file"]
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(SpecError, match=rf"data.path={tmp_path}: shard train_00004.bin is missing or not 600 bytes"):
        PreparedCorpus(tmp_path, manifest)


OPEN_WITH_FEW_FILES = textwrap.dedent("""
    import os, resource, sys
    import numpy as np
    from proxyscale.models.prepared import PreparedCorpus, read_manifest

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    directory = sys.argv[1]
    before = len(os.listdir("/proc/self/fd"))
    # a worker opens the corpus once per run: ten runs in one process
    for run in range(10):
        corpus = PreparedCorpus(directory, read_manifest(directory))
        total = int(corpus.chunk_counts("train", 16).sum())
        epoch = corpus.train_windows(run, 0, total, 16)  # every training shard
        evals = [corpus.eval_windows(i, 32, 16) for i in range(4)]
    print(total, len(epoch), int(epoch.sum() % 1000003), int(sum(e.sum() for e in evals) % 1000003),
          len(os.listdir("/proc/self/fd")) - before)
""")


def test_more_shards_than_the_open_file_limit(tmp_path):
    # 300 training + 40 validation shards of 100 tokens, read under a soft limit of 128 open files (in a subprocess:
    # the limit must not touch the test process)
    directory = tmp_path / "corpus"
    manifest = write_corpus(directory, [100] * 300, [100] * 40)
    run = subprocess.run([sys.executable, "-c", OPEN_WITH_FEW_FILES, str(directory)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    total, n_read, train_sum, eval_sum, extra_files = map(int, run.stdout.split())
    train, val = raw_shards(directory, manifest, "train"), raw_shards(directory, manifest, "val")
    assert total == n_read == 300 * 6
    # the windows read under the limit are the reference's (checksums of the last run's epoch and eval batches)
    assert train_sum == int(reference_train_windows(train, 9, 0, total, 16).sum() % 1000003)
    assert eval_sum == int(sum(reference_eval_windows(val, i, 32, 16).sum() for i in range(4)) % 1000003)
    # at most 64 shards per split stay mapped, and nothing of the nine earlier runs stays open
    assert extra_files <= 2 * 64
    assert read_manifest(directory) == manifest
