"""Pickle streams, opcode by opcode (:mod:`pickletools`, never unpickled), against an exact
allowlist of imports: the part of the artifact scanner (:mod:`phi_engine.security._scan`) that
decides whether a pickle could run code when loaded."""

from __future__ import annotations

import io
import pickletools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phi_engine.security._scan_formats import _IDENT

_TORCH_STORAGES: tuple[str, ...] = ("BFloat16", "Bool", "Byte", "Char", "ComplexDouble")
_TORCH_STORAGES += ("ComplexFloat", "Double", "Float", "Half", "Int", "Long", "Short")

PICKLE_ALLOWLIST: frozenset[tuple[str, str]] = frozenset(
    {
        # numpy arrays, scalars and dtypes, under numpy 1.x's and 2.x's module names.
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocols 0-2, e.g. array data
        ("collections", "OrderedDict"),
        # PyTorch checkpoints (torch.save's data.pkl): tensors, parameters, typed storages.
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        *(("torch", f"{dtype}Storage") for dtype in _TORCH_STORAGES),
    }
)
"""Every ``(module, name)`` a pickle may import when pickles are allowed; matched exactly."""

# ---------------------------------------------------------------------------------------------
# Pickle streams, opcode by opcode.


@dataclass(frozen=True)
class _Global:
    module: str
    name: str

    def __str__(self) -> str:
        return f"'{self.module} {self.name}'"


class _Broken(Exception):
    """The stream would fail to unpickle here: stack underflow, or an unknown memo slot."""


_OTHER = object()  # a value the walk does not track
_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE"}
_STRINGS |= {"SHORT_BINUNICODE", "BINUNICODE8"}
_TRUNCATION = ("exhausted", "but only", "not enough data", "no newline found")
# Opcodes that call methods of their first operand (append, extend, __setitem__, add).
_MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"}
_MAX_OPS = 10_000_000  # a torch checkpoint of 10k tensors is some 200k opcodes


@dataclass
class _PickleWalk:
    """What walking one stream found."""

    start: int
    protocol: int = 0
    globals: list[_Global] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (rule, message)
    # An import was decoded: without one a stream reaches no callable, so bytes that merely
    # start with opcode characters (text) are no threat unless they import.
    risky: bool = False
    # An EXT opcode: imports what copyreg's extension registry names (empty unless a library
    # registers codes). Kept apart from ``risky``: one byte 0x82-0x84 starts ~1 % of random
    # binary files (raw tensor storage), which are pickles only if they also parse.
    extension: bool = False
    end: int = -1  # just past STOP; -1 when the walk failed
    error: str = ""
    truncated: bool = False


