"""`prepare-data`'s core: local text / JSONL / parquet -> tokenised shards + DIR/manifest.json.

Reading is Hugging Face `datasets` (streaming, local files only), tokenising is Hugging Face `tokenizers`
(a tokenizer.json, or a byte-level BPE trained here with `train:VOCAB`); `byte` maps each UTF-8 byte to
its value (vocab 256, the default stdlib corpus's tokens). Nothing here is a hand-written tokenizer or reader.

The output is a pure function of the inputs and options:
- documents are one text file, or one JSONL line / parquet row; a document is held out for validation
  when a hash of (its input's name, its row) falls below --val-fraction: the split is by document, never
  by token offset, and stable when inputs are added;
- each split's tokens (documents joined by the tokenizer's end-of-text token when it has one) are cut into
  shards of exactly `shard_tokens` tokens (the last one shorter), so batching, --workers and interruptions
  do not change a byte;
- after every shard the writer records how many documents it has consumed and the tokens it holds beyond
  the shards (DIR/.prepare/): an interrupted run resumes from its last whole shard.

Memory is bounded by the shard size plus one batch of documents per worker, whatever the corpus size.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from proxyscale.models.spec import SpecError

MANIFEST = "manifest.json"
FORMAT = "proxyscale-prepared/1"
STATE_DIR = ".prepare"
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]")
DTYPE_LIMITS = {"uint16": 1 << 16, "uint32": 1 << 32}
BATCH_DOCS = 64
"""Documents tokenised per task: small enough to bound memory, large enough to amortise a worker round trip."""


@dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    tokenizer: str = "byte"
    """'byte', a path to a Hugging Face tokenizer.json (or a folder holding one), or 'train:VOCAB'."""
    val_fraction: float = 0.01
    shard_tokens: int = 1 << 22
    workers: int = 1
    errors: str = "strict"
    """Non-UTF-8 text: 'strict' refuses it naming the file and byte offset; 'replace' substitutes U+FFFD."""
    dtype: str = "auto"
    text_field: str = "text"

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise SpecError(f"--val-fraction: must be in (0, 1), got {self.val_fraction!r}")
        if self.shard_tokens < 1024:
            raise SpecError(f"--shard-tokens: must be at least 1024, got {self.shard_tokens!r}")
        if self.workers < 1:
            raise SpecError(f"--workers: must be at least 1, got {self.workers!r}")
        if self.errors not in ("strict", "replace"):
            raise SpecError(f"--errors: {self.errors!r} is not allowed; choose one of ['strict', 'replace']")
        if self.dtype not in ("auto", *DTYPE_LIMITS):
            raise SpecError(f"--dtype: {self.dtype!r} is not allowed; choose one of ['auto', 'uint16', 'uint32']")


@dataclass(frozen=True)
class InputFile:
    path: Path
    name: str
    """Stable name: the path below the folder given on the command line, or the file's own name."""
    kind: str
    """'text', 'json' or 'parquet': the `datasets` builder that reads it."""
    size: int


@dataclass
class SplitWriter:
    """One split's shards: tokens are appended in order and cut at exact multiples of shard_tokens."""

    directory: Path
    split: str
    dtype: str
    shard_tokens: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    pending: list[np.ndarray] = field(default_factory=list)
    pending_tokens: int = 0
    documents: int = 0
    bytes: int = 0

    def add(self, tokens: np.ndarray, n_bytes: int, n_docs: int) -> int:
        """Append tokens; returns the number of whole shards written."""
        self.documents += n_docs
        self.bytes += n_bytes
        if tokens.size:
            self.pending.append(tokens.astype(self.dtype, copy=False))
            self.pending_tokens += tokens.size
        written = 0
        if self.pending_tokens >= self.shard_tokens:
            joined = np.concatenate(self.pending)
            start = 0
            while joined.size - start >= self.shard_tokens:
                self._write(joined[start:start + self.shard_tokens])
                start += self.shard_tokens
                written += 1
            rest = joined[start:]
            self.pending, self.pending_tokens = ([rest] if rest.size else []), int(rest.size)
        return written

    def close(self) -> None:
        if self.pending_tokens:
            self._write(np.concatenate(self.pending))
        self.pending, self.pending_tokens = [], 0

    def pending_array(self) -> np.ndarray:
        return np.concatenate(self.pending) if self.pending else np.zeros(0, self.dtype)

    def _write(self, tokens: np.ndarray) -> None:
        name = f"{self.split}_{len(self.shards):05d}.bin"
        path = self.directory / name
        tmp = path.with_suffix(".tmp")
        tokens.tofile(tmp)
        os.replace(tmp, path)
        self.shards.append({"file": name, "tokens": int(tokens.size),
                            "sha256": hashlib.sha256(tokens.tobytes()).hexdigest()})

    def summary(self) -> dict[str, Any]:
        tokens = sum(s["tokens"] for s in self.shards)
        return {"documents": self.documents, "bytes": self.bytes, "tokens": tokens,
                "bytes_per_token": self.bytes / tokens if tokens else None, "shards": list(self.shards)}


