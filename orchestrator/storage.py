"""Where runs keep their checkpoints: the sweep directory (default) or `cluster.storage`, a URI every node reaches.

With `cluster.storage` null, checkpoints live in SWEEP_DIR/checkpoints/RUN_ID/ and every worker reads and
writes that path: right on one machine, or on nodes that share a filesystem mounted at the same path.

With a URI (s3://bucket/prefix, gs://bucket/prefix, file:///mount/path, or a plain path on a shared
mount), checkpoints live in STORAGE/SWEEP/checkpoints/RUN_ID/. A worker then trains against a scratch
directory of its own on its node's disk (fresh for each attempt, removed after it), downloads what the run
starts from (its own checkpoint.pt to resume, or its parent's step_<S>.pt for a fork) and uploads every
checkpoint it writes. Nothing a run needs is then on any node's disk but the one it runs on.

pyarrow.fs opens the URIs; credentials come from each node's environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for S3-compatible servers; Google's application default
credentials for gs://), never from the URI, since the URI is written to the sweep's config.yaml.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxyscale.models.spec import SpecError

SCHEMES = ("file", "s3", "gs")
"""The URI schemes cluster.storage accepts (besides a plain path); pyarrow.fs opens each."""

SCRATCH_ENV = "PROXYSCALE_SCRATCH"
"""A node-local directory for a worker's scratch copies (default: the system's temporary directory)."""


def check_storage(value: Any) -> str | None:
    """cluster.storage checked (a plain path made absolute), or a SpecError line naming the key and the schemes."""
    if value is None:
        return None
    allowed = "use null (the sweep directory), a path on a shared mount, file://, s3:// or gs://"
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"cluster.storage: must be a path or a URI, got {value!r}; {allowed}")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if "://" not in value or len(scheme) == 1:  # a plain path: absolute, as workers run in other directories
        return str(Path(value).expanduser().resolve())
    if scheme not in SCHEMES:
        raise SpecError(f"cluster.storage: scheme {scheme!r} ({value}) is not supported; {allowed}")
    if parts.username or parts.password:
        raise SpecError("cluster.storage: credentials in the URI would be written to the sweep's config.yaml and logs; "
                        "give them to every node through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...) "
                        "and drop them from the URI")
    if scheme in ("s3", "gs") and not parts.netloc:
        raise SpecError(f"cluster.storage: {value!r} names no bucket; write {scheme}://BUCKET/PREFIX")
    return value


def _open(uri: str):
    """(pyarrow filesystem, path inside it) for a URI or a plain path."""
    from pyarrow import fs

    if "://" not in uri:
        return fs.LocalFileSystem(), str(Path(uri).resolve())
    filesystem, path = fs.FileSystem.from_uri(uri)
    return filesystem, path.rstrip("/")


@dataclass(frozen=True)
class CheckpointStore:
    """The checkpoints of one sweep: RUN_ID/checkpoint.pt and RUN_ID/step_<S>.pt under one root."""

    storage: str | None
    """cluster.storage: None for the sweep directory itself."""
    sweep_dir: str
    sweep: str

    @property
    def remote(self) -> bool:
        """True when workers copy checkpoints to and from `storage` instead of sharing the sweep directory."""
        return self.storage is not None

    @property
    def location(self) -> str:
        """Where the checkpoints are, for messages (never holds credentials: check_storage refuses them)."""
        if self.storage is None:
            return str(Path(self.sweep_dir) / "checkpoints")
        return f"{self.storage.split('?')[0].rstrip('/')}/{self.sweep}/checkpoints"

    def _fs(self):
        if self.storage is None:
            from pyarrow import fs

            return fs.LocalFileSystem(), str(Path(self.sweep_dir).resolve() / "checkpoints")
        filesystem, base = _open(self.storage)
        return filesystem, f"{base}/{self.sweep}/checkpoints"

    def local_dir(self, run_id: str) -> Path:
        """The sweep directory's folder of a run (the default, shared-path mode only)."""
        return Path(self.sweep_dir) / "checkpoints" / run_id

    def names(self, run_id: str) -> list[str]:
        """The checkpoint files a run has in the store."""
        from pyarrow import fs

        filesystem, root = self._fs()
        infos = filesystem.get_file_info(fs.FileSelector(f"{root}/{run_id}", allow_not_found=True))
        return sorted(info.base_name for info in infos if info.type == fs.FileType.File and info.base_name.endswith(".pt"))

    def exists(self, run_id: str, name: str) -> bool:
        from pyarrow import fs

        filesystem, root = self._fs()
        return filesystem.get_file_info(f"{root}/{run_id}/{name}").type == fs.FileType.File

    def upload(self, path: Path, run_id: str) -> None:
        """Copy a checkpoint file written on this node into the store (readers never see a partial file)."""
        filesystem, root = self._fs()
        folder = f"{root}/{run_id}"
        if filesystem.type_name == "local":  # an object store has no folders (a marker object would outlive the files)
            filesystem.create_dir(folder, recursive=True)
        target = f"{folder}/{path.name}"
        # A local or mounted target is written beside and renamed; an object store's put is atomic already.
        partial = f"{target}.{uuid.uuid4().hex[:8]}.part" if filesystem.type_name == "local" else target
        with open(path, "rb") as source, filesystem.open_output_stream(partial) as sink:
            shutil.copyfileobj(source, sink, length=1 << 22)
        if partial != target:
            filesystem.move(partial, target)

    def download(self, run_id: str, name: str, destination: Path) -> bool:
        """Copy RUN_ID/NAME from the store to `destination`; False when the store has no such file."""
        if not self.exists(run_id, name):
            return False
        filesystem, root = self._fs()
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f"{destination.name}.{uuid.uuid4().hex[:8]}.part")
        with filesystem.open_input_stream(f"{root}/{run_id}/{name}") as source, open(partial, "wb") as sink:
            shutil.copyfileobj(source, sink, length=1 << 22)
        os.replace(partial, destination)
        return True

    def remove(self, run_id: str, name: str) -> None:
        """Delete one checkpoint, and the run's folder with its last one (pyarrow's S3 leaves a folder marker)."""
        filesystem, root = self._fs()
        with contextlib.suppress(FileNotFoundError, OSError):
            filesystem.delete_file(f"{root}/{run_id}/{name}")
        self.remove_run_if_empty(run_id)

    def remove_run_if_empty(self, run_id: str) -> None:
        if self.names(run_id):
            return
        filesystem, root = self._fs()
        with contextlib.suppress(FileNotFoundError, OSError):
            filesystem.delete_dir(f"{root}/{run_id}")


@contextlib.contextmanager
def scratch_dir(run_id: str) -> Iterator[Path]:
    """A fresh node-local directory for one attempt of one run, removed when it ends.

    Fresh per attempt, so a run can only start from what the store holds, never from a file an earlier
    attempt or another run left on this node's disk.
    """
    base = Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()) / "proxyscale-scratch"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{run_id}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
