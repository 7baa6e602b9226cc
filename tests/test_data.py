from __future__ import annotations

import numpy as np
import pytest
import torch

from proxyscale.models.data import (
    eval_batch,
    load_stdlib_corpus,
    load_tokens,
    stdlib_source_files,
    train_batch,
    unigram_entropy,
)
from proxyscale.models.spec import DataSpec


@pytest.fixture(scope="module")
def corpus():
    return load_stdlib_corpus(val_every=20)


def test_stdlib_corpus_is_split_by_file_and_hashed(corpus):
    files = stdlib_source_files()
    assert files == sorted(files) and len(files) > 100
    total = sum(path.stat().st_size for _, path in files)
    assert len(corpus.train) + len(corpus.val) == total
    assert 0.02 * total < len(corpus.val) < 0.10 * total
    assert len(corpus.data_hash) == 64
    assert load_stdlib_corpus(val_every=20).data_hash == corpus.data_hash  # cached and stable


def test_sampling_is_a_pure_function_of_seed_and_step(corpus):
    a = train_batch(corpus, seed=3, step=17, micro=1, n_seqs=4, seq_len=32)
    b = train_batch(corpus, seed=3, step=17, micro=1, n_seqs=4, seq_len=32)
    c = train_batch(corpus, seed=3, step=18, micro=1, n_seqs=4, seq_len=32)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert torch.equal(a[0][:, 1:], a[1][:, :-1])  # targets are the inputs shifted by one
    assert torch.equal(eval_batch(corpus, 0, 4, 32)[0], eval_batch(corpus, 0, 4, 32)[0])


def test_unigram_entropy_of_known_distributions():
    assert unigram_entropy(np.array([0, 1, 2, 3] * 10), 256) == pytest.approx(np.log(4))
    assert unigram_entropy(np.zeros(100, dtype=np.uint8), 256) == pytest.approx(0.0)


def test_memmap_data(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 1000, size=50_000).astype(np.uint16)
    val = rng.integers(0, 1000, size=5_000).astype(np.uint16)
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    spec = DataSpec(kind="memmap", train_path=str(tmp_path / "train.bin"), val_path=str(tmp_path / "val.bin"),
                    dtype="uint16", vocab_size=1000)
    source = load_tokens(spec)
    assert np.array_equal(np.asarray(source.train), train)
    x, y = train_batch(source, 0, 0, 0, 2, 16)
    assert x.dtype == torch.int64 and int(x.max()) < 1000
    missing = DataSpec(kind="memmap", train_path=str(tmp_path / "nope.bin"), val_path=str(tmp_path / "val.bin"),
                       vocab_size=1000)
    with pytest.raises(FileNotFoundError, match="data.train_path"):
        load_tokens(missing)
