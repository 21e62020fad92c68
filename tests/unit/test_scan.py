"""The artifact scanner: malicious pickles (built as bytes, never loaded), archives, ONNX external
data, Keras Lambda layers, SavedModel ops, limits, and type detection by content."""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import pickle
import stat
import sys
import tarfile
import time
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from phi_engine.errors import InvalidRequestError
from phi_engine.security import (
    PICKLE_ALLOWLIST,
    RULES,
    ScanLimits,
    ScanReport,
    scan_bytes,
    scan_path,
)

# -- building pickles by hand: opcodes as bytes ------------------------------------------------

PROTO = b"\x80"
STOP = b"."
REDUCE = b"R"
TUPLE1 = b"\x85"
STACK_GLOBAL = b"\x93"
MEMOIZE = b"\x94"


def u(text: str) -> bytes:
    """SHORT_BINUNICODE: a string constant (protocol 4)."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def stack_global_call(module: str, name: str, arg: str = "echo pwned", proto: int = 4) -> bytes:
    """``module.name(arg)`` through STACK_GLOBAL and REDUCE."""
    call = STACK_GLOBAL + u(arg) + TUPLE1 + REDUCE
    return PROTO + bytes([proto]) + u(module) + u(name) + call + STOP


def global_call(module: str, name: str, arg: str = "echo pwned", proto: int = 0) -> bytes:
    """``module.name(arg)`` through GLOBAL and REDUCE (protocol 0 text, or 2 with a header)."""
    head = PROTO + bytes([proto]) if proto >= 2 else b""
    return head + f"c{module}\n{name}\n(V{arg}\ntR.".encode()


class _System:
    """Pickles as os.system("echo pwned"); pickling it only writes bytes."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def rules(report: ScanReport) -> set[str]:
    return {f.rule for f in report.findings}


def messages(report: ScanReport, rule: str) -> str:
    return " | ".join(f.message for f in report.by_rule(rule))


def zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def refused(data: bytes, name: str = "model.bin") -> ScanReport:
    """Scanned with pickles allowed: only the allowlist can have refused it."""
    report = scan_bytes(data, name, allow_pickle=True)
    assert not report.ok
    with pytest.raises(InvalidRequestError) as info:
        report.raise_for_findings()
    assert info.value.field == "storage_url"
    return report


# -- malicious pickles -------------------------------------------------------------------------

DANGEROUS = [
    ("builtins", "exec"),
    ("builtins", "eval"),
    ("builtins", "__import__"),
    ("builtins", "getattr"),
    ("marshal", "loads"),
    ("importlib", "import_module"),
    ("types", "FunctionType"),
    ("os", "system"),
    ("subprocess", "Popen"),
]


@pytest.mark.parametrize("proto", [0, 1, 2, 3, 4, 5])
def test_reduce_to_os_system_is_refused_at_every_protocol(proto: int) -> None:
    report = refused(pickle.dumps(_System(), protocol=proto))
    assert "pickle.global_not_allowed" in rules(report)
    assert "system" in messages(report, "pickle.global_not_allowed")


@pytest.mark.parametrize(("module", "name"), DANGEROUS)
@pytest.mark.parametrize("proto", [4, 5])
def test_dangerous_stack_global_is_refused(module: str, name: str, proto: int) -> None:
    report = refused(stack_global_call(module, name, proto=proto))
    message = messages(report, "pickle.global_not_allowed")
    assert f"'{module} {name}'" in message
    assert "STACK_GLOBAL at byte" in message


@pytest.mark.parametrize(("module", "name"), DANGEROUS)
@pytest.mark.parametrize("proto", [0, 2])
def test_dangerous_global_is_refused(module: str, name: str, proto: int) -> None:
    report = refused(global_call(module, name, proto=proto))
    offset = 2 if proto else 0
    assert f"global '{module} {name}' (GLOBAL at byte {offset})" in messages(
        report, "pickle.global_not_allowed"
    )


