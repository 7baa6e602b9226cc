"""`proxyscale prepare-data INPUT... -o DIR`: tokenise local text once into shards + manifest.json (orchestrator/prepare.py)."""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare-data", help="tokenise local text, JSONL or parquet into shards + manifest.json for data=prepared",
        description="Read local files with Hugging Face `datasets` (offline), tokenise them with Hugging Face "
                    "`tokenizers` (or as bytes) and write fixed-size uint16/uint32 shards, a validation split held "
                    "out by document, and DIR/manifest.json. Train on it with data=prepared data.path=DIR.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="text (.txt .md .rst .py), .jsonl/.json or .parquet "
                        "files, or folders of them")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="where the shards and manifest.json go")
    parser.add_argument("--tokenizer", default="byte", help="byte | PATH/tokenizer.json | train:VOCAB (a byte-level BPE "
                        "of that size trained on the training documents, saved as DIR/tokenizer.json); default byte")
    parser.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out (default 0.01)")
    parser.add_argument("--shard-tokens", type=int, default=1 << 22, help="tokens per shard file (default 4194304)")
    parser.add_argument("--workers", type=int, default=1, help="tokenising processes (default 1)")
    parser.add_argument("--errors", choices=["strict", "replace"], default="strict",
                        help="non-UTF-8 text: strict refuses it naming the file and offset; replace substitutes U+FFFD")
    parser.add_argument("--dtype", choices=["auto", "uint16", "uint32"], default="auto",
                        help="token dtype (auto: uint16 when the vocabulary fits, else uint32)")
    parser.add_argument("--text-field", default="text", help="the JSONL key / parquet column holding the text")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus DIR prepared from other inputs")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: nothing is downloaded
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from proxyscale.orchestrator.prepare import PrepareOptions, describe, prepare, summary_line

    options = PrepareOptions(tokenizer=args.tokenizer, val_fraction=args.val_fraction, shard_tokens=args.shard_tokens,
                             workers=args.workers, errors=args.errors, dtype=args.dtype, text_field=args.text_field)
    with progress_bar("tokenising") as on_progress:
        outcome = prepare(args.inputs, args.output, options, on_progress=on_progress, overwrite=args.overwrite)
    if outcome.up_to_date:
        print(f"{outcome.directory} is up to date: its manifest ({outcome.manifest_hash[:12]}) was made from these "
              "inputs and options; nothing to do")
        return 0
    if outcome.resumed_from_shards:
        print(f"resumed after {outcome.resumed_from_shards} shard(s) written by an interrupted run")
    print(summary_line(outcome) + f" in {outcome.seconds:.1f} s")
    print(describe(outcome.manifest))
    print(f"train on it: proxyscale launch sweep=NAME data=prepared data.path={args.output}")
    return 0


class progress_bar:
    """A rich progress bar over input bytes on a terminal; silent otherwise (the summary line follows)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._progress = None
        self._task = None

    def __enter__(self):
        if not sys.stderr.isatty():
            return None
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                  TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=None)
        return self.update

    def update(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)

    def __exit__(self, *exc) -> bool:
        if self._progress is not None:
            self._progress.stop()
        return False