# ---------------------------------------------------------------- inputs

def collect_inputs(paths: list[str]) -> list[InputFile]:
    """Every readable, non-empty input file, folders expanded (sorted), with one clear error for a bad one.

    A file named on the command line must not be empty; empty files found inside a folder are left out."""
    if not paths:
        raise SpecError("INPUT: give at least one file or folder")
    found: list[InputFile] = []
    for raw in paths:
        root = Path(raw)
        if root.is_dir():
            members = sorted(p for p in root.rglob("*") if p.is_file() and _kind(p) is not None)
            if not members:
                raise SpecError(f"INPUT {raw}: the folder holds no text, JSONL or parquet files "
                                f"({', '.join(TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES)})")
            # An empty file inside a folder (a package's __init__.py) holds no document: skipped, not refused.
            found += [_input_file(p, f"{root.name}/{p.relative_to(root).as_posix()}") for p in members
                      if p.stat().st_size > 0]
        elif root.exists():
            if _kind(root) is None:
                raise SpecError(f"INPUT {raw}: unsupported file type {root.suffix!r}; give text "
                                f"({', '.join(TEXT_SUFFIXES)}), JSONL ({', '.join(JSON_SUFFIXES)}) or parquet files")
            found.append(_input_file(root, root.name))
        else:
            raise SpecError(f"INPUT {raw}: no such file or folder")
    names = [f.name for f in found]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise SpecError(f"INPUT: {duplicate} is given twice; each input may appear once")
    return found


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return None


def _input_file(path: Path, name: str) -> InputFile:
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise SpecError(f"INPUT {path}: cannot be read ({error.strerror or error})") from None
    if size == 0:
        raise SpecError(f"INPUT {path}: is empty")
    return InputFile(path=path, name=name, kind=_kind(path), size=size)