def test_protocol0_inst_and_obj_are_refused() -> None:
    inst = b"(S'echo pwned'\nios\nsystem\n."
    obj = b"(cos\nsystem\nS'echo pwned'\no."
    for data, opcode in ((inst, "INST"), (obj, "GLOBAL")):
        message = messages(refused(data), "pickle.global_not_allowed")
        assert f"'os system' ({opcode} at byte" in message


def test_dotted_names_through_allowed_modules_are_refused() -> None:
    via_global = global_call("numpy.core.multiarray", "_reconstruct.__globals__", proto=2)
    via_stack = stack_global_call("numpy", "testing._private.utils.os.system")
    for data, name in (
        (via_global, "_reconstruct.__globals__"),
        (via_stack, "testing._private.utils.os.system"),
    ):
        report = refused(data)
        assert name in messages(report, "pickle.global_dotted_name")


def test_functools_partial_chain_is_refused() -> None:
    chain = functools.partial(functools.partial(os.system, "echo"), "pwned")
    for proto in (2, 4):
        report = refused(pickle.dumps(chain, protocol=proto))
        message = messages(report, "pickle.global_not_allowed")
        assert "'functools partial'" in message
        assert "system" in message


def test_names_through_the_memo_are_resolved() -> None:
    binput = PROTO + b"\x04" + u("os") + b"q\x00" + u("system") + b"q\x01" + b"0"  # POP
    binput += b"h\x00h\x01" + STACK_GLOBAL + u("x") + TUPLE1 + REDUCE + STOP
    memoize = PROTO + b"\x04" + u("os") + MEMOIZE + u("posix") + MEMOIZE + b"00"
    memoize += b"h\x00" + u("system") + STACK_GLOBAL + u("x") + TUPLE1 + REDUCE + STOP
    long_put = PROTO + b"\x04" + u("builtins") + b"r\x07\x00\x00\x00" + b"0"
    long_put += b"j\x07\x00\x00\x00" + u("exec") + STACK_GLOBAL + u("x") + TUPLE1 + REDUCE + STOP
    # An allowed module first stored in slot 0, then the slot rebound to "os".
    rebound = PROTO + b"\x04" + u("numpy") + b"q\x00" + u("os") + b"q\x00" + b"00"
    rebound += b"h\x00" + u("system") + STACK_GLOBAL + u("x") + TUPLE1 + REDUCE + STOP
    # Protocol 0 PUT and GET, and a MARK ... POP_MARK hiding a decoy in between.
    text = b"Vos\np0\n0(Vnumpy\n1g0\nVsystem\n\x93(Vx\ntR."
    for data, found in (
        (binput, "'os system'"),
        (memoize, "'os system'"),
        (long_put, "'builtins exec'"),
        (rebound, "'os system'"),
        (text, "'os system'"),
    ):
        assert found in messages(refused(data), "pickle.global_not_allowed"), data


def test_stack_tricks_and_unresolvable_names_are_refused() -> None:
    # DUP of an import, then a call on the copy.
    dup = PROTO + b"\x04" + u("os") + u("system") + STACK_GLOBAL + b"2" + u("x") + TUPLE1
    dup += REDUCE + STOP
    assert "'os system'" in messages(refused(dup), "pickle.global_not_allowed")
    # STACK_GLOBAL of a computed module name: numpy.dtype("f8") is not a constant string.
    computed = PROTO + b"\x04" + u("numpy") + u("dtype") + STACK_GLOBAL + u("f8") + TUPLE1
    computed += REDUCE + u("system") + STACK_GLOBAL + b")" + REDUCE + STOP
    report = refused(computed)
    assert "pickle.unresolved_global" in rules(report)
    assert "pickle.call_on_unknown" in rules(report)
    # A call on a string, and BUILD rewriting an allowed function's attributes.
    call_str = PROTO + b"\x04" + u("os") + b")" + REDUCE + STOP
    assert "REDUCE at byte" in messages(refused(call_str), "pickle.call_on_unknown")
    build = PROTO + b"\x04" + u("torch._utils") + u("_rebuild_tensor_v2") + STACK_GLOBAL
    build += b"}" + u("__defaults__") + u("x") + b"sb" + STOP
    assert "_rebuild_tensor_v2" in messages(refused(build), "pickle.build_on_global")
    # SETITEM on an import calls its __setitem__.
    setitem = PROTO + b"\x04" + u("collections") + u("OrderedDict") + STACK_GLOBAL
    setitem += u("k") + u("v") + b"s" + STOP
    assert "SETITEM at byte" in messages(refused(setitem), "pickle.build_on_global")


