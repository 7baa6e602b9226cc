"""Read a W&B offline run file (run-<id>.wandb) back: a LevelDB-style log of protobuf records.

wandb 0.2x+ no longer ships a Python reader, so tests parse the documented framing themselves:
a 7-byte file header (":W&B", magic, version), then 32 KiB blocks of chunks, each with a 7-byte
header (crc32, little-endian length, type 1 full / 2 first / 3 middle / 4 last).
"""

from __future__ import annotations

import json
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pending, records = HEADER, b"", []
    while position + HEADER <= len(data):
        room = BLOCK - position % BLOCK
        if room < HEADER:
            position += room
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        chunk = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    parsed = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


def run_contents(path: Path) -> dict:
    """{'run_id', 'group', 'config': {...}, 'history': [{key: value}, ...]} of one offline run file."""
    contents = {"run_id": None, "group": None, "config": {}, "history": []}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            contents["run_id"], contents["group"] = record.run.run_id, record.run.run_group
            for item in record.run.config.update:
                contents["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                contents["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            contents["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                        for item in record.history.item})
    return contents
