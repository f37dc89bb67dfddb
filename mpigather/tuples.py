"""``NamedTuple``, as ``typing``'s, but quick to define: ``class Hello(NamedTuple): host: str``.

The wire messages, result headers, table leaves and scheduler chunks are named tuples: they
pickle as small tuples, and ``match`` reads them by field. ``typing.NamedTuple`` costs 0.1-0.25
ms to define each one (``collections.namedtuple`` compiles a constructor for it, and ``typing``
checks each annotation), and a master defines about 30 of them before its first result. This
one builds the same kind of class (a tuple subclass with a property per field, ``_fields``,
``_field_defaults``, ``__match_args__``, ``_replace``, ``_asdict``, ``_make``) with nothing to
compile; type checkers see ``typing.NamedTuple`` itself.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Any

__all__ = ["NamedTuple"]

try:  # CPython's fast field accessor, as collections.namedtuple uses
    from _collections import _tuplegetter
except ImportError:  # pragma: no cover - another Python

    def _tuplegetter(index: int, doc: str) -> Any:
        return property(itemgetter(index), doc=doc)


_new = tuple.__new__


def _annotations(ns: dict[str, Any]) -> dict[str, Any]:
    """A class body's annotations: its ``__annotations__``, or (Python 3.14, PEP 649) what its
    ``__annotate__`` gives without evaluating them."""
    if "__annotations__" in ns:
        return dict(ns["__annotations__"])
    annotate = ns.get("__annotate__")
    if annotate is None:
        return {}
    import annotationlib  # type: ignore[import-not-found,unused-ignore]

    return dict(annotationlib.call_annotate_function(annotate, annotationlib.Format.FORWARDREF))


class _Meta(type):
    """Makes each class statement's annotated names its fields, in order, with their defaults."""

    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, Any]) -> Any:
        if bases == (tuple,):  # the base class itself
            return super().__new__(mcs, name, bases, ns)
        fields = tuple(_annotations(ns))
        defaults = {f: ns.pop(f) for f in fields if f in ns}
        required = len(fields) - len(defaults)
        if any(f in defaults for f in fields[:required]):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        for i, f in enumerate(fields):
            if f.startswith("_"):
                raise ValueError(f"{name}: field names cannot start with an underscore: {f!r}")
            ns[f] = _tuplegetter(i, f"Alias for field number {i}")
        ns.update(__slots__=(), _fields=fields, __match_args__=fields, _field_defaults=defaults,
                  _n=len(fields), _required=required, _tail=tuple(defaults.values()))
        return super().__new__(mcs, name, bases, ns)


class _Base(tuple, metaclass=_Meta):  # type: ignore[type-arg]
    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _field_defaults: dict[str, Any] = {}
    _n = 0
    _required = 0
    _tail: tuple[Any, ...] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if not kwargs:
            n = len(args)
            if n == cls._n:
                return _new(cls, args)
            if cls._required <= n < cls._n:
                return _new(cls, args + cls._tail[n - cls._required:])
        return _new(cls, cls._complete(args, kwargs))

    @classmethod
    def _complete(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        """The values of every field, from the arguments given and the defaults."""
        fields = cls._fields
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__}() takes {len(fields)} positional arguments but {len(args)} were given")
        values = list(args)
        for f in fields[: len(args)]:
            if f in kwargs:
                raise TypeError(f"{cls.__name__}() got multiple values for argument {f!r}")
        for f in fields[len(args):]:
            if f in kwargs:
                values.append(kwargs.pop(f))
            elif f in cls._field_defaults:
                values.append(cls._field_defaults[f])
            else:
                raise TypeError(f"{cls.__name__}() missing required argument: {f!r}")
        if kwargs:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return values

    @classmethod
    def _make(cls, iterable: Any) -> Any:
        values = _new(cls, iterable)
        if len(values) != cls._n:
            raise TypeError(f"expected {cls._n} arguments, got {len(values)}")
        return values

    def _replace(self, **changes: Any) -> Any:
        values = [changes.pop(f, v) for f, v in zip(self._fields, self)]
        if changes:
            raise ValueError(f"got unexpected field names: {list(changes)!r}")
        return _new(type(self), values)

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self))

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={v!r}' for f, v in zip(self._fields, self))})"


if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    NamedTuple = _Base