def test_an_endless_stream_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("phi_engine.security._scan_pickle._MAX_OPS", 1000)
    report = scan_bytes(b"N" * 5000 + b".", "data.bin", allow_pickle=True)
    assert "more than 1000 opcodes" in messages(report, "pickle.unparseable")


@pytest.mark.parametrize("ext", [b"\x82\x01", b"\x83\x01\x00", b"\x84\x01\x00\x00\x00"])
def test_extension_registry_opcodes_are_refused(ext: bytes) -> None:
    report = refused(PROTO + b"\x02" + ext + b")" + REDUCE + STOP)
    assert "pickle.extension_code" in rules(report)


@pytest.mark.parametrize("ext", [b"\x82\x01", b"\x83\x01\x00", b"\x84\x01\x00\x00\x00"])
def test_raw_tensor_bytes_starting_with_an_ext_opcode_are_not_pickles(ext: bytes) -> None:
    # Raw float storage (torch's data/N members, ONNX external data) starts with an EXT byte
    # about 1 % of the time: bytes that do not parse as a pickle import nothing.
    raw = ext + (np.arange(64, dtype=np.float32) + 0.5).tobytes()  # 0.5 is 00 00 00 3f
    assert scan_bytes(raw, "weights.bin").ok
    member = io.BytesIO()
    with zipfile.ZipFile(member, "w") as zf:
        zf.writestr("archive/data/0", raw)
    assert scan_bytes(member.getvalue(), "pkg.zip").ok
    # Without a header, an EXT stream that does parse is a pickle that imports: refused.
    assert "pickle.extension_code" in rules(refused(ext + b")" + REDUCE + STOP))


def test_truncated_unknown_and_trailing_streams_are_refused() -> None:
    benign = pickle.dumps(np.arange(6.0), protocol=4)
    assert scan_bytes(benign, "a.pkl", allow_pickle=True).ok
    assert "pickle.truncated" in rules(refused(benign[:-12]))
    assert "pickle.truncated" in rules(refused(stack_global_call("os", "system")[:-3]))
    assert "pickle.unparseable" in rules(refused(PROTO + b"\x04\xff" + STOP))
    assert "pickle.unparseable" in rules(refused(PROTO + b"\x04" + REDUCE + STOP))  # underflow
    assert "pickle.unparseable" in rules(refused(PROTO + b"\x04h\x05" + STOP))  # unknown memo
    trailing = refused(benign + b"garbage")
    assert f"7 bytes after STOP at byte {len(benign) - 1}" in messages(
        trailing, "pickle.trailing_data"
    )
    # A second stream after the first is analysed too.
    second = refused(benign + pickle.dumps(_System(), protocol=2))
    assert {"pickle.trailing_data", "pickle.global_not_allowed"} <= rules(second)


