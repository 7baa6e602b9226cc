"""data=prepared in training (models/prepared.py) and bits per byte (ledger, --metric bpb)."""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from proxyscale.models.data import eval_batch, load_tokens, train_batch
from proxyscale.models.prepared import PreparedCorpus
from proxyscale.models.spec import ModelSpec, RunSpec, SpecError, TrainSpec
from proxyscale.orchestrator.cli import main
from proxyscale.orchestrator.prepare import PrepareOptions, _is_validation, prepare, resolve_prepared_data

LETTERS = set(b"abcdefghijklmnopqrstuvwxyz \n")
DIGITS = set(b"0123456789 \n")


def make_split_corpus(folder: Path, n_docs: int = 40, val_fraction: float = 0.25) -> Path:
    """Documents whose split is known in advance: training documents are letters, validation documents digits."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n_docs):
        name = f"{folder.name}/doc{i:03d}.txt"
        alphabet = "0123456789" if _is_validation(name, 0, val_fraction) else "abcdefghijklmnopqrstuvwxyz"
        words = ["".join(rng.choice(list(alphabet), size=rng.integers(2, 8))) for _ in range(300)]
        (folder / f"doc{i:03d}.txt").write_text(" ".join(words) + "\n")
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bpb")
    corpus = make_split_corpus(root / "docs")
    out = root / "prepared"
    prepare([str(corpus)], out, PrepareOptions(val_fraction=0.25, shard_tokens=8192))
    return out


def prepared_spec(directory: Path, **train) -> RunSpec:
    plain = resolve_prepared_data({"model": {"vocab_size": 999}, "data": {"kind": "prepared", "path": str(directory)}})
    model = ModelSpec(width=16, depth=1, n_heads=2, seq_len=16, vocab_size=plain["model"]["vocab_size"])
    settings = dict(tokens=64 * 24, batch_tokens=64, eval_interval_tokens=256, eval_batches=2, warmup_steps=2,
                    log_interval=4, lr=3e-3, device="cpu") | train
    return RunSpec.from_dict({"model": dataclasses.asdict(model), "train": settings, "data": plain["data"]})


def test_eval_reads_the_validation_split_and_training_the_training_split(prepared):
    spec = prepared_spec(prepared)
    assert spec.data.vocab_size == spec.model.vocab_size == 256 and spec.data.manifest_hash
    source = load_tokens(spec.data, batch_sequences=4)
    assert source.val_bytes_per_token == 1.0 and source.stream is not None
    for step in range(30):
        x, y = train_batch(source, 0, step, 0, 4, 16)
        assert set(np.unique(x.numpy()).tolist()) <= LETTERS and x.shape == (4, 16)
        assert np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())
    for index in range(6):
        x, _ = eval_batch(source, index, 4, 16)
        assert set(np.unique(x.numpy()).tolist()) <= DIGITS
    # the same eval batches for every run, whatever its seed
    assert np.array_equal(eval_batch(source, 1, 4, 16)[0].numpy(), eval_batch(source, 1, 4, 16)[0].numpy())


def test_stream_order_depends_only_on_the_seed_and_visits_every_sequence_once_per_epoch(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    corpus = PreparedCorpus(prepared, manifest)
    counts = corpus.chunk_counts("train", 16)
    total = int(counts.sum())
    every = {(s, c) for s, n in enumerate(counts) for c in range(n)}
    windows = corpus.train_windows(7, 0, total, 16)
    starts = {bytes(w.astype(np.uint8)) for w in windows}
    expected = {bytes(corpus.splits["train"][s][c * 16:c * 16 + 17].astype(np.uint8)) for s, c in every}
    assert starts == expected and len(windows) == total
    again = PreparedCorpus(prepared, manifest).train_windows(7, 0, 64, 16)
    assert np.array_equal(again, windows[:64])
    assert not np.array_equal(corpus.train_windows(8, 0, 64, 16), windows[:64])
    # epoch 2 is another order of the same sequences
    assert not np.array_equal(corpus.train_windows(7, total, 64, 16), windows[:64])


def test_train_fork_eval_reads_the_right_positions(prepared, tmp_path):
    from proxyscale.models.train import train_run

    parent = prepared_spec(prepared, tokens=64 * 12, eval_interval_tokens=128)
    parent_records = []
    parent_result = train_run(parent, on_record=parent_records.append, checkpoint_dir=tmp_path / "parent",
                              keep_steps=(6,))
    fork = RunSpec.from_dict(parent.to_dict() | {"train": parent.to_dict()["train"] | {"init_from": f"{parent.run_id()}@6"}})
    fork_records = []
    fork_result = train_run(fork, on_record=fork_records.append, checkpoint_dir=tmp_path / "fork",
                            init_checkpoint=tmp_path / "parent" / "step_6.pt")
    # the fork trains on the sequences the parent read after step 6, so its later evals are the parent's exactly
    assert [p for p in parent_result.eval_curve if p[0] > 6] == list(fork_result.eval_curve)
    assert len(fork_result.eval_curve) == 3
    # every eval carries bits per byte; for bytes, bpb = loss / ln 2
    evals = [r for r in parent_records + fork_records if r.eval_loss is not None]
    assert evals and all(r.eval_bpb == pytest.approx(r.eval_loss / math.log(2), rel=1e-12) for r in evals)
    assert parent_result.val_bytes_per_token == 1.0
    assert parent_result.data_hash == parent.data.manifest_hash


def test_byte_corpus_bpb_is_loss_over_ln2():
    from proxyscale.models.train import train_run

    spec = RunSpec(model=ModelSpec(width=16, depth=1, n_heads=2, seq_len=16),
                   train=TrainSpec(tokens=64 * 8, batch_tokens=64, eval_interval_tokens=256, eval_batches=2,
                                   warmup_steps=2, device="cpu"))
    records = []
    result = train_run(spec, on_record=records.append)
    evals = [r for r in records if r.eval_loss is not None]
    assert len(evals) == 3 and result.val_bytes_per_token == 1.0
    for record in evals:
        assert record.eval_bpb == pytest.approx(record.eval_loss / math.log(2), rel=1e-12)


def test_bpe_bpb_divides_by_the_manifests_bytes_per_token(prepared, tmp_path):
    corpus = make_split_corpus(tmp_path / "docs")
    out = tmp_path / "bpe"
    prepare([str(corpus)], out, PrepareOptions(tokenizer="train:300", val_fraction=0.25, shard_tokens=4096))
    spec = prepared_spec(out, tokens=64 * 4, eval_interval_tokens=128)
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    per_token = splits["val"]["bytes_per_token"]
    # BPE learns merges from the training split (letters): they shorten it; the digit-only validation split keeps
    # about a token per byte (its end-of-text tokens carry no bytes)
    assert spec.model.vocab_size == 300 and splits["train"]["bytes_per_token"] > 1.2 and per_token != 1.0
    from proxyscale.models.train import train_run

    records = []
    train_run(spec, on_record=records.append)
    evals = [r for r in records if r.eval_loss is not None]
    assert all(r.eval_bpb == pytest.approx(r.eval_loss / math.log(2) / per_token, rel=1e-12) for r in evals)
    # a fork whose data has another tokenizer than its parent's is refused, naming it
    parent = prepared_spec(prepared, tokens=64 * 4)
    train_run(parent, checkpoint_dir=tmp_path / "parent", keep_steps=(2,))
    fork = RunSpec.from_dict(spec.to_dict() | {"train": spec.to_dict()["train"] | {"init_from": f"{parent.run_id()}@2"}})
    with pytest.raises(RuntimeError, match="tokenizer .* differs from the one fork parent"):
        train_run(fork, checkpoint_dir=tmp_path / "fork", init_checkpoint=tmp_path / "parent" / "step_2.pt")


def test_a_corpus_prepared_again_in_place_is_refused_to_its_old_runs(tmp_path):
    corpus = make_split_corpus(tmp_path / "docs", n_docs=12)
    out = tmp_path / "prepared"
    prepare([str(corpus)], out, PrepareOptions(val_fraction=0.25, shard_tokens=4096))
    spec = prepared_spec(out)
    prepare([str(corpus)], out, PrepareOptions(tokenizer="train:280", val_fraction=0.25, shard_tokens=4096),
            overwrite=True)
    with pytest.raises(SpecError, match="prepared again in place"):
        load_tokens(spec.data, batch_sequences=4)


def test_run_ids_change_with_the_data_and_not_for_other_corpora(prepared):
    plain = RunSpec().to_dict()
    assert set(plain["data"]) == {"kind", "train_path", "val_path", "dtype", "vocab_size", "val_every"}
    spec = prepared_spec(prepared)
    other = RunSpec.from_dict(spec.to_dict() | {"data": spec.to_dict()["data"] | {"manifest_hash": "0" * 64}})
    assert other.run_id() != spec.run_id()


def _cli_error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("proxyscale: error: ") and "\n" not in err
    return err


def test_data_path_errors_before_any_run(prepared, tmp_path, capsys):
    base = ["train", "data=prepared", f"out_dir={tmp_path / 'runs'}", "tracking=none"]
    assert "no manifest.json there" in _cli_error(base + [f"data.path={tmp_path}"], capsys)
    assert "data.path" in _cli_error(base, capsys)
    message = _cli_error(base + [f"data.path={prepared}", "model.seq_len=64", "train.eval_batch_tokens=65536"], capsys)
    assert "validation split holds" in message and "fewer than one eval batch" in message
    assert not (tmp_path / "runs").exists()


def _ledger_with_runs(directory: Path, bytes_per_token: float):
    """A ledger of finished runs whose losses follow a Chinchilla law exactly, recorded with bytes per token."""
    from proxyscale.orchestrator.ledger import Ledger
    from proxyscale.orchestrator.sweep import plan_rows

    specs, losses = [], []
    for width in (16, 24, 32, 48, 64):
        for tokens in (2048, 4096, 8192, 16384):
            specs.append(RunSpec(model=ModelSpec(width=width, depth=2, n_heads=2, seq_len=16),
                                 train=TrainSpec(tokens=tokens, batch_tokens=64, device="cpu")))
    rows = plan_rows(specs)
    ledger = Ledger(directory / "ledger.sqlite")
    ledger.register("synthetic", specs, rows)
    for row in rows:
        loss = 1.5 + 40.0 / row["n_params"] ** 0.4 + 300.0 / row["tokens"] ** 0.35
        losses.append(loss)
        ledger.finish(row["run_id"], {"status": "finished", "reason": None, "tokens": row["tokens"], "flops": row["flops"],
                                      "initial_eval_loss": 5.5, "final_eval_loss": loss, "best_eval_loss": loss,
                                      "wall_seconds": 1.0, "train_seconds": 1.0, "data_hash": "x",
                                      "val_bytes_per_token": bytes_per_token}, {})
        ledger.add_steps(row["run_id"], [{"step": 1, "tokens": 64, "lr": 1e-3, "train_loss": loss, "eval_loss": loss,
                                          "eval_bpb": loss / math.log(2) / bytes_per_token}])
    return ledger, losses


def test_ledger_columns_and_fit_in_bits_per_byte(tmp_path, capsys):
    ledger, losses = _ledger_with_runs(tmp_path, 2.5)
    runs = ledger.runs()
    assert all(r["final_eval_bpb"] == pytest.approx(r["final_eval_loss"] / math.log(2) / 2.5) for r in runs)
    assert all(r["bytes_per_token"] == 2.5 for r in runs)
    ledger.close()
    from proxyscale.orchestrator.commands.common import open_ledger

    with open_ledger(str(tmp_path), metric="bpb") as view:
        assert [r["final_eval_loss"] for r in view.runs()] == [r["final_eval_bpb"] for r in runs]
        assert view.steps()[0]["eval_loss"] == pytest.approx(view.steps()[0]["train_loss"])
    fits = {}
    for metric in ("loss", "bpb"):
        assert main(["fit", str(tmp_path), "--metric", metric, "--json", "--bootstrap", "10"]) == 0
        fits[metric] = json.loads(capsys.readouterr().out)
        assert fits[metric]["metric"] == metric
    scale = math.log(2) * 2.5
    loss_params, bpb_params = fits["loss"]["parameters"], fits["bpb"]["parameters"]
    assert bpb_params["E"]["value"] == pytest.approx(loss_params["E"]["value"] / scale, rel=0.02)
    assert bpb_params["alpha"]["value"] == pytest.approx(loss_params["alpha"]["value"], rel=0.02)
    assert "--metric" in _cli_error(["fit", str(tmp_path), "--metric", "bits"], capsys)


def test_old_ledger_gains_the_columns_and_bpb_needs_them(tmp_path, capsys):
    from proxyscale.orchestrator.ledger import Ledger

    ledger, _ = _ledger_with_runs(tmp_path, 1.0)
    ledger.close()
    db = sqlite3.connect(tmp_path / "ledger.sqlite")  # as a ledger written before bits per byte
    for column in ("final_eval_bpb", "best_eval_bpb", "bytes_per_token"):
        db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    db.execute("ALTER TABLE steps DROP COLUMN eval_bpb")
    db.commit()
    db.close()
    reopened = Ledger(tmp_path / "ledger.sqlite")
    assert all(r["final_eval_bpb"] is None and r["final_eval_loss"] is not None for r in reopened.runs())
    assert "eval_bpb" in reopened.steps()[0]
    reopened.close()
    message = _cli_error(["fit", str(tmp_path), "--metric", "bpb"], capsys)
    assert "have no bits per byte" in message and "--metric loss" in message


def _printed_evals(out: str) -> list[tuple[float, float]]:
    """(eval loss, bpb) of every eval line `proxyscale train` printed."""
    pairs = []
    for line in out.splitlines():
        fields = line.split()
        if line.startswith("step") and "eval" in fields:
            assert "bpb" in fields, f"an eval line without bpb: {line!r}"
            pairs.append((float(fields[fields.index("eval") + 1]), float(fields[fields.index("bpb") + 1])))
    return pairs


@pytest.mark.parametrize("corpus", ["bpe", "bytes"])
def test_train_prints_bpb_at_every_eval_and_result_json_carries_it(corpus, tmp_path, capsys):
    small = ["model.width=16", "model.depth=1", "model.n_heads=2", "model.seq_len=16", "train.tokens=256",
             "train.batch_tokens=64", "train.eval_interval_tokens=128", "train.eval_batches=2",
             "train.warmup_steps=2", "train.device=cpu", "tracking=none", f"out_dir={tmp_path / 'runs'}"]
    if corpus == "bpe":  # a tokenizer whose validation split has a bytes per token other than 1
        out = tmp_path / "bpe"
        prepare([str(make_split_corpus(tmp_path / "docs"))], out,
                PrepareOptions(tokenizer="train:300", val_fraction=0.25, shard_tokens=4096))
        per_token = json.loads((out / "manifest.json").read_text())["splits"]["val"]["bytes_per_token"]
        assert per_token != 1.0
        small += ["data=prepared", f"data.path={out}"]
    else:  # the default stdlib byte corpus: a byte a token, bpb = loss / ln 2
        per_token = 1.0
    assert main(["train", *small]) == 0
    printed = _printed_evals(capsys.readouterr().out)
    assert len(printed) == 3  # step 0, 2 and 4
    for loss, bpb in printed:  # both printed to 4 decimals
        assert bpb == pytest.approx(loss / math.log(2) / per_token, abs=2e-4)
    [result_file] = (tmp_path / "runs").glob("*/result.json")
    result = json.loads(result_file.read_text())
    assert result["val_bytes_per_token"] == pytest.approx(per_token, rel=1e-12)
    for which in ("final", "best"):
        assert result[f"{which}_eval_bpb"] == pytest.approx(
            result[f"{which}_eval_loss"] / math.log(2) / per_token, rel=1e-12)
    assert result["final_eval_bpb"] == pytest.approx(printed[-1][1], abs=1e-4)