def check_utf8(path: Path, chunk_bytes: int = 1 << 24) -> None:
    """Refuse a file that is not UTF-8, naming the byte offset of the first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(chunk_bytes)
            held = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                offset = consumed - held + error.start
                raise SpecError(f"INPUT {path}: is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                                f"{offset}); fix the file or pass --errors replace") from None
            if not chunk:
                return
            consumed += len(chunk)


def check_inputs(files: list[InputFile], options: PrepareOptions) -> None:
    """Everything that can be refused before tokenising: encodings, parquet schemas, JSON text fields."""
    for f in files:
        if f.kind in ("text", "json") and options.errors == "strict":
            check_utf8(f.path)
        if f.kind == "parquet":
            import pyarrow.parquet as pq

            try:
                names = pq.ParquetFile(f.path).schema_arrow.names
            except Exception as error:  # noqa: BLE001 - any pyarrow failure means the file does not load
                raise SpecError(f"INPUT {f.path}: is not a readable parquet file ({error})") from None
            if options.text_field not in names:
                raise SpecError(f"INPUT {f.path}: has no column {options.text_field!r} (columns: {names}); "
                                "pass --text-field NAME")


def _is_validation(name: str, row: int, val_fraction: float) -> bool:
    digest = hashlib.sha256(f"{name}#{row}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64 < val_fraction


def iter_documents(files: list[InputFile], options: PrepareOptions, skip: int = 0
                   ) -> Iterator[tuple[list[str], list[bool]]]:
    """Batches of (texts, is_validation) in input order, read with `datasets` streaming; `skip` documents first."""
    import datasets

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    errors = "replace" if options.errors == "replace" else None
    texts: list[str] = []
    flags: list[bool] = []
    seen = 0
    for group in _groups(files):
        if group[0].kind == "text" and seen + len(group) <= skip:  # one document per text file: skip unread
            seen += len(group)
            continue
        stream = _load(group, options, errors)
        rows = [(f.name, 0) for f in group] if group[0].kind == "text" else None
        for row, example in enumerate(stream):
            seen += 1
            if seen <= skip:
                continue
            text = example.get(options.text_field)
            if not isinstance(text, str):
                where = group[0].path if rows is None else group[row].path
                raise SpecError(f"INPUT {where}: row {row} has no text field {options.text_field!r} "
                                f"(keys: {sorted(example)}); pass --text-field NAME")
            name, index = rows[row] if rows is not None else (group[0].name, row)
            texts.append(text)
            flags.append(_is_validation(name, index, options.val_fraction))
            if len(texts) == BATCH_DOCS:
                yield texts, flags
                texts, flags = [], []
    if texts:
        yield texts, flags


def _groups(files: list[InputFile]) -> list[list[InputFile]]:
    """Consecutive text files read by one `datasets` call (one row per file); JSON and parquet one call per file."""
    groups: list[list[InputFile]] = []
    for f in files:
        if f.kind == "text" and groups and groups[-1][0].kind == "text":
            groups[-1].append(f)
        else:
            groups.append([f])
    return groups


def _load(group: list[InputFile], options: PrepareOptions, errors: str | None):
    import datasets

    data_files = [str(f.path) for f in group]
    kind = group[0].kind
    if kind == "text":
        return datasets.load_dataset("text", data_files=data_files, sample_by="document", streaming=True,
                                     split="train", encoding_errors=errors)
    if kind == "json":
        return datasets.load_dataset("json", data_files=data_files, streaming=True, split="train",
                                     encoding_errors=errors)
    return datasets.load_dataset("parquet", data_files=data_files, streaming=True, split="train",
                                 columns=[options.text_field])


# ---------------------------------------------------------------- tokenizers

@dataclass(frozen=True)
class TokenizerInfo:
    kind: str
    """'byte' or 'hf' (a Hugging Face tokenizers file)."""
    spec: str
    vocab_size: int
    eos_id: int | None
    sha256: str
    json_text: str | None = None

    def manifest_entry(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "file": "tokenizer.json" if self.kind == "hf" else None,
                "sha256": self.sha256, "vocab_size": self.vocab_size, "eos_id": self.eos_id}


BYTE_TOKENIZER = TokenizerInfo(kind="byte", spec="byte", vocab_size=256, eos_id=None,
                               sha256=hashlib.sha256(b"proxyscale byte tokenizer: token = UTF-8 byte").hexdigest())


def tokenizer_from_file(path: Path, spec: str) -> TokenizerInfo:
    from tokenizers import Tokenizer

    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        text = path.read_text()
        tokenizer = Tokenizer.from_str(text)
    except Exception as error:  # noqa: BLE001 - any failure here means the file does not load
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SpecError(f"--tokenizer {spec}: does not load as a Hugging Face tokenizers file ({detail})") from None
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    eos = next((tokenizer.token_to_id(t) for t in EOS_CANDIDATES if tokenizer.token_to_id(t) is not None), None)
    return TokenizerInfo(kind="hf", spec=spec, vocab_size=vocab, eos_id=eos,
                         sha256=hashlib.sha256(text.encode()).hexdigest(), json_text=text)


def parse_train_vocab(spec: str) -> int:
    _, _, raw = spec.partition(":")
    if not raw.isdigit() or not 257 + len(EOS_CANDIDATES[:1]) <= int(raw) <= 1 << 20:
        raise SpecError(f"--tokenizer {spec}: train:VOCAB needs a vocabulary size from 258 to {1 << 20}, e.g. train:8192")
    return int(raw)


def train_bpe(files: list[InputFile], options: PrepareOptions, vocab_size: int, out: Path) -> TokenizerInfo:
    """A byte-level BPE trained by `tokenizers` on the training split's documents, saved to `out`."""
    from tokenizers import ByteLevelBPETokenizer

    def training_texts() -> Iterator[str]:
        for texts, flags in iter_documents(files, options):
            yield from (t for t, is_val in zip(texts, flags, strict=True) if not is_val)

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(training_texts(), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[EOS_CANDIDATES[0]], show_progress=sys.stderr.isatty())
    tmp = out.with_suffix(".tmp")
    bpe.save(str(tmp))
    os.replace(tmp, out)
    return tokenizer_from_file(out, options.tokenizer)