def test_pickle_in_a_zip_in_a_zip_under_an_odd_extension() -> None:
    inner = zip_bytes({"weights.txt": pickle.dumps(_System(), protocol=2)})
    outer = zip_bytes({"model/inner.dat": inner, "README.md": b"# a model\n"})
    report = refused(outer, "bundle.zip")
    [finding] = report.by_rule("pickle.global_not_allowed")
    assert finding.path == "bundle.zip!/model/inner.dat!/weights.txt"
    assert finding.kind == "pickle"
    kinds = {f.path: f.kind for f in report.files}
    assert kinds["bundle.zip!/model/inner.dat"] == "zip"
    assert kinds["bundle.zip!/README.md"] == "text"


def test_pickle_in_a_tar_gz() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = stack_global_call("builtins", "exec")
        info = tarfile.TarInfo("model/config.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    report = refused(buf.getvalue(), "model.tar.gz")
    [finding] = report.by_rule("pickle.global_not_allowed")
    assert finding.path == "model.tar.gz!/model.tar!/model/config.yaml"


def test_object_npy_holds_a_pickle() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([_System()], dtype=object), allow_pickle=True)
    report = refused(buf.getvalue(), "features.npy")
    assert "system" in messages(report, "pickle.global_not_allowed")
    assert report.files[0].kind == "numpy"
    plain = io.BytesIO()
    np.save(plain, np.arange(10, dtype=np.float32))
    assert scan_bytes(plain.getvalue(), "x.npy").ok


# -- benign pickles ----------------------------------------------------------------------------


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
def test_benign_numpy_pickles_pass_only_when_allowed(proto: int) -> None:
    for value in (
        np.arange(6.0).reshape(2, 3),
        {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.int64), "s": np.float32(1.5)},
    ):
        data = pickle.dumps(value, protocol=proto)
        allowed = scan_bytes(data, "arrays.pkl", allow_pickle=True)
        assert allowed.ok, allowed.findings
        assert rules(allowed) == {"pickle.allowed"}
        denied = scan_bytes(data, "arrays.pkl")
        assert not denied.ok
        assert rules(denied) == {"pickle.not_allowed"}
        assert "'numpy dtype'" in messages(denied, "pickle.not_allowed")


def test_torch_checkpoint_is_allowlisted() -> None:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"model": torch.nn.Linear(3, 2).state_dict(), "step": 7}, buf)
    report = scan_bytes(buf.getvalue(), "model.pt", allow_pickle=True)
    assert report.ok, report.findings
    assert report.files[0].kind == "pytorch_zip"
    assert not scan_bytes(buf.getvalue(), "model.pt").ok


def test_allowlist_is_exact() -> None:
    assert ("numpy._core.multiarray", "_reconstruct") in PICKLE_ALLOWLIST
    assert all("." not in name for _, name in PICKLE_ALLOWLIST)
    assert not any(module in ("builtins", "os", "posix") for module, _ in PICKLE_ALLOWLIST)


# -- ONNX --------------------------------------------------------------------------------------


def onnx_model(
    location: str | None = None, domain: str = "", functions: list[Any] | None = None
) -> onnx.ModelProto:
    """Identity over one float initializer, in external data when ``location`` is given."""
    if location is None:
        weight = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    else:
        weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "16")):
            weight.external_data.add(key=key, value=value)
    node = helper.make_node("Custom" if domain else "Identity", ["w"], ["y"], domain=domain)
    graph = helper.make_graph(
        [node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight]
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, functions=functions or [])


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "a/../../b", "C:/x", "a\\b"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "model.onnx").write_bytes(onnx_model(location).SerializeToString())
    for report in (scan_path(tmp_path), scan_bytes(onnx_model(location).SerializeToString(), "m")):
        assert not report.ok
        assert repr(location) in messages(report, "onnx.external_data_escape")


def test_external_data_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(onnx_model("weights.bin").SerializeToString())
    (folder / "weights.bin").symlink_to(tmp_path / "secret.bin")
    report = scan_path(folder)
    assert "outside the model folder" in messages(report, "onnx.external_data_escape")
    assert "file.symlink_escape" in rules(report)
    assert "onnx.external_data_escape" in rules(scan_path(folder / "model.onnx"))


