"""Reading a pickle without running it: every global becomes an inert stand-in.

``walk`` unpickles with a ``find_class`` that never imports anything: each global is a fresh
stand-in class named after it, calling one records the call, and ``BUILD`` records the state. The
tree that comes back holds only plain Python values and stand-ins, so nothing in an untrusted file
can run (no import, no call of a real function). ``globals_in`` lists the globals a pickle names
from its opcodes alone (``pickletools``), for a file too broken to walk.
"""

from __future__ import annotations

import copyreg
import pickle
import pickletools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, ClassVar

# How ``torch.load`` decodes a Python 2 pickle's byte strings (``SHORT_BINSTRING``,
# ``BINSTRING``) unless told otherwise: its ``encoding`` argument's default.
TORCH_ENCODING = "utf-8"

# When a global is dangerous (``!!! DANGER``): only where it is known to run code or a command,
# import a module, or write or delete files. A global that is merely unknown is no danger: a
# ``weights_only`` load refuses it, and ``inspect`` says so (exit 1). A false alarm on a real file
# would teach people to ignore the warning, so both lists are exact:
#
# - modules named whole (the first part of a global's module path): each has members that run
#   commands or code, import modules or touch files, and no checkpoint has a reason to name any of
#   its members (``os.path.join`` is harmless, but a file that names it is no checkpoint either);
# - (module, name) pairs, for modules whose other members are ordinary (``builtins.set`` is a
#   checkpoint's; ``builtins.eval`` runs code). ``functools.partial`` is not here: by itself it
#   calls nothing dangerous (a scheduler's ``lr_lambda`` pickles one), and a payload wrapped in it
#   still names the dangerous global it wraps.
CODE_RUNNING_MODULES = frozenset(
    {
        "os",  # system, popen, exec*, spawn*, remove...
        "posix",  # os on Linux and macOS: what os.system pickles as
        "nt",  # os on Windows
        "subprocess",
        "_posixsubprocess",
        "pty",  # spawn
        "commands",  # Python 2's getoutput
        "popen2",  # Python 2
        "runpy",  # run_path, run_module
        "importlib",  # import_module runs a module's code
        "imp",
        "pkgutil",  # resolve_name imports
        "zipimport",
        "shutil",  # rmtree, move, copyfile
        "socket",
        "sys",  # sys.modules, settrace, exit...
        "ctypes",  # native calls
        "_ctypes",
        "marshal",  # code objects
        "pickle",  # loads: a pickle inside a pickle runs its own globals
        "_pickle",
        "dill",
        "cloudpickle",
        "code",  # InteractiveInterpreter.runsource
        "codeop",
        "pdb",  # run, runeval
        "bdb",
        "timeit",  # timeit(stmt) executes stmt
        "webbrowser",  # open runs a browser command
        "multiprocessing",  # util.spawnv_passfds runs a program
    }
)
CODE_RUNNING_GLOBALS = frozenset(
    {
        *(
            f"{module}.{name}"
            for module in ("builtins", "__builtin__")
            for name in (
                "eval",
                "exec",
                "execfile",
                "compile",
                "__import__",
                "open",
                "file",
                "input",
                "raw_input",
                "reload",
                "getattr",  # reaches any attribute: getattr(obj, "system")
                "setattr",
                "delattr",
                "globals",
                "breakpoint",
            )
        ),
        "types.FunctionType",  # builds a function from a code object
        "types.CodeType",
        "operator.attrgetter",  # getattr and method calls by name, the gadgets of payloads
        "operator.methodcaller",
        "io.open",
        "io.FileIO",
        "_io.open",
        "_io.FileIO",
        "codecs.open",
        "platform.popen",  # Python 2
        "asyncio.create_subprocess_shell",
        "asyncio.create_subprocess_exec",
        *(
            f"pathlib.{cls}.{method}"
            for cls in ("Path", "PosixPath", "WindowsPath")
            for method in ("write_text", "write_bytes", "unlink", "rmdir", "rename", "replace")
        ),
        "numpy.testing._private.utils.runstring",  # exec
        "torch.load",  # a torch.load inside a pickle loads another file, weights_only or not
        "torch.serialization.load",
        "torch.jit.load",
        "torch.hub.load",
        "torch.hub.load_state_dict_from_url",
        "torch.hub.download_url_to_file",
        "torch.utils.cpp_extension.load",  # compiles and imports code
        "torch.utils.cpp_extension.load_inline",
        "torch.ops.load_library",
        "torch.classes.load_library",
    }
)

# TorchScript's own list builders, which torch.jit.load names in every archive's pickles.
TORCHSCRIPT_GLOBALS = frozenset(
    f"torch.jit._pickle.{name}"
    for name in (
        "build_intlist",
        "build_tensorlist",
        "build_doublelist",
        "build_boollist",
        "build_tensor_from_id",
        "restore_type_tag",
    )
)

