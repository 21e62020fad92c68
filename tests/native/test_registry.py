"""The model registry on real components: SQLite, the artifact store, fsspec over a local
HTTP server and a moto S3 server, archive unpacking, and the graph compiler.

Every refused registration is checked to leave the registry exactly as it was: the same rows and
the same files under the home (no new artifact, no temporary file).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import io
import json
import os
import pickle
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from phi_engine.errors import (
    ConflictError,
    IntegrityError,
    InvalidRequestError,
    NotFoundError,
    PhiEngineError,
    UnsupportedError,
)
from phi_engine.registry import MIGRATIONS, Database, ModelRecord, Registry

# ---------------------------------------------------------------------------------------------
# Models, archives and servers


def make_model(op: str = "Add", scale: float = 1.0) -> onnx.ModelProto:
    """y = x @ w + b, x float32 [N, 4] with N symbolic."""
    w = numpy_helper.from_array(np.full((4, 3), scale, np.float32), "w")
    b = numpy_helper.from_array(np.ones(3, np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node(op, ["h", "b"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def model_bytes(scale: float = 1.0) -> bytes:
    data: bytes = make_model(scale=scale).SerializeToString()
    return data


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_info(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_info(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1, and its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh bucket on the moto server; the registry finds it through AWS_ENDPOINT_URL."""
    boto3 = pytest.importorskip("boto3")
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    name = f"models-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=name)
    try:
        yield client, name
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# The registry under test, and the "nothing changed" check


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def db(home: Path) -> Iterator[Database]:
    database = Database(home / "registry.db")
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def registry(home: Path, db: Database) -> Registry:
    return Registry(home, db)


def snapshot(registry: Registry) -> tuple[list[Any], list[Any], list[tuple[str, int]]]:
    """Every row, and every file and directory (but the database's own) under the home."""
    models = [tuple(r) for r in registry.db.query("SELECT * FROM models ORDER BY model_id")]
    deployments = [tuple(r) for r in registry.db.query("SELECT * FROM deployments")]
    files = sorted(
        (p.relative_to(registry.home).as_posix(), p.stat().st_size if p.is_file() else -1)
        for p in registry.home.rglob("*")
        if not p.name.startswith("registry.db")
    )
    return models, deployments, files


def refused(
    registry: Registry, error: type[PhiEngineError], field: str | None, **kwargs: Any
) -> PhiEngineError:
    """Register with ``kwargs``, expect ``error`` naming ``field``, and check nothing changed."""
    args = {"model_name": "m", "framework": "onnx", "version": "1", **kwargs}
    before = snapshot(registry)
    with pytest.raises(error) as caught:
        registry.register(**args)
    assert caught.value.field == field, caught.value
    assert snapshot(registry) == before
    return caught.value


def artifacts(registry: Registry) -> list[Path]:
    return sorted(p for p in (registry.home / "artifacts").rglob("*") if p.is_file())


def check_record(record: ModelRecord, data: bytes, url: str) -> None:
    assert record.model_id.startswith("mdl_") and len(record.model_id) == 20
    int(record.model_id[4:], 16)
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.size_bytes == len(data)
    assert record.artifact_path.is_absolute()
    assert record.artifact_path.read_bytes() == data
    expected = f"artifacts/sha256/{record.sha256[:2]}/{record.sha256}.onnx"
    assert record.artifact_path.as_posix().endswith(expected)
    assert record.source_url == url
    assert record.inputs == {"x": {"dtype": "float32", "shape": ["N", 4]}}
    assert record.outputs == {"y": {"dtype": "float32", "shape": ["N", 3]}}


# ---------------------------------------------------------------------------------------------
# Registering from each scheme, and reading back


def test_register_local_path_and_read_back(registry: Registry, tmp_path: Path) -> None:
    data = model_bytes()
    source = write(tmp_path / "src" / "model.onnx", data)
    record = registry.register(
        "tiny",
        "ONNX",
        "1.0.0",
        str(source),
        model_card={"owner": "team-a", "risk_class": "minimal"},
        metadata={"accuracy": 0.9},
    )
    check_record(record, data, str(source))
    assert record.framework == "onnx"
    assert record.model_card == {"owner": "team-a", "risk_class": "minimal"}
    assert record.metadata == {"accuracy": 0.9}
    assert registry.get(record.model_id) == record
    assert registry.find("tiny", "1.0.0") == record
    assert registry.list() == [record] == registry.list("tiny")
    assert registry.list("other") == []
    assert json.loads(json.dumps(record.to_dict()))["model_id"] == record.model_id
    # The store holds a copy: changing the source changes nothing registered.
    source.write_bytes(b"changed")
    assert registry.verified_bytes(record.model_id) == data


