"""The public API's signatures are fully typed: every parameter and return annotated, and no
`Any` in them, neither written out nor hidden in a bare generic (`list`, `Callable`) that
means `list[Any]`. Users' type checkers read these signatures (nbcluster ships py.typed)."""

from __future__ import annotations

import ast
import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterator

import nbcluster

# Methods of the stdlib classes ours extend (Future, Exception...) are typed by typeshed;
# what we write is what a class defines itself or gets from an nbcluster base class.
ENTRY_DUNDERS = {"__init__", "__call__", "__iter__", "__enter__", "__exit__", "__aiter__",
                 "__await__", "__len__", "__getitem__"}


def is_public(name: str) -> bool:
    return not name.startswith("_") or name in ENTRY_DUNDERS


def own_members(cls: type) -> Iterator[tuple[str, object]]:
    """(name, member) of what cls and its nbcluster bases define, public ones only."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("nbcluster"):
            continue
        for name, member in vars(klass).items():
            if name not in seen and is_public(name):
                seen.add(name)
                yield name, member


GENERIC_MODULES = ("builtins", "collections.abc", "typing", "collections", "os", "re")


def is_bare_generic(hint: object) -> bool:
    """A generic class without its parameters (`list`, `TaskFuture`): they mean Any."""
    if typing.get_origin(hint) is not None or not isinstance(hint, type):
        return False
    return bool(getattr(hint, "__parameters__", ())) or (
        hasattr(hint, "__class_getitem__") and hint.__module__ in GENERIC_MODULES)


def hidden_any(hint: object) -> str | None:
    """Where hint holds Any (written, or as a bare generic); None if it holds none."""
    if hint is typing.Any:
        return "Any"
    if is_bare_generic(hint):
        name = getattr(hint, "__qualname__", repr(hint))
        return f"bare generic {name} (its parameters mean Any)"
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Callable and args and args[0] is Ellipsis:
        args = args[1:]   # Callable[..., R]: the `...` is "any arguments", not Any
    for arg in args:
        if isinstance(arg, list):   # Callable[[A, B], R]: its parameter types
            found = next(filter(None, map(hidden_any, arg)), None)
        elif arg is Ellipsis or arg is None or isinstance(arg, (int, str, bytes)):
            continue   # tuple[int, ...], or a Literal's value
        else:
            found = hidden_any(arg)
        if found:
            return found
    return None


@functools.cache
def type_checking_names(module_name: str) -> dict[str, object]:
    """The names a module imports under `if TYPE_CHECKING:` (kept out of its run time to
    stay light), so that its annotations resolve here."""
    module = sys.modules[module_name]
    names: dict[str, object] = {}
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            namespace = dict(vars(module))
            exec(compile(ast.Module(node.body, []), module.__file__, "exec"), namespace)
            names.update({k: v for k, v in namespace.items() if k not in vars(module)})
    return names


def problems_of(where: str, fn: Callable[..., object], *, bound: bool) -> list[str]:
    fn = inspect.unwrap(fn)
    try:
        module = fn.__module__
        extra = type_checking_names(module) if module in sys.modules else {}
        hints = typing.get_type_hints(fn, globalns={**vars(sys.modules[module]), **extra}
                                      if module in sys.modules else None)
    except Exception as e:   # noqa: BLE001 - an annotation that does not resolve is a finding
        return [f"{where}: annotations do not resolve: {e!r}"]
    found = []
    params = list(inspect.signature(fn).parameters.values())
    for i, p in enumerate(params):
        if bound and i == 0 and p.name in ("self", "cls"):
            continue
        if p.name not in hints:
            found.append(f"{where}: parameter {p.name} is not annotated")
        elif (why := hidden_any(hints[p.name])) is not None:
            found.append(f"{where}: parameter {p.name}: {why}")
    if fn.__name__ != "__init__":
        if "return" not in hints:
            found.append(f"{where}: return is not annotated")
        elif (why := hidden_any(hints["return"])) is not None:
            found.append(f"{where}: returns {why}")
    return found


def public_api_problems() -> list[str]:
    found: list[str] = []
    for name in nbcluster.__all__:
        obj = getattr(nbcluster, name)
        if isinstance(obj, type):
            for attr, member in own_members(obj):
                where = f"{name}.{attr}"
                if isinstance(member, property):
                    if member.fget is not None:
                        found += problems_of(where, member.fget, bound=True)
                elif isinstance(member, (staticmethod, classmethod)):
                    found += problems_of(where, member.__func__,
                                         bound=isinstance(member, classmethod))
                elif isinstance(member, types.FunctionType):
                    found += problems_of(where, member, bound=True)
        elif callable(obj):
            found += problems_of(name, obj, bound=False)
    return found


def test_public_signatures_are_typed_without_any():
    found = public_api_problems()
    assert not found, "\n".join([f"{len(found)} untyped or Any signatures:", *found])


def test_the_check_finds_what_it_looks_for():
    """The checker itself: it must see each kind of hole."""
    def untyped(x, y: int):   # no return, x bare
        return x

    def with_any(x: typing.Any, y: list[typing.Any] | None) -> dict[str, typing.Any]:
        return {}

    def bare(x: list, y: Callable) -> tuple:
        return ()

    def fine(x: Callable[..., int], y: dict[str, list[int]] | None, *a: object,
             **k: object) -> Iterator[bytes]:
        yield b""

    assert len(problems_of("untyped", untyped, bound=False)) == 2
    assert len(problems_of("with_any", with_any, bound=False)) == 3
    assert len(problems_of("bare", bare, bound=False)) == 3
    assert problems_of("fine", fine, bound=False) == []