# A global reached through another module's attributes (``torch.serialization.os.system``, a
# protocol-4 pickle's dotted name) is that module's: any part after the first that names one of
# these modules is such a path. ``_pickle`` is not here: it counts only as a module path's first
# part, since ``torch.jit._pickle`` is TorchScript's own module, not the interpreter's.
_REACHED = (CODE_RUNNING_MODULES - {"_pickle"}) | {"builtins", "__builtin__", "__builtins__"}


def runs_code(name: str) -> bool:
    """Whether calling the global ``module.name`` is known to run code or a command, import a
    module or write files, directly or through another module's attributes."""
    if name in TORCHSCRIPT_GLOBALS:
        return False
    parts = name.split(".")
    if name in CODE_RUNNING_GLOBALS or parts[0] in CODE_RUNNING_MODULES:
        return True
    if any(part in _REACHED for part in parts[1:-1]):
        return True
    return any(
        ".".join(parts[i:j]) in CODE_RUNNING_GLOBALS
        for i in range(1, len(parts))
        for j in range(i + 2, len(parts) + 1)
    )


class Stub:
    """A global as the pickle names it, never imported. Instances are its calls (``REDUCE``,
    ``NEWOBJ``) with their arguments, and the state ``BUILD`` gave them, and the items a pickled
    ``OrderedDict`` or list subclass was filled with."""

    name: ClassVar[str] = ""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: dict[Any, Any]
    elements: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:  # REDUCE and NEWOBJ both come here
        instance = super().__new__(cls)
        instance.args, instance.kwargs, instance.state = args, kwargs, None
        instance.items, instance.elements = {}, []
        if cls.name in _MAPPINGS and args:
            # Python 2 pickles an OrderedDict as a call with its items: OrderedDict([[k, v], ...])
            instance.items.update(_pairs(args[0]))
        return instance

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.elements.append(value)

    def extend(self, values: Any) -> None:
        self.elements.extend(values)

    def __repr__(self) -> str:
        return f"<{self.name}>"


_MAPPINGS = frozenset({"collections.OrderedDict", "builtins.dict", "__builtin__.dict"})


def _pairs(value: Any) -> dict[Any, Any]:
    """A mapping's items given to its constructor: a dict, or a list of (key, value) pairs."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list | tuple) and all(
        isinstance(pair, list | tuple) and len(pair) == 2 for pair in value
    ):
        try:
            return {pair[0]: pair[1] for pair in value}
        except TypeError:  # an unhashable key: not a mapping's items
            return {}
    return {}


def stub_class(module: str, name: str) -> type[Stub]:
    return type(name, (Stub,), {"name": f"{module}.{name}", "__module__": "harness.inspect.stub"})


@dataclass(frozen=True, kw_only=True)
class PersistentRef:
    """A ``persistent_id`` the pickle refers to: for torch, a storage (type, key, location)."""

    ident: tuple[Any, ...]


class InertUnpickler(pickle.Unpickler):
    """Unpickles into stand-ins; records every global it met, in order."""

    def __init__(
        self,
        file: IO[bytes],
        persistent: Callable[[Any], Any] | None = None,
        *,
        encoding: str = TORCH_ENCODING,
    ) -> None:
        super().__init__(file, encoding=encoding)
        self.met: list[str] = []
        self.pairs: list[tuple[str, str]] = []  # (module, name) as the pickle split them
        self._persistent = persistent
        self._classes: dict[str, type[Stub]] = {}

    def find_class(self, module: str, name: str) -> type[Stub]:
        full = f"{module}.{name}"
        if full not in self._classes:
            self._classes[full] = stub_class(module, name)
            self.met.append(full)
            self.pairs.append((module, name))
        return self._classes[full]

    def load(self) -> Any:
        try:
            return super().load()
        finally:
            forget_stubs()

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is not None:
            return self._persistent(pid)
        return PersistentRef(ident=tuple(pid) if isinstance(pid, tuple) else (pid,))


MAX_NESTING = 500  # no checkpoint nests this deep; a pickle that does is refused unread


class TooDeep(ValueError):
    """A pickle nests its values deeper than :data:`MAX_NESTING`: refused before unpickling,
    since a deep enough tuple crashes the interpreter's own unpickler (a C stack overflow)."""


def walk(file: IO[bytes]) -> tuple[Any, list[str]]:
    """One pickle from ``file`` as a tree of plain values and stand-ins, and the globals it
    named. Raises what ``pickle`` raises for a broken pickle (``UnpicklingError``, ``EOFError``,
    ``ValueError``...), and :class:`TooDeep`."""
    unpickler = walker(file)
    return unpickler.load(), unpickler.met


