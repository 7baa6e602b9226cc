"""deploy/kuberay/rayjob.yaml against KubeRay's RayJob schema, and the recipe's security and command checked.

The schema is the openAPIV3Schema of KubeRay's RayJob CRD (v1), vendored in tests/data/kuberay/ (see its
SOURCE.md). jsonschema checks types, enums and required fields; since Kubernetes silently prunes fields a
CRD does not declare, unknown fields are checked as `kubectl apply --validate=strict` would.
"""

from __future__ import annotations

import gzip
import json
import re
import signal

import pytest

from tests.conftest import ROOT

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

MANIFEST = ROOT / "deploy" / "kuberay" / "rayjob.yaml"
DOCKERFILE = ROOT / "deploy" / "kuberay" / "Dockerfile"
SCHEMA = ROOT / "tests" / "data" / "kuberay" / "ray.io_rayjobs.v1.openapi.json.gz"


@pytest.fixture(scope="module")
def schema() -> dict:
    with gzip.open(SCHEMA, "rt") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def rayjob() -> dict:
    [document] = list(yaml.safe_load_all(MANIFEST.read_text()))
    return document


def unknown_fields(value, node: dict, path: str = "") -> list[str]:
    """Paths of the fields the schema does not declare (what Kubernetes would drop without a word)."""
    found = []
    if isinstance(value, dict):
        if "properties" in node:
            for key, item in value.items():
                if key in node["properties"]:
                    found += unknown_fields(item, node["properties"][key], f"{path}.{key}")
                elif not node.get("additionalProperties") and not node.get("x-kubernetes-preserve-unknown-fields"):
                    found.append(f"{path}.{key}")
        elif isinstance(node.get("additionalProperties"), dict):
            for key, item in value.items():
                found += unknown_fields(item, node["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, node["items"], f"{path}[{index}]")
    return found


def problems(document: dict, schema: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]
    return errors + [f"{path}: unknown field" for path in unknown_fields(document, schema)]


def _containers(rayjob: dict) -> list[dict]:
    spec = rayjob["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


def test_the_rayjob_manifest_is_valid_against_kuberays_schema(rayjob, schema):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert problems(rayjob, schema) == []


def test_the_schema_check_catches_a_misspelled_field_and_a_wrong_type(rayjob, schema):
    import copy

    broken = copy.deepcopy(rayjob)
    head = broken["spec"]["rayClusterSpec"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")  # a typo Kubernetes would prune silently
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    broken["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "password"
    found = problems(broken, schema)
    assert ".spec.rayClusterSpec.headGroupSpec.rayStartParam: unknown field" in found
    assert any(p.startswith("spec.rayClusterSpec.workerGroupSpecs.0.replicas:") for p in found), found
    assert any(p.startswith("spec.rayClusterSpec.authOptions.mode:") for p in found), found


def test_token_auth_is_on_and_the_head_is_not_exposed(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token" and cluster["authOptions"]["secretName"]
    head = cluster["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    assert "0.0.0.0" not in MANIFEST.read_text().split("apiVersion", 1)[1]


def test_every_secret_comes_from_a_secret_never_from_the_manifest(rayjob):
    sensitive = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
    containers = _containers(rayjob)
    names = set()
    for container in containers:
        for variable in container.get("env", []):
            if sensitive.search(variable["name"]):
                names.add(variable["name"])
                assert "value" not in variable, variable["name"]
                assert variable["valueFrom"]["secretKeyRef"]["name"], variable["name"]
    assert {"WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names
    assert "RAY_AUTH_TOKEN" not in MANIFEST.read_text()  # the operator reads it from authOptions' Secret


def test_the_entrypoint_is_a_launch_this_version_of_proxyscale_accepts(rayjob, tmp_path, capsys):
    """The manifest's command, run here with --dry-run: its sweep, keys and storage URI must all be valid."""
    from proxyscale.orchestrator.cli import main

    words = rayjob["spec"]["entrypoint"].split()
    assert words[:2] == ["proxyscale", "launch"] and "cluster.address=auto" in words
    assert any(w.startswith("cluster.storage=s3://") for w in words)  # pods share no disk
    overrides = [w if not w.startswith("sweep_dir=") else f"sweep_dir={tmp_path / 'runs'}" for w in words[2:]]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main(["launch", *overrides, "--dry-run"])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "dry run: nothing started" in captured.out


def test_the_dockerfile_copies_only_paths_that_exist_and_bakes_in_no_secret():
    text = DOCKERFILE.read_text()
    sources = [part for line in text.splitlines() if line.startswith("COPY ") for part in line.split()[1:-1]]
    assert sources and all((ROOT / source).exists() for source in sources), sources
    assert not re.search(r"^\s*(ENV|ARG)\s+\S*(KEY|TOKEN|SECRET|PASSWORD)", text, re.MULTILINE | re.IGNORECASE)
    assert re.search(r"^ARG BASE=python:3\.1[1-9]", text, re.MULTILINE)  # CPU by default; CUDA by build argument
