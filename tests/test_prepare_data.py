"""prepare-data (orchestrator/prepare.py): deterministic shards and manifest, resume, up-to-date reruns, bad inputs."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from proxyscale.models.spec import SpecError
from proxyscale.orchestrator.cli import main
from proxyscale.orchestrator.prepare import PrepareOptions, manifest_hash, prepare

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
         "phi chi psi omega scaling law proxy token shard manifest").split()


def make_corpus(root: Path, n_text: int = 12, n_json: int = 60, seed: int = 0) -> Path:
    """A small generated corpus: text files in a folder and one JSONL file of documents."""
    rng = random.Random(seed)
    folder = root / "corpus"
    (folder / "sub").mkdir(parents=True)
    for i in range(n_text):
        words = [rng.choice(WORDS) for _ in range(rng.randint(200, 600))]
        (folder / ("sub" if i % 3 == 0 else ".") / f"doc{i:02d}.txt").write_text(" ".join(words) + "\n")
    with open(folder / "rows.jsonl", "w") as handle:
        for i in range(n_json):
            words = [rng.choice(WORDS) for _ in range(rng.randint(20, 120))]
            handle.write(json.dumps({"text": " ".join(words) + f" é{i}", "id": i}) + "\n")
    return folder


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.bin"))}


OPTIONS = PrepareOptions(tokenizer="byte", val_fraction=0.2, shard_tokens=4096)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("prep"))


def test_same_shards_and_manifest_twice_and_with_two_workers(corpus, tmp_path):
    first = prepare([str(corpus)], tmp_path / "a", OPTIONS)
    second = prepare([str(corpus)], tmp_path / "b", OPTIONS)
    parallel = prepare([str(corpus)], tmp_path / "c", PrepareOptions(**{**OPTIONS.__dict__, "workers": 2}))
    assert first.manifest == second.manifest and first.manifest_hash == second.manifest_hash
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    # --workers only changes who tokenises, not a byte of the output (it is not part of the manifest either)
    assert shard_bytes(tmp_path / "c") == shard_bytes(tmp_path / "a") and parallel.manifest == first.manifest
    manifest = first.manifest
    splits = manifest["splits"]
    total_bytes = sum(len(p.read_bytes()) for p in corpus.rglob("*.txt"))
    assert splits["train"]["documents"] + splits["val"]["documents"] == 12 + 60
    assert splits["val"]["documents"] > 0 and splits["train"]["documents"] > splits["val"]["documents"]
    # byte tokens: one token per UTF-8 byte, every shard but the last exactly shard_tokens long
    for split in ("train", "val"):
        tokens = [s["tokens"] for s in splits[split]["shards"]]
        assert all(t == 4096 for t in tokens[:-1]) and 0 < tokens[-1] <= 4096
        assert sum(tokens) == splits[split]["tokens"] == splits[split]["bytes"]
        assert splits[split]["bytes_per_token"] == 1.0
    assert total_bytes < splits["train"]["bytes"] + splits["val"]["bytes"]  # the JSONL documents come on top
    assert manifest["vocab_size"] == 256 and manifest["dtype"] == "uint16"
    assert [i["name"] for i in manifest["inputs"]][:2] == ["corpus/doc01.txt", "corpus/doc02.txt"]
    assert all(len(i["sha256"]) == 64 and i["size"] > 0 for i in manifest["inputs"])
    # the shards hold the documents' bytes: the first train shard starts with the first training document
    first_train = np.fromfile(tmp_path / "a" / "train_00000.bin", dtype=np.uint16)
    assert bytes(first_train[:5].astype(np.uint8)) in [p.read_bytes()[:5] for p in corpus.rglob("*.txt")]


def test_bpe_trained_on_the_input_is_deterministic(corpus, tmp_path):
    options = PrepareOptions(tokenizer="train:300", val_fraction=0.2, shard_tokens=2048)
    first = prepare([str(corpus)], tmp_path / "a", options)
    second = prepare([str(corpus)], tmp_path / "b", options)
    assert first.manifest == second.manifest
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    tokenizer = first.manifest["tokenizer"]
    assert tokenizer["vocab_size"] == first.manifest["vocab_size"] == 300 and tokenizer["eos_id"] == 0
    assert (tmp_path / "a" / "tokenizer.json").is_file()
    assert first.manifest["splits"]["train"]["bytes_per_token"] > 1.5  # merges: fewer tokens than bytes
    # the saved tokenizer, given back as a file, reproduces the same shards
    again = prepare([str(corpus)], tmp_path / "c", PrepareOptions(tokenizer=str(tmp_path / "a" / "tokenizer.json"),
                                                                  val_fraction=0.2, shard_tokens=2048))
    assert shard_bytes(tmp_path / "c") == shard_bytes(tmp_path / "a")
    assert again.manifest["tokenizer"]["sha256"] == tokenizer["sha256"]


def test_an_interrupted_run_resumes_from_its_last_whole_shard(corpus, tmp_path):
    reference = prepare([str(corpus)], tmp_path / "whole", OPTIONS)

    def stop_after_three(shards_written: int) -> None:
        if shards_written >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare([str(corpus)], tmp_path / "cut", OPTIONS, on_shard=stop_after_three)
    assert not (tmp_path / "cut" / "manifest.json").exists()
    written = sorted(p.name for p in (tmp_path / "cut").glob("*.bin"))
    assert len(written) >= 3
    resumed = prepare([str(corpus)], tmp_path / "cut", OPTIONS)
    assert resumed.resumed_from_shards >= 3
    assert resumed.manifest == reference.manifest
    assert shard_bytes(tmp_path / "cut") == shard_bytes(tmp_path / "whole")
    assert not (tmp_path / "cut" / ".prepare").exists()


def test_rerun_does_nothing_and_says_so(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare-data", str(corpus), "-o", str(out), "--val-fraction", "0.2", "--shard-tokens", "4096"]) == 0
    printed = capsys.readouterr().out
    assert "bytes/token" in printed and "data=prepared data.path=" in printed
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["prepare-data", str(corpus), "-o", str(out), "--val-fraction", "0.2", "--shard-tokens", "4096"]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    # other options on the same directory are refused, not silently mixed
    assert main(["prepare-data", str(corpus), "-o", str(out), "--val-fraction", "0.3"]) == 2
    assert "already holds a corpus prepared from other inputs" in capsys.readouterr().err


def _error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("proxyscale: error: ") and "\n" not in err
    return err


def test_bad_inputs_get_one_line_naming_the_file(tmp_path, capsys):
    good = tmp_path / "good.txt"
    good.write_text("hello world\n" * 50)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xc3\xa9 ok, then latin-1: caf\xe9 here")
    out = str(tmp_path / "out")
    assert "INPUT" in _error(["prepare-data", str(empty), "-o", out], capsys) and "empty.txt: is empty" in \
        _error(["prepare-data", str(good), str(empty), "-o", out], capsys)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "real.py").write_text("x = 1\n" * 100)
    from proxyscale.orchestrator.prepare import collect_inputs

    assert [f.name for f in collect_inputs([str(folder)])] == ["folder/real.py"]  # inside a folder: left out
    assert "no such file or folder" in _error(["prepare-data", str(tmp_path / "missing.txt"), "-o", out], capsys)
    unreadable = tmp_path / "unreadable.txt"
    os.symlink("/proc/self/mem", unreadable)  # exists, but reading it fails even for root
    assert "unreadable.txt: cannot be read" in _error(["prepare-data", str(unreadable), "-o", out], capsys)
    message = _error(["prepare-data", str(good), str(latin), "-o", out], capsys)
    assert "latin.txt: is not UTF-8" in message and "offset 27" in message and "--errors replace" in message
    assert latin.read_bytes()[27] == 0xE9
    assert not (tmp_path / "out" / "manifest.json").exists()
    # --errors replace takes it: U+FFFD stands for the bad byte
    more = []
    for i in range(8):
        more.append(tmp_path / f"more{i}.txt")
        more[-1].write_text(f"document {i}\n" * 20)
    outcome = prepare([str(good), str(latin), *map(str, more)], tmp_path / "replaced",
                      PrepareOptions(errors="replace", val_fraction=0.4))
    assert outcome.manifest["errors"] == "replace"
    splits = outcome.manifest["splits"]
    sizes = sum(p.stat().st_size for p in [good, latin, *more])
    assert splits["train"]["bytes"] + splits["val"]["bytes"] == sizes + 2  # one bad byte became U+FFFD's three


def test_bad_tokenizers_and_dtypes(tmp_path, capsys):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    good = tmp_path / "good.txt"
    good.write_text("hello world\n" * 50)
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "1.0", "model": ')
    out = str(tmp_path / "out")
    assert "does not load as a Hugging Face tokenizers file" in _error(
        ["prepare-data", str(good), "-o", out, "--tokenizer", str(broken)], capsys)
    assert "no such file" in _error(["prepare-data", str(good), "-o", out, "--tokenizer", "nope.json"], capsys)
    assert "train:VOCAB" in _error(["prepare-data", str(good), "-o", out, "--tokenizer", "train:lots"], capsys)
    big = tmp_path / "big.json"
    Tokenizer(WordLevel({f"w{i}": i for i in range(70_000)}, unk_token="w0")).save(str(big))
    message = _error(["prepare-data", str(good), "-o", out, "--tokenizer", str(big), "--dtype", "uint16"], capsys)
    assert "--dtype uint16" in message and "70000" in message and "uint32" in message
    assert "--val-fraction" in _error(["prepare-data", str(good), "-o", out, "--val-fraction", "1.5"], capsys)


def test_manifest_hash_is_of_the_whole_manifest(corpus, tmp_path):
    outcome = prepare([str(corpus)], tmp_path / "a", OPTIONS)
    assert manifest_hash(json.loads((tmp_path / "a" / "manifest.json").read_text())) == outcome.manifest_hash
    with pytest.raises(SpecError, match="no manifest.json there"):
        from proxyscale.orchestrator.prepare import read_manifest

        read_manifest(tmp_path / "nothing")