def forget_stubs() -> None:
    """``EXT`` opcodes cache what ``find_class`` returned in copyreg's process-wide cache; a
    stand-in left there would answer a later, real unpickling in this process."""
    for code, value in list(copyreg._extension_cache.items()):  # type: ignore[attr-defined]
        if isinstance(value, type) and issubclass(value, Stub):
            del copyreg._extension_cache[code]  # type: ignore[attr-defined]


def walker(
    file: IO[bytes],
    *,
    encoding: str = TORCH_ENCODING,
    persistent: Callable[[Any], Any] | None = None,
) -> InertUnpickler:
    """An inert unpickler for the next pickle in ``file``, once its nesting was checked; it
    decodes Python 2 byte strings with ``encoding``, as ``torch.load(encoding=...)`` does."""
    start = file.tell()
    depth = nesting(file)
    if depth > MAX_NESTING:
        raise TooDeep(f"values nested {depth} deep (more than {MAX_NESTING}): not a checkpoint")
    file.seek(start)
    return InertUnpickler(file, persistent, encoding=encoding)


_MUTATORS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "BUILD", "ADDITEMS"})
_MARK = -1


def nesting(file: IO[bytes]) -> int:
    """How deep the next pickle in ``file`` nests its values, from its opcodes alone (a small
    stack machine over ``pickletools``' stack effects); stops at its end or where it breaks."""
    stack: list[int] = []
    memo: dict[Any, int] = {}
    deepest = 0
    try:
        for opcode, arg, _ in pickletools.genops(file):
            name = opcode.name
            if name == "MARK":
                stack.append(_MARK)
                continue
            before = opcode.stack_before
            if pickletools.markobject in before:  # pops to the last mark, then what is under
                under = before.index(pickletools.markobject)  # APPENDS: the list
                sliced: list[int] = []
                if _MARK in stack:
                    mark = len(stack) - 1 - stack[::-1].index(_MARK)
                    sliced = stack[mark + 1 :]
                    del stack[mark:]
                below = [stack.pop() for _ in range(min(under, len(stack)))][::-1]
                popped = below + sliced
            else:
                count = min(len(before), len(stack))
                popped = stack[len(stack) - count :] if count else []
                del stack[len(stack) - count :]
            items = [d for d in popped if d != _MARK]
            if name in _MUTATORS and opcode.stack_after:
                container = items[0] if items else 0
                depth = max([container, *[d + 1 for d in items[1:]]])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                depth = items[-1] if items else 0
                memo[arg if name != "MEMOIZE" else len(memo)] = depth
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                depth = memo.get(arg, 0)
            elif name == "DUP":
                depth = items[-1] if items else 0
                stack.append(depth)
            else:
                depth = 1 + max(items) if items else 0
            deepest = max(deepest, depth)
            stack.extend(depth for _ in opcode.stack_after)
            if depth > MAX_NESTING:
                return depth
    except (ValueError, EOFError, pickle.UnpicklingError):
        pass
    return deepest


def globals_in(data: bytes) -> list[str]:
    """The globals a pickle names, from its opcodes (``GLOBAL``, ``INST``, and ``STACK_GLOBAL``
    with the two strings pushed before it, memoized ones included), read up to where the pickle
    breaks: for a pickle too damaged to walk."""
    found: list[str] = []
    pushed: list[str | None] = []  # what each opcode pushed: a string, or None for the rest
    memo: dict[int, str | None] = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif name == "STACK_GLOBAL" and len(pushed) >= 2:
                module, attribute = pushed[-2], pushed[-1]
                if module is not None and attribute is not None:
                    found.append(f"{module}.{attribute}")
            if isinstance(arg, str) and ("UNICODE" in name or name.endswith("STRING")):
                pushed.append(arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int):
                memo[arg] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET") and isinstance(arg, int):
                pushed.append(memo.get(arg))
            else:
                pushed.append(None)
    except (ValueError, EOFError, pickle.UnpicklingError):
        pass
    return list(dict.fromkeys(found))


def name_of(value: Any) -> str | None:
    """The global a stand-in class or instance stands for, else None."""
    if isinstance(value, type) and issubclass(value, Stub):
        return value.name
    if isinstance(value, Stub):
        return type(value).name
    return None


def children(value: Any) -> Iterator[tuple[str, Any]]:
    """The named parts of a container or stand-in: dict keys, list indexes, a stand-in's items,
    elements, and its state's entries."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key), item
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield str(index), item
    elif isinstance(value, Stub):
        for key, item in value.items.items():
            yield str(key), item
        for index, item in enumerate(value.elements):
            yield str(index), item
        yield from ((str(key), item) for key, item in state_of(value).items())


def state_of(value: Any) -> dict[str, Any]:
    """The state ``BUILD`` gave a stand-in, as one mapping (a ``(dict, slots)`` pair merged);
    empty for anything else."""
    state = value.state if isinstance(value, Stub) else None
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        return {**(state[0] or {}), **state[1]}
    return state if isinstance(state, dict) else {}