class _Walker:
    """A symbolic unpickler: :mod:`pickle`'s stack, metastack and memo, holding constant
    strings and imports where they are known, building no object."""

    def __init__(self, data: bytes, start: int) -> None:
        self.data = data
        self.out = _PickleWalk(start)
        self.stack: list[object] = []
        self.metastack: list[list[object]] = []
        self.memo: dict[int, object] = {}

    def walk(self) -> _PickleWalk:
        stream = io.BytesIO(self.data)
        stream.seek(self.out.start)
        pos: int | None = self.out.start
        try:
            for count, (op, arg, pos) in enumerate(pickletools.genops(stream)):
                if count == _MAX_OPS:
                    self.out.risky = True  # what lies past the budget is unknown: refuse it
                    raise _Broken(f"more than {_MAX_OPS} opcodes")
                self.step(op, arg, pos or 0)
        except _Broken as exc:
            self.out.error = f"{exc} at byte {pos}"
        except Exception as exc:  # genops raises ValueError & co. on any malformed byte
            self.out.error = str(exc)
            self.out.truncated = any(word in str(exc) for word in _TRUNCATION)
        else:
            self.out.end = stream.tell()
        return self.out

    def pop(self, n: int) -> list[object]:
        if len(self.stack) < n:
            raise _Broken("stack underflow")
        items = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return items

    def pop_mark(self) -> list[object]:
        if not self.metastack:
            raise _Broken("no MARK to pop to")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def step(self, op: pickletools.OpcodeInfo, arg: Any, pos: int) -> None:
        name = op.name
        if name in _STEPS:
            self.stack.append(_STEPS[name](self, arg, pos))
        elif name in _STRINGS:
            self.stack.append(arg if isinstance(arg, str) else bytes(arg).decode("latin-1"))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not self.stack:
                raise _Broken(f"{name} with an empty stack")
            self.memo[len(self.memo) if name == "MEMOIZE" else int(arg)] = self.stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in self.memo:
                raise _Broken(f"{name} of memo slot {arg}, never stored")
            self.stack.append(self.memo[int(arg)])
        elif name == "MARK":
            self.metastack.append(self.stack)
            self.stack = []
        elif name == "PROTO":
            if int(arg) > 5:
                raise _Broken(f"unsupported protocol {arg}")
            self.out.protocol = int(arg)
        elif name == "POP" and not self.stack:
            self.pop_mark()  # pickle's load_pop: an empty stack pops to the mark
        elif name == "DUP":
            self.stack.extend(self.pop(1) * 2)
        else:  # the opcode's documented stack effect (pickletools.OpcodeInfo)
            before = op.stack_before
            if pickletools.markobject in before:
                self.pop_mark()
                popped = self.pop(before.index(pickletools.markobject))
            else:
                popped = self.pop(len(before))
            if name in _MUTATORS:
                self.stack.append(self.mutated(popped[0], name, pos))
            else:
                self.stack.extend([_OTHER] * len(op.stack_after))

    def imported(self, module: str, name: str, pos: int, opcode: str) -> _Global:
        found = _Global(module, name)
        self.out.risky = self.out.risky or bool(_IDENT.match(module) and _IDENT.match(name))
        if found in self.out.globals:  # reported at its first import
            return found
        self.out.globals.append(found)
        if "." in name:
            message = f"global {found} ({opcode} at byte {pos}) is an attribute path"
            self.out.problems.append(("pickle.global_dotted_name", message))
        elif (module, name) not in PICKLE_ALLOWLIST:
            message = f"global {found} ({opcode} at byte {pos}) is not in the allowlist"
            self.out.problems.append(("pickle.global_not_allowed", message))
        return found

    def called(self, target: object, pos: int, opcode: str) -> object:
        if not isinstance(target, _Global):
            message = f"{opcode} at byte {pos} calls a value that is not a named import"
            self.out.problems.append(("pickle.call_on_unknown", message))
        return _OTHER

    def line_pair(self, pos: int) -> tuple[str, str]:
        """GLOBAL's and INST's operands as the unpickler reads them: two lines."""
        module, name, _ = self.data[pos + 1 :].split(b"\n", 2)
        return module.decode("utf-8"), name.decode("utf-8")

    def stack_global(self, pos: int) -> object:
        module, name = self.pop(2)
        if isinstance(module, str) and isinstance(name, str):
            return self.imported(module, name, pos, "STACK_GLOBAL")
        self.out.risky = True
        message = f"STACK_GLOBAL at byte {pos} imports names that are not constant strings"
        self.out.problems.append(("pickle.unresolved_global", message))
        return _OTHER

    def mutated(self, target: object, opcode: str, pos: int) -> object:
        """BUILD sets attributes of its target, APPEND and SETITEM call its methods: on an
        import they would rewrite the imported object itself."""
        if isinstance(target, _Global):
            message = f"{opcode} at byte {pos} modifies the global {target}"
            self.out.problems.append(("pickle.build_on_global", message))
        return target

    def extension(self, code: Any, pos: int) -> object:
        self.out.extension = True
        message = f"EXT opcode at byte {pos} imports extension code {code} (copyreg registry)"
        self.out.problems.append(("pickle.extension_code", message))
        return _OTHER


def _obj(w: _Walker, pos: int) -> object:
    items = w.pop_mark()
    if not items:
        raise _Broken("OBJ without a class")
    return w.called(items[0], pos, "OBJ")


def _inst(w: _Walker, pos: int) -> object:
    target = w.imported(*w.line_pair(pos), pos, "INST")  # pickle imports, then pops the mark
    w.pop_mark()
    return w.called(target, pos, "INST")


# Opcodes that import, call or set attributes: each returns the value it pushes.
_STEPS: dict[str, Callable[[_Walker, Any, int], object]] = {
    "GLOBAL": lambda w, arg, pos: w.imported(*w.line_pair(pos), pos, "GLOBAL"),
    "STACK_GLOBAL": lambda w, arg, pos: w.stack_global(pos),
    "INST": lambda w, arg, pos: _inst(w, pos),
    "OBJ": lambda w, arg, pos: _obj(w, pos),
    "REDUCE": lambda w, arg, pos: w.called(w.pop(2)[0], pos, "REDUCE"),
    "NEWOBJ": lambda w, arg, pos: w.called(w.pop(2)[0], pos, "NEWOBJ"),
    "NEWOBJ_EX": lambda w, arg, pos: w.called(w.pop(3)[0], pos, "NEWOBJ_EX"),
    "BUILD": lambda w, arg, pos: w.mutated(w.pop(2)[0], "BUILD", pos),
    "EXT1": lambda w, arg, pos: w.extension(arg, pos),
    "EXT2": lambda w, arg, pos: w.extension(arg, pos),
    "EXT4": lambda w, arg, pos: w.extension(arg, pos),
}
_PICKLE_OPCODES = frozenset(ord(op.code) for op in pickletools.opcodes)


def _walk_pickle(data: bytes, start: int = 0) -> _PickleWalk:
    return _Walker(data, start).walk()


def _is_proto(data: bytes, start: int = 0) -> bool:
    """A PROTO opcode: how every pickle of protocol 2 and up begins."""
    return len(data) >= start + 2 and data[start] == 0x80 and data[start + 1] <= 5