def test_register_file_url(registry: Registry, tmp_path: Path) -> None:
    data = model_bytes()
    url = write(tmp_path / "model.onnx", data).as_uri()
    record = registry.register("tiny", "pytorch", "2", url, progress=True)
    check_record(record, data, url)
    assert record.framework == "pytorch"


def test_register_http(registry: Registry, http_dir: tuple[Path, str]) -> None:
    root, base = http_dir
    data = model_bytes()
    write(root / "models" / "model.onnx", data)
    record = registry.register("tiny", "onnx", "1", f"{base}/models/model.onnx")
    check_record(record, data, f"{base}/models/model.onnx")
    refused(registry, InvalidRequestError, "storage_url", storage_url=f"{base}/missing.onnx")
    error = refused(
        registry,
        InvalidRequestError,
        "storage_url",
        storage_url=f"{base}/models/model.onnx",
        version="2",
        max_bytes=16,
    )
    assert "max_bytes=16" in error.message


def test_register_s3(registry: Registry, s3_bucket: Any) -> None:
    client, bucket = s3_bucket
    data = model_bytes()
    client.put_object(Bucket=bucket, Key="models/tiny.onnx", Body=data)
    url = f"s3://{bucket}/models/tiny.onnx"
    record = registry.register("tiny", "tensorflow", "1", url)
    check_record(record, data, url)
    assert registry.find("tiny", "1").framework == "tensorflow"


def test_list_is_oldest_first_and_filters_by_name(registry: Registry, tmp_path: Path) -> None:
    source = write(tmp_path / "m.onnx", model_bytes())
    ids = [
        registry.register(name, "onnx", version, str(source)).model_id
        for name, version in [("a", "1"), ("b", "1"), ("a", "2")]
    ]
    assert [r.model_id for r in registry.list()] == ids
    assert [r.version for r in registry.list("a")] == ["1", "2"]
    # Identical bytes are stored once.
    assert len(artifacts(registry)) == 1


# ---------------------------------------------------------------------------------------------
# Lookups, duplicates, deletion


def test_duplicate_name_and_version_conflicts(registry: Registry, tmp_path: Path) -> None:
    source = write(tmp_path / "m.onnx", model_bytes())
    registry.register("tiny", "onnx", "1", str(source))
    other = write(tmp_path / "other.onnx", model_bytes(scale=2.0))
    refused(registry, ConflictError, "version", model_name="tiny", storage_url=str(other))


def test_unknown_ids_are_not_found(registry: Registry) -> None:
    for call in (registry.get, registry.delete, registry.verified_bytes, registry.manifest):
        with pytest.raises(NotFoundError) as caught:
            call("mdl_0000000000000000")
        assert caught.value.field == "model_id"
    with pytest.raises(NotFoundError):
        registry.find("nope", "1")


def test_delete_removes_row_and_unshared_artifact(registry: Registry, tmp_path: Path) -> None:
    source = write(tmp_path / "m.onnx", model_bytes())
    first = registry.register("tiny", "onnx", "1", str(source))
    second = registry.register("tiny", "onnx", "2", str(source))
    registry.delete(first.model_id)
    with pytest.raises(NotFoundError):
        registry.get(first.model_id)
    # The second version has the same bytes: the artifact stays.
    assert registry.verified_bytes(second.model_id) == second.artifact_path.read_bytes()
    registry.delete(second.model_id)
    assert registry.list() == []
    assert artifacts(registry) == []


def insert_deployment(db: Database, deployment_id: str, model_id: str, **columns: Any) -> None:
    row = {"candidate_model_id": None, "status": "active", "spec": "{}", **columns}
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO deployments VALUES (?, ?, ?, ?, ?, 1.0, 1.0)",
            (deployment_id, model_id, row["candidate_model_id"], row["status"], row["spec"]),
        )