def test_external_data_inside_the_folder_passes(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(onnx_model("weights.bin").SerializeToString())
    # Raw float bytes that happen to start like a pickle header are data, not a pickle.
    (tmp_path / "weights.bin").write_bytes(b"\x80\x02\x00\x00" + b"\x00" * 12)
    report = scan_path(tmp_path)
    assert report.ok, report.findings
    assert {f.path: f.kind for f in report.files} == {
        "model.onnx": "onnx",
        "weights.bin": "tensor_data",
    }
    (tmp_path / "weights.bin").unlink()
    assert "onnx.external_data_missing" in rules(scan_path(tmp_path))


def test_external_data_in_an_archive() -> None:
    model = onnx_model("data/w.bin").SerializeToString()
    good = zip_bytes({"m/model.onnx": model, "m/data/w.bin": b"\x80\x03" + b"\0" * 14})
    assert scan_bytes(good, "m.zip").ok
    missing = zip_bytes({"m/model.onnx": model})
    assert "onnx.external_data_missing" in rules(scan_bytes(missing, "m.zip"))


def test_custom_domains_and_functions_are_listed() -> None:
    report = scan_bytes(onnx_model(domain="com.example").SerializeToString(), "m.onnx")
    assert report.ok
    [finding] = report.by_rule("onnx.custom_domain")
    assert finding.severity == "warn"
    assert finding.message == "custom domain 'com.example': Custom"
    function = helper.make_function(
        "local",
        "Custom",
        ["x"],
        ["y"],
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_opsetid("", 17)],
    )
    report = scan_bytes(onnx_model(domain="local", functions=[function]).SerializeToString(), "m")
    assert "Custom (local function)" in messages(report, "onnx.custom_domain")
    assert "local.Custom" in messages(report, "onnx.local_function")


def test_large_onnx_scans_fast(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones(13 * 2**20, np.float32), "w")  # 52 MiB
    model = onnx_model()
    model.graph.initializer[0].CopyFrom(weight)
    path = tmp_path / "big.onnx"
    path.write_bytes(model.SerializeToString())
    start = time.perf_counter()
    report = scan_path(path)
    elapsed = time.perf_counter() - start
    assert report.ok and report.files[0].kind == "onnx"
    assert elapsed < 1.5, f"{elapsed:.2f} s"


# -- Keras and TensorFlow ----------------------------------------------------------------------

LAMBDA = {"class_name": "Lambda", "config": {"name": "sneaky", "function": ["4wEAAA==", None]}}


def keras_config(inner_layer: dict[str, Any]) -> dict[str, Any]:
    """A Functional model holding a Sequential holding ``inner_layer``."""
    dense = {"module": "keras.layers", "class_name": "Dense", "config": {"units": 2}}
    sequential = {"class_name": "Sequential", "config": {"layers": [dense, inner_layer]}}
    return {"module": "keras", "class_name": "Functional", "config": {"layers": [sequential]}}


def test_keras_v3_lambda_nested_is_flagged() -> None:
    data = zip_bytes(
        {
            "metadata.json": json.dumps({"keras_version": "3.3.3"}).encode(),
            "config.json": json.dumps(keras_config(LAMBDA)).encode(),
            "model.weights.h5": b"\x89HDF\r\n\x1a\n" + b"\0" * 64,
        }
    )
    report = scan_bytes(data, "model.zip")
    assert not report.ok
    [finding] = report.by_rule("keras.lambda_layer")
    assert finding.path == "model.zip!/config.json"
    assert "'sneaky'" in finding.message and "layers[0].config.layers[1]" in finding.message
    assert report.files[0].kind == "keras_v3"
    custom = {"module": "my_pkg.layers", "class_name": "Evil", "config": {}}
    report = scan_bytes(json.dumps(keras_config(custom)).encode(), "config.json")
    assert report.ok and "my_pkg.layers.Evil" in messages(report, "keras.custom_object")