def pick_dtype(vocab_size: int, requested: str) -> str:
    if requested == "auto":
        return "uint16" if vocab_size <= DTYPE_LIMITS["uint16"] else "uint32"
    if vocab_size > DTYPE_LIMITS[requested]:
        raise SpecError(f"--dtype {requested}: holds token ids below {DTYPE_LIMITS[requested]}, but the tokenizer's "
                        f"vocabulary has {vocab_size} tokens; use --dtype uint32 or auto")
    return requested


_WORKER_TOKENIZER: Any = None


def _init_worker(kind: str, json_text: str | None, eos_id: int | None) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker; --workers sets the parallelism
    os.environ["RAYON_NUM_THREADS"] = "1"
    if kind == "hf":
        from tokenizers import Tokenizer

        _WORKER_TOKENIZER = (Tokenizer.from_str(json_text), eos_id)
    else:
        _WORKER_TOKENIZER = (None, None)


def encode_documents(job: tuple[list[str], list[bool], str]) -> tuple[np.ndarray, np.ndarray, int, int, int, int]:
    """Tokenise one batch: (train tokens, val tokens, train bytes, val bytes, train docs, val docs)."""
    texts, flags, dtype = job
    tokenizer, eos_id = _WORKER_TOKENIZER
    data = [t.encode("utf-8", "replace") for t in texts]
    if tokenizer is None:
        ids = [np.frombuffer(b, dtype=np.uint8) for b in data]
    else:
        encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        eos = [eos_id] if eos_id is not None else []
        ids = [np.array(e.ids + eos, dtype=dtype) for e in encode(texts, add_special_tokens=False)]
    out = []
    for split in (False, True):
        chosen = [i for i, is_val in enumerate(flags) if is_val == split]
        tokens = np.concatenate([ids[i] for i in chosen]).astype(dtype) if chosen else np.zeros(0, dtype)
        out.append((tokens, sum(len(data[i]) for i in chosen), len(chosen)))
    (train, train_bytes, train_docs), (val, val_bytes, val_docs) = out
    return train, val, train_bytes, val_bytes, train_docs, val_docs


# ---------------------------------------------------------------- the run

@dataclass(frozen=True)
class PrepareOutcome:
    directory: Path
    manifest: dict[str, Any]
    manifest_hash: str
    up_to_date: bool
    resumed_from_shards: int
    seconds: float


def manifest_hash(manifest: dict[str, Any]) -> str:
    from proxyscale.models.prepared import manifest_hash as hash_of

    return hash_of(manifest)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(files: list[InputFile], options: PrepareOptions, tokenizer_source: str) -> dict[str, Any]:
    return {"format": FORMAT, "inputs": [{"name": f.name, "kind": f.kind, "size": f.size, "sha256": file_sha256(f.path)}
                                         for f in files],
            "tokenizer": tokenizer_source, "val_fraction": options.val_fraction, "shard_tokens": options.shard_tokens,
            "dtype": options.dtype, "errors": options.errors, "text_field": options.text_field}


def _tokenizer_source(options: PrepareOptions) -> str:
    """What names the tokenizer before it exists: its spec, and for a file its hash."""
    spec = options.tokenizer
    if spec == "byte" or spec.startswith("train:"):
        return spec
    path = Path(spec)
    if not path.exists():
        raise SpecError(f"--tokenizer {spec}: no such file; give 'byte', 'train:VOCAB' or a tokenizer.json")
    target = path / "tokenizer.json" if path.is_dir() else path
    if not target.is_file():
        raise SpecError(f"--tokenizer {spec}: no tokenizer.json in that folder")
    return f"file:{hashlib.sha256(target.read_bytes()).hexdigest()}"