def test_delete_refused_while_a_deployment_uses_the_model(
    registry: Registry, db: Database, tmp_path: Path
) -> None:
    old = registry.register("tiny", "onnx", "1", str(write(tmp_path / "a.onnx", model_bytes())))
    new = registry.register("tiny", "onnx", "2", str(write(tmp_path / "b.onnx", model_bytes(2))))
    insert_deployment(db, "dep_live", old.model_id, candidate_model_id=new.model_id)
    for model_id in (old.model_id, new.model_id):  # as the model and as the canary candidate
        before = snapshot(registry)
        with pytest.raises(ConflictError, match="dep_live") as caught:
            registry.delete(model_id)
        assert caught.value.field == "model_id"
        assert snapshot(registry) == before
    with db.transaction() as conn:
        conn.execute("UPDATE deployments SET status = 'stopped' WHERE deployment_id = 'dep_live'")
    registry.delete(new.model_id)
    assert db.query("SELECT candidate_model_id FROM deployments")[0][0] is None
    registry.delete(old.model_id)
    assert registry.list() == []
    assert artifacts(registry) == []


# ---------------------------------------------------------------------------------------------
# Refusals: arguments, sources, integrity, formats


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model_name": ""}, "model_name"),
        ({"model_name": ".hidden"}, "model_name"),
        ({"model_name": "a/b"}, "model_name"),
        ({"model_name": "x" * 129}, "model_name"),
        ({"version": "1 0"}, "version"),
        ({"version": "v" * 65}, "version"),
        ({"framework": "caffe"}, "framework"),
        ({"storage_url": ""}, "storage_url"),
        ({"storage_url": "foo://bucket/m.onnx"}, "storage_url"),
        ({"storage_url": "zip://m.onnx::file:///tmp/a.zip"}, "storage_url"),
        ({"sha256": "abc"}, "sha256"),
        ({"model_card": {"when": object()}}, "model_card"),
        ({"max_bytes": 0}, "max_bytes"),
    ],
)
def test_invalid_arguments_refused(
    registry: Registry, tmp_path: Path, kwargs: dict[str, Any], field: str
) -> None:
    source = write(tmp_path / "m.onnx", model_bytes())
    error = refused(registry, InvalidRequestError, field, **{"storage_url": str(source), **kwargs})
    if field == "framework":
        assert "onnx, pytorch, tensorflow, sklearn, jax" in error.message


def test_missing_scheme_package_names_it(registry: Registry) -> None:
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed")
    error = refused(registry, UnsupportedError, "storage_url", storage_url="gs://b/m.onnx")
    assert "gcsfs" in error.message


def test_missing_file_and_unreachable_host_refused(registry: Registry, tmp_path: Path) -> None:
    error = refused(
        registry, InvalidRequestError, "storage_url", storage_url=str(tmp_path / "no.onnx")
    )
    assert "no file" in error.message
    refused(registry, InvalidRequestError, "storage_url", storage_url=str(tmp_path))
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = refused(
        registry,
        InvalidRequestError,
        "storage_url",
        storage_url=f"http://user:secret@127.0.0.1:{port}/m.onnx?token=abc",
    )
    assert "could not fetch" in error.message and "connection refused" in error.message
    assert "secret" not in error.message and "token" not in error.message


def test_sha256_pin(registry: Registry, tmp_path: Path) -> None:
    data = model_bytes()
    source = str(write(tmp_path / "m.onnx", data))
    digest = hashlib.sha256(data).hexdigest()
    refused(registry, IntegrityError, "sha256", storage_url=source, sha256="0" * 64)
    record = registry.register("m", "onnx", "1", source, sha256=digest.upper())
    assert record.sha256 == digest


def test_models_that_cannot_run_are_refused(registry: Registry, tmp_path: Path) -> None:
    garbage = write(tmp_path / "garbage.onnx", b"this is not a protobuf \xff\xfe" * 8)
    error = refused(registry, InvalidRequestError, "storage_url", storage_url=str(garbage))
    assert "not a valid ONNX model" in error.message
    model = make_model()
    model.graph.node[1].op_type = "NoSuchOp"
    unsupported = write(tmp_path / "u.onnx", model.SerializeToString())
    error = refused(registry, UnsupportedError, "storage_url", storage_url=str(unsupported))
    assert "NoSuchOp" in error.message


def test_pickles_refused(registry: Registry, tmp_path: Path) -> None:
    payload = pickle.dumps({"weights": [1.0, 2.0]}, protocol=4)
    for name in ("model.pt", "model.pth", "model.pkl", "model.joblib"):
        url = str(write(tmp_path / name, payload))
        error = refused(registry, UnsupportedError, "storage_url", storage_url=url)
        assert "export the model to ONNX" in error.message
    # Bytes are sniffed too, whatever the name says.
    disguised = write(tmp_path / "model.onnx", payload)
    refused(registry, UnsupportedError, "storage_url", storage_url=str(disguised))
    checkpoint = zip_with(tmp_path / "ckpt.zip", {"archive/data.pkl": payload})
    refused(registry, UnsupportedError, "storage_url", storage_url=str(checkpoint))