def test_legacy_h5_lambda_is_flagged() -> None:
    config = json.dumps(keras_config(LAMBDA)).encode()
    data = b"\x89HDF\r\n\x1a\n" + b"\0" * 200 + config + b"\0" * 50
    report = scan_bytes(data, "model.h5")
    assert report.files[0].kind == "hdf5"
    assert "'sneaky'" in messages(report, "keras.lambda_layer")


def saved_model_pb(*ops: str) -> bytes:
    nodes = b"".join(
        b"\x0a\x04node\x12" + bytes([len(op)]) + op.encode() + b"\x1a\x01x" for op in ops
    )
    graph = b"\x12" + bytes([len(nodes) + 2]) + b"\x12" + bytes([len(nodes)]) + nodes
    return b"\x08\x01" + graph


def test_saved_model_file_writing_ops_are_flagged(tmp_path: Path) -> None:
    (tmp_path / "variables").mkdir()
    (tmp_path / "variables" / "variables.index").write_bytes(b"\0\1\2")
    (tmp_path / "saved_model.pb").write_bytes(saved_model_pb("MatMul", "WriteFile", "SaveV2"))
    report = scan_path(tmp_path)
    assert not report.ok
    [write] = report.by_rule("tf.file_write_op")
    assert write.path == "saved_model.pb" and "WriteFile" in write.message
    assert write.kind == "tf_saved_model"
    assert report.by_rule("tf.checkpoint_op")[0].severity == "warn"
    (tmp_path / "saved_model.pb").write_bytes(saved_model_pb("MatMul", "SaveV2"))
    assert scan_path(tmp_path).ok
    text = b'meta_graphs {\n  graph_def {\n    node { name: "p" op: "PyFunc" }\n  }\n}\n'
    assert "PyFunc" in messages(scan_bytes(text, "model.txt"), "tf.exec_op")
    # Source that merely mentions them is text.
    source = b'# a test\nSAVED = """meta_graphs { op: "PyFunc" }"""\n'
    assert scan_bytes(source, "test.py").files[0].kind == "text"


# -- archives and limits -----------------------------------------------------------------------


def test_zip_bomb_is_flagged() -> None:
    bomb = zip_bytes({"weights.bin": b"\0" * (20 * 2**20)})
    report = scan_bytes(bomb, "model.zip")
    assert "archive.compression_ratio" in rules(report) and not report.ok
    gz = gzip.compress(b"\0" * (20 * 2**20))
    assert "archive.compression_ratio" in rules(scan_bytes(gz, "w.gz"))
    stored = zip_bytes({"weights.bin": b"\0" * (2 * 2**20)}, zipfile.ZIP_STORED)
    assert scan_bytes(stored, "model.zip").ok


def test_deep_nesting_is_flagged() -> None:
    data = b"plain text\n"
    for level in range(6):
        data = zip_bytes({f"level{level}.zip": data})
    report = scan_bytes(data, "deep.zip")
    assert "archive.nested_too_deep" in rules(report) and not report.ok
    assert scan_bytes(data, "deep.zip", limits=ScanLimits(max_depth=8)).ok