def prepare(inputs: list[str] | list[InputFile], out_dir: str | Path, options: PrepareOptions, *,
            on_progress: Callable[[int, int], None] | None = None,
            on_shard: Callable[[int], None] | None = None,
            overwrite: bool = False) -> PrepareOutcome:
    """Tokenise `inputs` into `out_dir` (see the module docstring); every bad input is refused before any work.

    inputs: paths (files or folders), or InputFile records already collected (stdlib_inputs()).

    on_progress(bytes done, bytes total) after every batch; on_shard(shards written so far) after every shard
    and its resume record are on disk.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    files = list(inputs) if inputs and isinstance(inputs[0], InputFile) else collect_inputs([str(i) for i in inputs])
    if options.tokenizer.startswith("train:"):
        parse_train_vocab(options.tokenizer)
    fingerprint = _fingerprint(files, options, _tokenizer_source(options))
    manifest_path = out / MANIFEST
    if manifest_path.exists() and not overwrite:
        existing = read_manifest(out)
        if existing.get("fingerprint") == fingerprint:
            return PrepareOutcome(out, existing, manifest_hash(existing), True, 0, time.perf_counter() - start)
        raise SpecError(f"-o {out}: already holds a corpus prepared from other inputs or options (its manifest "
                        "differs); runs planned on it would change under them: give a new -o DIR, or --overwrite")
    if options.tokenizer != "byte" and not options.tokenizer.startswith("train:"):
        tokenizer = tokenizer_from_file(Path(options.tokenizer), options.tokenizer)
        dtype = pick_dtype(tokenizer.vocab_size, options.dtype)
    check_inputs(files, options)
    out.mkdir(parents=True, exist_ok=True)
    state_dir = out / STATE_DIR
    state = _load_state(state_dir, fingerprint)
    if overwrite and manifest_path.exists():
        manifest_path.unlink()
    if state is None:
        _clear(out)
        state_dir.mkdir(exist_ok=True)
    if options.tokenizer == "byte":
        tokenizer = BYTE_TOKENIZER
    elif options.tokenizer.startswith("train:"):
        tokenizer_path = out / "tokenizer.json"
        if state is not None and tokenizer_path.exists() and state.get("tokenizer_sha256"):
            tokenizer = tokenizer_from_file(tokenizer_path, options.tokenizer)
        else:
            tokenizer = train_bpe(files, options, parse_train_vocab(options.tokenizer), tokenizer_path)
            _save_state(state_dir, {"fingerprint": fingerprint, "tokenizer_sha256": tokenizer.sha256, "documents": 0,
                                    "splits": {}}, {})
    else:
        given = Path(options.tokenizer) / "tokenizer.json" if Path(options.tokenizer).is_dir() else Path(options.tokenizer)
        if not (out / "tokenizer.json").exists() or not (out / "tokenizer.json").samefile(given):
            shutil.copyfile(given, out / "tokenizer.json")
    dtype = pick_dtype(tokenizer.vocab_size, options.dtype)

    writers = {split: SplitWriter(out, split, dtype, options.shard_tokens) for split in ("train", "val")}
    done_docs = 0
    resumed = 0
    if state is not None and state.get("splits"):
        done_docs = state["documents"]
        held = np.load(state_dir / "pending.npz")
        for split, writer in writers.items():
            saved = state["splits"][split]
            writer.shards, writer.documents, writer.bytes = saved["shards"], saved["documents"], saved["bytes"]
            rest = held[split].astype(dtype)
            writer.pending, writer.pending_tokens = ([rest] if rest.size else []), int(rest.size)
        resumed = sum(len(w.shards) for w in writers.values())

    total_bytes = sum(f.size for f in files)
    bytes_done = 0

    def consume(result: tuple, n_docs: int) -> None:
        nonlocal done_docs, bytes_done
        train, val, train_bytes, val_bytes, train_docs, val_docs = result
        written = writers["train"].add(train, train_bytes, train_docs) + writers["val"].add(val, val_bytes, val_docs)
        done_docs += n_docs
        bytes_done += train_bytes + val_bytes
        if written:
            _save_state(state_dir, {"fingerprint": fingerprint, "tokenizer_sha256": tokenizer.sha256,
                                    "documents": done_docs,
                                    "splits": {s: {"shards": w.shards, "documents": w.documents, "bytes": w.bytes}
                                               for s, w in writers.items()}},
                        {s: w.pending_array() for s, w in writers.items()})
            if on_shard is not None:
                on_shard(sum(len(w.shards) for w in writers.values()))
        if on_progress is not None:
            on_progress(min(bytes_done, total_bytes), total_bytes)

    batches = iter_documents(files, options, skip=done_docs)
    jobs = ((texts, flags, dtype) for texts, flags in batches)
    if options.workers == 1:
        _init_worker(tokenizer.kind, tokenizer.json_text, tokenizer.eos_id)
        for job in jobs:
            consume(encode_documents(job), len(job[0]))
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with context.Pool(options.workers, initializer=_init_worker,
                          initargs=(tokenizer.kind, tokenizer.json_text, tokenizer.eos_id)) as pool:
            # At most 2 batches per worker in flight, consumed in order: Pool.imap would read the whole input
            # ahead of the workers, and memory must stay bounded by the shard size, not the corpus.
            in_flight: deque = deque()
            for job in jobs:
                in_flight.append((pool.apply_async(encode_documents, (job,)), len(job[0])))
                if len(in_flight) >= 2 * options.workers:
                    result, n_docs = in_flight.popleft()
                    consume(result.get(), n_docs)
            while in_flight:
                result, n_docs = in_flight.popleft()
                consume(result.get(), n_docs)
    for writer in writers.values():
        writer.close()
    splits = {s: w.summary() for s, w in writers.items()}
    if splits["val"]["tokens"] == 0:
        raise SpecError(f"--val-fraction {options.val_fraction}: held out no documents of {splits['train']['documents']}; "
                        "raise it, or give more documents")
    if splits["train"]["tokens"] == 0:
        raise SpecError(f"--val-fraction {options.val_fraction}: left no training documents; lower it")
    manifest = {
        "format": FORMAT,
        "created_by": "proxyscale prepare-data",
        "tokenizer": tokenizer.manifest_entry(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype,
        "shard_tokens": options.shard_tokens,
        "split": {"by": "document", "val_fraction": options.val_fraction,
                  "rule": "validation when sha256('<input name>#<row>')[:8] as a little-endian fraction < val_fraction; "
                          "a text file is one document, a JSONL line or parquet row is one",
                  "document_separator": "eos" if tokenizer.eos_id is not None else "none"},
        "errors": options.errors,
        "text_field": options.text_field,
        "inputs": fingerprint["inputs"],
        "splits": splits,
        "fingerprint": fingerprint,
    }
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, manifest_path)
    shutil.rmtree(state_dir, ignore_errors=True)
    return PrepareOutcome(out, manifest, manifest_hash(manifest), False, resumed, time.perf_counter() - start)


def _load_state(state_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    path = state_dir / "state.json"
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    if state.get("fingerprint") != fingerprint:
        return None
    for split in state.get("splits", {}).values():  # every shard it lists must still be whole
        for shard in split["shards"]:
            file = state_dir.parent / shard["file"]
            if not file.exists() or file.stat().st_size == 0:
                return None
    return state


def _save_state(state_dir: Path, state: dict[str, Any], pending: dict[str, np.ndarray]) -> None:
    """The pending tokens first, then the record that names them: a crash between the two resumes from the last."""
    if pending:
        tmp = state_dir / "pending.tmp.npz"
        np.savez(tmp, **pending)
        os.replace(tmp, state_dir / "pending.npz")
    tmp = state_dir / "state.tmp.json"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, state_dir / "state.json")


def _clear(out: Path) -> None:
    """A fresh start: shards and state of an earlier, different preparation are removed."""
    for path in list(out.glob("train_*.bin")) + list(out.glob("val_*.bin")) + list(out.glob("*.tmp")):
        path.unlink()
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)


def read_manifest(directory: str | Path, key: str = "-o") -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise SpecError(f"{key}={directory}: no {MANIFEST} there; make one with "
                        f"`proxyscale prepare-data INPUT... -o {directory}`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SpecError(f"{key}={directory}: {MANIFEST} does not load ({error})") from None
    if manifest.get("format") != FORMAT:
        raise SpecError(f"{key}={directory}: {MANIFEST} is not a proxyscale prepare-data manifest "
                        f"(format {manifest.get('format')!r}, expected {FORMAT!r})")
    return manifest


def describe(manifest: dict[str, Any]) -> str:
    """One line per split for the command's summary."""
    lines = []
    for split, info in manifest["splits"].items():
        bpt = info["bytes_per_token"]
        lines.append(f"  {split:5s} {info['documents']:>9,} documents  {info['bytes']:>14,} bytes  {info['tokens']:>13,} tokens "
                     f"in {len(info['shards'])} shard(s)  {bpt:.4f} bytes/token" if bpt else f"  {split}: empty")
    return "\n".join(lines)