class _System:
    """Pickles as os.system(...); pickling it only writes bytes, nothing here loads them."""

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, ("echo pwned",))


def _u(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


# Hand-written streams: STACK_GLOBAL fed through the memo, a dotted name through an allowed
# module, protocol 0 GLOBAL, and a truncated stream.
_MALICIOUS = {
    "reduce": pickle.dumps(_System(), protocol=4),
    "memo": b"\x80\x04"
    + _u("os")
    + b"\x94"
    + _u("system")
    + b"\x94"
    + b"h\x00h\x01\x93"
    + _u("id")
    + b"\x85R.",
    "dotted": b"\x80\x04"
    + _u("numpy")
    + _u("testing._private.utils.os.system")
    + b"\x93"
    + _u("id")
    + b"\x85R.",
    "exec": b"cbuiltins\nexec\n(Vprint(1)\ntR.",
    "truncated": pickle.dumps(_System(), protocol=2)[:-5],
    # Imports that reach code: each a GLOBAL and a call, protocol 0.
    "marshal": b"cmarshal\nloads\n(C\x00tR.",
    "import_module": b"cimportlib\nimport_module\n(Vos\ntR.",
    "function_type": b"ctypes\nFunctionType\n(NNtR.",
    "dunder_import": b"cbuiltins\n__import__\n(Vos\ntR.",
    # functools.partial(functools.partial(os.system, "echo"), "pwned"), as pickle writes it.
    "partial": pickle.dumps(
        functools.partial(functools.partial(os.system, "echo"), "pwned"), protocol=4
    ),
    # BINPUT/BINGET: the import's name taken back out of the memo.
    "binput": b"\x80\x02cposix\nsystem\nq\x01h\x01(Vid\ntR.",
}


@pytest.mark.parametrize("kind", sorted(_MALICIOUS))
def test_pickles_hidden_in_archives_are_refused(
    registry: Registry, tmp_path: Path, kind: str
) -> None:
    """A valid model beside a pickle under an innocent name, nested or not: refused at register
    (the scanner reads every member by content), and nothing is stored."""
    payload = _MALICIOUS[kind]
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("notes/weights.txt", payload)
    cases = {
        "flat.zip": zip_with(
            tmp_path / f"{kind}-flat.zip", {"model.onnx": model_bytes(), "labels.txt": payload}
        ),
        "nested.zip": zip_with(
            tmp_path / f"{kind}-nested.zip",
            {"model.onnx": model_bytes(), "extra.dat": inner.getvalue()},
        ),
        "tar.gz": tar_with(
            tmp_path / f"{kind}.tar.gz",
            [file_info("m/model.onnx", model_bytes()), file_info("m/vocab.bin", payload)],
        ),
    }
    for archive in cases.values():
        error = refused(registry, UnsupportedError, "storage_url", storage_url=str(archive))
        assert "pickle" in error.message
    # The same archive without the pickle registers.
    clean = zip_with(tmp_path / "clean.zip", {"model.onnx": model_bytes(), "labels.txt": b"a b"})
    assert registry.register("m", "onnx", "1", str(clean)).framework == "onnx"


# ---------------------------------------------------------------------------------------------
# Archives


def test_archives_hold_one_model(registry: Registry, tmp_path: Path) -> None:
    data = model_bytes()
    targz = tar_with(
        tmp_path / "m.tar.gz", [file_info("pkg/model.onnx", data), file_info("README", b"hi")]
    )
    digest = hashlib.sha256(targz.read_bytes()).hexdigest()
    record = registry.register("m", "onnx", "1", str(targz), sha256=digest)
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert registry.verified_bytes(record.model_id) == data
    zipped = zip_with(tmp_path / "m.zip", {"model.onnx": model_bytes(2), "labels.txt": b"a"})
    assert registry.register("m", "onnx", "2", str(zipped)).framework == "onnx"
    write(tmp_path / "plain" / "model.onnx", model_bytes(3))
    with tarfile.open(tmp_path / "m.tar", "w") as tar:  # uncompressed, like `tar -cf m.tar .`
        tar.add(tmp_path / "plain", arcname=".")
    assert registry.register("m", "onnx", "3", str(tmp_path / "m.tar")).size_bytes > 0


def test_archive_external_data_becomes_self_contained(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    folder.mkdir()
    onnx.save_model(
        make_model(scale=3.0),
        str(folder / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    archive = tmp_path / "ext.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="pkg")
    record = registry.register("ext", "onnx", "1", str(archive))
    stored = onnx.load_model_from_string(record.artifact_path.read_bytes())
    weights = {t.name: numpy_helper.to_array(t) for t in stored.graph.initializer}
    assert weights["w"].tolist() == np.full((4, 3), 3.0).tolist()
    # A lone .onnx file whose weights live elsewhere cannot be registered on its own.
    refused(registry, InvalidRequestError, "storage_url", storage_url=str(folder / "model.onnx"))


def test_external_data_outside_the_archive_refused(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    folder.mkdir()
    onnx.save_model(
        make_model(), str(folder / "model.onnx"), save_as_external_data=True, size_threshold=0
    )
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../secret.bin"
    archive = zip_with(tmp_path / "evil.zip", {"model.onnx": model.SerializeToString()})
    error = refused(registry, InvalidRequestError, "storage_url", storage_url=str(archive))
    assert "external data" in error.message and "../../secret.bin" in error.message


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (file_info("/abs/model.onnx", b"x"), "absolute"),
        (file_info("pkg/../../model.onnx", b"x"), "'..'"),
        (link_info("model.onnx", "/etc/passwd", tarfile.SYMTYPE), "link"),
        (link_info("model.onnx", "other.onnx", tarfile.LNKTYPE), "link"),
        (link_info("dev", "", tarfile.CHRTYPE), "device"),
        (file_info("big.bin", bytes(200_000)), "max_bytes"),
    ],
)
def test_unsafe_tar_members_refused(
    registry: Registry, tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    archive = tar_with(tmp_path / "bad.tar.gz", [file_info("model.onnx", model_bytes()), member])
    error = refused(
        registry, InvalidRequestError, "storage_url", storage_url=str(archive), max_bytes=100_000
    )
    assert message in error.message
    assert not (tmp_path.parent / "model.onnx").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [("/abs/model.onnx", "absolute"), ("../model.onnx", "'..'"), ("big.bin", "max_bytes")],
)
def test_unsafe_zip_members_refused(
    registry: Registry, tmp_path: Path, name: str, message: str
) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.onnx", model_bytes())
        # ZipInfo keeps the name exactly as given (writestr would normalise it).
        zf.writestr(zipfile.ZipInfo(name), bytes(200_000), compress_type=zipfile.ZIP_DEFLATED)
    error = refused(
        registry, InvalidRequestError, "storage_url", storage_url=str(archive), max_bytes=100_000
    )
    assert message in error.message


def test_zip_symlink_refused(registry: Registry, tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("model.onnx")
        link.external_attr = (0o120777 << 16) | 0
        zf.writestr(link, "/etc/passwd")
    error = refused(registry, InvalidRequestError, "storage_url", storage_url=str(archive))
    assert "link" in error.message


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"a.onnx": model_bytes(), "b/c.onnx": model_bytes(2)}, "it holds 2: a.onnx, b/c.onnx"),
        ({"notes.txt": b"hi", "w.bin": b"0"}, "it holds none (found: notes.txt, w.bin)"),
    ],
)
def test_archive_needs_exactly_one_model(
    registry: Registry, tmp_path: Path, members: dict[str, bytes], message: str
) -> None:
    archive = zip_with(tmp_path / "m.zip", members)
    error = refused(registry, InvalidRequestError, "storage_url", storage_url=str(archive))
    assert message in error.message