def test_unsafe_members_are_flagged() -> None:
    assert "archive.unsafe_path" in rules(scan_bytes(zip_bytes({"../evil.txt": b"x"}), "a.zip"))
    link = zipfile.ZipInfo("weights.bin")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(link, "/etc/passwd")
    assert "archive.link" in rules(scan_bytes(buf.getvalue(), "a.zip"))
    dup = io.BytesIO()
    with zipfile.ZipFile(dup, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name we want
        z.writestr("model.onnx", b"x")
        z.writestr("model.onnx", stack_global_call("os", "system"))
    report = scan_bytes(dup.getvalue(), "a.zip")
    assert {"archive.duplicate_member", "pickle.not_allowed"} <= rules(report)
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        sym = tarfile.TarInfo("weights.bin")
        sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(sym)
        absolute = tarfile.TarInfo("/etc/cron.d/x")
        tar.addfile(absolute, io.BytesIO(b""))
    assert {"archive.link", "archive.unsafe_path"} <= rules(scan_bytes(tar_buf.getvalue(), "t"))


def test_member_limit() -> None:
    data = zip_bytes({f"f{i}.txt": b"x" for i in range(5)})
    report = scan_bytes(data, "a.zip", limits=ScanLimits(max_members=3))
    assert "limits.too_many_files" in rules(report)


# -- type detection by content -----------------------------------------------------------------


def test_type_comes_from_content_not_name(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(pickle.dumps(np.arange(3), protocol=4))
    (tmp_path / "weights.bin").write_bytes(onnx_model().SerializeToString())
    (tmp_path / "notes.txt").write_bytes(global_call("os", "system"))  # protocol 0: text
    (tmp_path / "README.md").write_text("# A model\nNothing to see.\n")
    (tmp_path / "tokenizer.json").write_text(json.dumps({"vocab": {"a": 1}}))
    report = scan_path(tmp_path, allow_pickle=True)
    assert {f.path: f.kind for f in report.files} == {
        "README.md": "text",
        "model.onnx": "pickle",
        "notes.txt": "pickle",
        "tokenizer.json": "json",
        "weights.bin": "onnx",
    }
    [finding] = report.by_rule("pickle.global_not_allowed")
    assert finding.path == "notes.txt"


def test_a_file_that_is_also_a_pickle_is_flagged() -> None:
    polyglot = global_call("os", "system").ljust(512, b"\n") + b"\x89HDF\r\n\x1a\n" + b"\0" * 64
    report = scan_bytes(polyglot, "model.h5", allow_pickle=True)
    assert {"pickle.polyglot", "pickle.global_not_allowed"} <= rules(report)


def test_safetensors_is_recognised() -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    data = len(header).to_bytes(8, "little") + header + b"\0" * 8
    report = scan_bytes(data, "model.pt")
    assert report.ok and report.files[0].kind == "safetensors"
    bad = len(header).to_bytes(8, "little") + header
    assert "safetensors.invalid_header" in rules(scan_bytes(bad, "m"))


# -- the report --------------------------------------------------------------------------------


def test_report_serialises_and_raises_the_worst_finding() -> None:
    report = scan_bytes(stack_global_call("os", "system"), "evil.pkl")
    body = json.loads(json.dumps(report.to_dict()))
    assert body["ok"] is False and body["counts"]["critical"] == 2
    assert body["findings"][0]["severity"] == "critical"
    with pytest.raises(InvalidRequestError, match=r"evil\.pkl: .*'os system'") as info:
        report.raise_for_findings(field="model")
    assert info.value.field == "model" and "1 more finding" in info.value.message
    scan_bytes(b"hello\n", "a.txt").raise_for_findings()
    assert all(f.severity == RULES[f.rule][0] for f in report.findings)


def test_missing_path_is_an_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="no such file"):
        scan_path(tmp_path / "absent")


def test_second_opinions_are_information_only(monkeypatch: pytest.MonkeyPatch) -> None:
    verdict = types.SimpleNamespace(
        issues_count=1, globals=[types.SimpleNamespace(module="numpy", name="dtype", safety="?")]
    )
    scanner = types.ModuleType("picklescan.scanner")
    scanner.scan_pickle_bytes = lambda data, name: verdict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picklescan", types.ModuleType("picklescan"))
    monkeypatch.setitem(sys.modules, "picklescan.scanner", scanner)
    report = scan_bytes(pickle.dumps(np.arange(3)), "a.pkl", allow_pickle=True)
    assert report.ok
    [opinion] = report.by_rule("second_opinion.picklescan")
    assert opinion.severity == "info" and "1 issues" in opinion.message