def summary_line(outcome: PrepareOutcome) -> str:
    m = outcome.manifest
    tokens = sum(s["tokens"] for s in m["splits"].values())
    return (f"{outcome.directory}: {tokens:,} tokens of {m['tokenizer']['spec']} (vocab {m['vocab_size']}, {m['dtype']}), "
            f"manifest {outcome.manifest_hash[:12]}")


def stdlib_inputs() -> list[InputFile]:
    """The standard library's non-empty .py and .txt files, named by their path below it: the demo's text."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(n for n in subdirs if n not in ("site-packages", "__pycache__", "dist-packages"))
        for name in sorted(names):
            path = Path(directory) / name
            if path.suffix in (".py", ".txt") and path.is_file() and path.stat().st_size > 0:
                files.append(InputFile(path=path, name=path.relative_to(root).as_posix(), kind="text",
                                       size=path.stat().st_size))
    return sorted(files, key=lambda f: f.name)


def resolve_prepared_data(plain: dict[str, Any]) -> dict[str, Any]:
    """At the CLI boundary, data=prepared reads DIR/manifest.json into the spec: vocab_size, dtype, the manifest's
    hash (part of the run id) and the validation split's size; model.vocab_size follows the manifest.

    data.build (a sweep's own corpus, e.g. sweeps/demo_bpe.yaml) prepares the corpus on first use:
    {inputs: stdlib | [PATH, ...], tokenizer, val_fraction, shard_tokens, errors, workers}; data.path null puts it
    in the proxyscale cache ($PROXYSCALE_CACHE or ~/.cache/proxyscale), keyed by the Python version and options.
    """
    data = plain.get("data") or {}
    build = data.pop("build", None)
    if data.get("kind") != "prepared":
        return plain
    if build:
        data["path"] = str(_build_on_first_use(build, data.get("path")))
    if not data.get("path"):
        raise SpecError("data.path: is required when data.kind='prepared': a directory made by "
                        "`proxyscale prepare-data INPUT... -o DIR`")
    from proxyscale.models.prepared import manifest_hash as hash_of
    from proxyscale.models.prepared import read_manifest as read_for_data

    manifest = read_for_data(data["path"])
    if manifest.get("format") != FORMAT:
        raise SpecError(f"data.path={data['path']}: {MANIFEST} is not a proxyscale prepare-data manifest "
                        f"(format {manifest.get('format')!r}, expected {FORMAT!r})")
    data.update(vocab_size=manifest["vocab_size"], dtype=manifest["dtype"], manifest_hash=hash_of(manifest),
                val_tokens=manifest["splits"]["val"]["tokens"])
    plain.setdefault("model", {})["vocab_size"] = manifest["vocab_size"]
    return plain


BUILD_KEYS = ("inputs", "tokenizer", "val_fraction", "shard_tokens", "errors", "workers")


def _build_on_first_use(build: dict[str, Any], path: str | None) -> Path:
    unknown = sorted(set(build) - set(BUILD_KEYS))
    if unknown:
        raise SpecError(f"data.build.{unknown[0]}: unknown key; allowed: {list(BUILD_KEYS)}")
    inputs = build.get("inputs")
    options = PrepareOptions(**{k: build[k] for k in BUILD_KEYS[1:] if build.get(k) is not None})
    if inputs == "stdlib":
        files = stdlib_inputs()
        label = f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}"
    elif isinstance(inputs, list) and inputs:
        files = collect_inputs([str(i) for i in inputs])
        label = "inputs"
    else:
        raise SpecError(f"data.build.inputs: must be 'stdlib' or a list of files and folders, got {inputs!r}")
    if path is None:
        from proxyscale.models.data import cache_dir

        key = hashlib.sha256(json.dumps([label, [(f.name, f.size) for f in files], asdict(options)],
                                        sort_keys=True).encode()).hexdigest()[:12]
        path = str(cache_dir() / "prepared" / f"{label}-{options.tokenizer.replace(':', '')}-{key}")
    if not (Path(path) / MANIFEST).exists():
        print(f"data.build: preparing {len(files)} {label} files into {path} (first use; later runs reuse it)",
              file=sys.stderr, flush=True)
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        outcome = prepare(files, path, options)
        print(summary_line(outcome), file=sys.stderr, flush=True)
    return Path(path)