def test_corrupt_archive_refused(registry: Registry, tmp_path: Path) -> None:
    archive = write(tmp_path / "m.tar.gz", b"\x1f\x8b" + b"\x00" * 64)
    refused(registry, InvalidRequestError, "storage_url", storage_url=str(archive))


# ---------------------------------------------------------------------------------------------
# Integrity, persistence, crash recovery, concurrency


def test_verified_bytes_detect_tampering(registry: Registry, tmp_path: Path) -> None:
    record = registry.register("m", "onnx", "1", str(write(tmp_path / "m.onnx", model_bytes())))
    assert registry.verified_bytes(record.model_id) == record.artifact_path.read_bytes()
    record.artifact_path.write_bytes(record.artifact_path.read_bytes() + b"\x00")
    with pytest.raises(IntegrityError, match="altered"):
        registry.verified_bytes(record.model_id)
    record.artifact_path.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        registry.verified_bytes(record.model_id)


def test_reopening_keeps_data_and_schema(home: Path, tmp_path: Path) -> None:
    source = write(tmp_path / "m.onnx", model_bytes())
    with Database(home / "registry.db") as db:
        assert db.schema_version == len(MIGRATIONS)
        assert db.query("PRAGMA journal_mode")[0][0] == "wal"
        assert db.query("PRAGMA foreign_keys")[0][0] == 1
        record = Registry(home, db).register("m", "onnx", "1", str(source))
    with Database(home / "registry.db") as db:
        assert db.schema_version == len(MIGRATIONS)
        assert Registry(home, db).get(record.model_id) == record


