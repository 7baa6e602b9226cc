"""prepare-data's throughput and memory, against the same tokenizer called in a plain loop.

A corpus of about --mb MB is generated (JSONL files of documents made of the standard library's own source
lines, shuffled with a fixed seed), a byte-level BPE of --vocab tokens is trained once on a sample, and then:

- plain loop: json.loads each line, tokenizer.encode(text).ids, in one process (--plain-mb of the corpus);
- prepare-data with that tokenizer.json, --workers 1 and --workers N (each in a fresh process), on the corpus;
- peak resident memory of prepare-data (the whole process tree, sampled every 100 ms) at --mb and --small-mb,
  which should not grow with the corpus (it is bounded by the shard size and a batch of documents per worker);
- reading training batches: data=prepared's train_batch against the default byte corpus's, per micro-batch.

Run: .venv/bin/python tests/benchmarks/bench_prepare.py [--mb 200 --small-mb 50 --workers 2]
Last lines: prepare_vs_plain_per_core=<ratio> scaling=<workers N / workers 1> peak_rss_mb=<small>,<large>.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def generate_corpus(folder: Path, megabytes: float, seed: int = 0, files: int = 8) -> int:
    """JSONL files of ~2-30 KB documents of stdlib source lines; returns the bytes of text written."""
    rng = random.Random(seed)
    lines = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py"))[:400]:
        try:
            lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            continue
    folder.mkdir(parents=True, exist_ok=True)
    target, written = int(megabytes * 1e6), 0
    handles = [open(folder / f"part{i:02d}.jsonl", "w") for i in range(files)]
    try:
        index = 0
        while written < target:
            text = "\n".join(rng.choice(lines) for _ in range(rng.randint(50, 800)))
            handles[index % files].write(json.dumps({"text": text}) + "\n")
            written += len(text.encode())
            index += 1
    finally:
        for handle in handles:
            handle.close()
    return written


def train_tokenizer(corpus: Path, vocab: int, out: Path) -> Path:
    from tokenizers import ByteLevelBPETokenizer

    sample = []
    with open(sorted(corpus.glob("*.jsonl"))[0]) as handle:
        for line, _ in zip(handle, range(500), strict=False):
            sample.append(json.loads(line)["text"])
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sample, vocab_size=vocab, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    bpe.save(str(out))
    return out


def plain_loop_mb_per_second(corpus: Path, tokenizer_path: Path, megabytes: float) -> float:
    """The reference: the same tokenizer, one document at a time, in this process."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    done, limit = 0, megabytes * 1e6
    start = time.perf_counter()
    for path in sorted(corpus.glob("*.jsonl")):
        with open(path) as handle:
            for line in handle:
                text = json.loads(line)["text"]
                tokenizer.encode(text).ids  # noqa: B018 - the ids are what a plain loop produces
                done += len(text.encode())
                if done >= limit:
                    return done / 1e6 / (time.perf_counter() - start)
    return done / 1e6 / (time.perf_counter() - start)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier += children
    total = 0
    for member in tree:
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total


def run_prepare(corpus: Path, out: Path, tokenizer: Path, workers: int, shard_tokens: int, val_fraction: float) -> dict:
    """prepare-data in a fresh process; wall seconds and the peak RSS of its process tree."""
    command = [sys.executable, "-m", "proxyscale.orchestrator.cli", "prepare-data", str(corpus), "-o", str(out),
               "--tokenizer", str(tokenizer), "--workers", str(workers), "--shard-tokens", str(shard_tokens),
               "--val-fraction", str(val_fraction)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_bytes(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    stop.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"prepare-data failed:\n{output}")
    manifest = json.loads((out / "manifest.json").read_text())
    text_bytes = sum(s["bytes"] for s in manifest["splits"].values())
    return {"workers": workers, "seconds": seconds, "mb_per_second": text_bytes / 1e6 / seconds,
            "peak_rss_mb": peak / 1e6, "text_mb": text_bytes / 1e6,
            "tokens": sum(s["tokens"] for s in manifest["splits"].values())}


def batch_read_microseconds(prepared: Path, repeats: int = 2000) -> dict:
    """Per micro-batch (16 sequences of 32 tokens, the demo's shape): the default corpus against data=prepared."""
    from proxyscale.models.data import load_tokens, train_batch
    from proxyscale.models.spec import DataSpec
    from proxyscale.orchestrator.prepare import resolve_prepared_data

    plain = resolve_prepared_data({"model": {}, "data": {"kind": "prepared", "path": str(prepared)}})
    sources = {"stdlib": load_tokens(DataSpec()), "prepared": load_tokens(DataSpec(**plain["data"]), batch_sequences=16)}
    timings = {}
    for name, source in sources.items():
        train_batch(source, 0, 0, 0, 16, 32)
        start = time.perf_counter()
        for step in range(repeats):
            train_batch(source, 0, step, 0, 16, 32)
        timings[name] = (time.perf_counter() - start) / repeats * 1e6
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0, help="corpus size in MB of text")
    parser.add_argument("--small-mb", type=float, default=50.0, help="the smaller corpus for the memory comparison")
    parser.add_argument("--plain-mb", type=float, default=30.0, help="MB the plain loop tokenises")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--shard-tokens", type=int, default=1 << 22)
    parser.add_argument("--val-fraction", type=float, default=0.01)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        root = Path(tmp)
        os.environ["PROXYSCALE_CACHE"] = str(root / "cache")
        big, small = root / "big", root / "small"
        written = generate_corpus(big, args.mb)
        generate_corpus(small, args.small_mb, seed=1)
        tokenizer = train_tokenizer(big, args.vocab, root / "tokenizer.json")
        print(f"corpus: {written / 1e6:.0f} MB of JSONL text (and {args.small_mb:.0f} MB), BPE vocab {args.vocab}, "
              f"shards of {args.shard_tokens} tokens, {os.cpu_count()} CPUs", flush=True)
        # The plain loop is measured before and after each prepare-data run and averaged: on a shared machine the
        # load drifts over minutes, and a ratio of two measurements taken at different times would measure the drift.
        plain_runs = [plain_loop_mb_per_second(big, tokenizer, args.plain_mb)]
        print(f"plain loop (tokenizer.encode per document, 1 process): {plain_runs[-1]:.2f} MB/s", flush=True)
        results = []
        for workers in sorted({1, args.workers}):
            result = run_prepare(big, root / f"out_w{workers}", tokenizer, workers, args.shard_tokens, args.val_fraction)
            plain_runs.append(plain_loop_mb_per_second(big, tokenizer, args.plain_mb))
            print(f"plain loop again: {plain_runs[-1]:.2f} MB/s", flush=True)
            results.append(result)
            print(f"prepare-data --workers {workers}: {result['text_mb']:.0f} MB in {result['seconds']:.1f} s = "
                  f"{result['mb_per_second']:.2f} MB/s ({result['mb_per_second'] / workers:.2f} per worker), "
                  f"{result['tokens']:,} tokens, peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
        small_result = run_prepare(small, root / "out_small", tokenizer, 1, args.shard_tokens, args.val_fraction)
        print(f"prepare-data --workers 1 on {small_result['text_mb']:.0f} MB: peak RSS "
              f"{small_result['peak_rss_mb']:.0f} MB (vs {results[0]['peak_rss_mb']:.0f} MB at "
              f"{results[0]['text_mb']:.0f} MB)", flush=True)
        reads = batch_read_microseconds(root / "out_w1")
        print(f"train_batch (16 x 32 tokens): stdlib bytes {reads['stdlib']:.0f} us, data=prepared "
              f"{reads['prepared']:.0f} us per micro-batch", flush=True)
        one = results[0]
        many = results[-1]
        plain = (plain_runs[0] + plain_runs[1]) / 2  # around the --workers 1 run
        print(f"prepare_vs_plain_per_core={one['mb_per_second'] / plain:.3f} "
              f"scaling={many['mb_per_second'] / one['mb_per_second']:.2f} "
              f"peak_rss_mb={small_result['peak_rss_mb']:.0f},{one['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