def test_newer_schema_refused(home: Path) -> None:
    with Database(home / "registry.db") as db, db.transaction() as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(UnsupportedError, match="newer"):
        Database(home / "registry.db")


def test_transaction_rolls_back_and_nests(db: Database) -> None:
    def insert(conn: Any, model_id: str) -> None:
        conn.execute(
            "INSERT INTO models VALUES (?, ?, '1', 'onnx', 's', 1, 'a', 'u', '{}', '{}', "
            "NULL, NULL, 0, 0, NULL, NULL, NULL, NULL)",
            (model_id, model_id),
        )

    with pytest.raises(RuntimeError), db.transaction() as conn:
        insert(conn, "a")
        raise RuntimeError
    with db.transaction() as conn:
        insert(conn, "b")
        with pytest.raises(RuntimeError), db.transaction() as inner:
            insert(inner, "c")
            raise RuntimeError
    assert [r[0] for r in db.query("SELECT model_id FROM models")] == ["b"]


def test_recovery_after_a_crash_mid_delete(home: Path, db: Database, tmp_path: Path) -> None:
    registry = Registry(home, db)
    kept = registry.register("m", "onnx", "1", str(write(tmp_path / "a.onnx", model_bytes())))
    gone = write(tmp_path / "b.onnx", model_bytes(2))
    gone_path = kept.artifact_path.parent.parent / "ab" / ("ab" * 32 + ".onnx.deleted")
    write(gone_path, gone.read_bytes())
    # A crash between moving the artifact aside and committing the delete: the row survived.
    kept.artifact_path.rename(str(kept.artifact_path) + ".deleted")
    Registry(home, db)
    assert registry.verified_bytes(kept.model_id) == kept.artifact_path.read_bytes()
    assert not gone_path.exists()


def test_concurrent_duplicate_registration(home: Path, tmp_path: Path) -> None:
    sources = [write(tmp_path / f"{i}.onnx", model_bytes(scale=i + 1)) for i in range(2)]
    databases = [Database(home / "registry.db") for _ in sources]
    try:
        registries = [Registry(home, db) for db in databases]
        barrier = threading.Barrier(len(sources))
        outcomes: list[Any] = [None] * len(sources)

        def run(i: int) -> None:
            barrier.wait()
            try:
                outcomes[i] = registries[i].register("m", "onnx", "1", str(sources[i]))
            except PhiEngineError as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sources))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [o for o in outcomes if isinstance(o, ModelRecord)]
        assert len(winners) == 1, outcomes
        assert sum(isinstance(o, ConflictError) for o in outcomes) == 1, outcomes
        assert registries[0].list() == winners
        assert artifacts(registries[0]) == [winners[0].artifact_path]
        assert list((home / "tmp").iterdir()) == []
    finally:
        for database in databases:
            database.close()


def test_repr_html_escapes(registry: Registry, tmp_path: Path) -> None:
    source = write(tmp_path / "m.onnx", model_bytes())
    record = registry.register("m", "onnx", "1", str(source), metadata={"note": "<script>"})
    page = record._repr_html_()
    assert page.startswith("<table>") and "<script>" not in page and "&lt;script&gt;" in page


def test_delete_refused_while_another_table_refers_to_it(
    registry: Registry, db: Database, tmp_path: Path
) -> None:
    record = registry.register("m", "onnx", "1", str(write(tmp_path / "m.onnx", model_bytes())))
    insert_deployment(db, "dep_old", record.model_id, status="stopped")
    with db.transaction() as conn:  # e.g. batch jobs that another layer keeps
        conn.execute("CREATE TABLE jobs (job_id TEXT, deployment_id TEXT REFERENCES deployments)")
        conn.execute("INSERT INTO jobs VALUES ('job_1', 'dep_old')")
    before = snapshot(registry)
    with pytest.raises(ConflictError, match="still referenced"):
        registry.delete(record.model_id)
    assert snapshot(registry) == before
    assert registry.verified_bytes(record.model_id) == record.artifact_path.read_bytes()
