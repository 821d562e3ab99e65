"""Frozen records for the modules a one-shot command imports, made without exec.

`@dataclass(frozen=True)` compiles six methods from source text for every
class when its module is imported (`__init__`, `__repr__`, `__eq__`,
`__hash__`, `__setattr__`, `__delattr__`): about 1.4 ms a class on the
project's machine. A one-day `kvm-digest digest` imports 27 records (the
config's sections, the digest's lines, the range and search types), so
dataclasses were a fifth of its start-up (issue 25: start-up <= 8x a bare
interpreter). A Record reads its fields from the class's annotations once,
when the class is made, and every record shares one `__init__`.

What a record does is what a frozen dataclass does, so the classes read the
same: fields in annotation order (a subclass's after its base's), defaults,
`field(default_factory=...)`, positional or keyword construction,
`__post_init__`, `==` and `hash()` by value within one class, a repr that
names every field, and no assignment after construction. `replace()` and
`fields()` stand in for their `dataclasses` namesakes. Modules that only the
daemon imports keep `dataclasses`: they are made once a process lifetime.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, TypeVar

R = TypeVar("R", bound="Record")


_NO_DEFAULT = object()


class _Field:
    """A field's default and whether its repr shows it (a password's does not)."""

    __slots__ = ("default", "make", "shown")

    def __init__(self, default: Any, make: Callable[[], Any] | None, shown: bool) -> None:
        self.default, self.make, self.shown = default, make, shown


def field(
    *,
    default: Any = _NO_DEFAULT,
    default_factory: Callable[[], Any] | None = None,
    repr: bool = True,
) -> Any:
    """A field with a default made for each record (a new list, say), or kept out of repr."""
    return _Field(default, default_factory, repr)


def _is_classvar(hint: object) -> bool:
    if isinstance(hint, str):  # `from __future__ import annotations`
        return hint.startswith(("ClassVar", "typing.ClassVar"))
    return typing.get_origin(hint) is ClassVar


@typing.dataclass_transform(eq_default=True, frozen_default=True, field_specifiers=(field,))
class Record:
    """A frozen record; subclasses annotate their fields as for a dataclass."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _field_defaults: ClassVar[dict[str, Any]] = {}
    _hidden: ClassVar[frozenset[str]] = frozenset()
    _post_init: ClassVar[Callable[[Record], None] | None] = None
    _names: ClassVar[frozenset[str]] = frozenset()
    _constants: ClassVar[dict[str, Any]] = {}
    _factories: ClassVar[tuple[tuple[str, Callable[[], Any]], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = list(cls._fields)
        defaults = dict(cls._field_defaults)
        hidden = set(cls._hidden)
        # inspect.get_annotations reads the same dict, at the price of importing inspect.
        for name, hint in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
            if _is_classvar(hint):
                continue
            if name not in names:
                names.append(name)
            value = cls.__dict__.get(name, _NO_DEFAULT)
            if isinstance(value, _Field):
                if not value.shown:
                    hidden.add(name)
                if value.make is not None:
                    delattr(cls, name)  # as dataclasses does: no shared default to find
                else:
                    value = value.default
                    setattr(cls, name, value)
            if value is not _NO_DEFAULT:
                defaults[name] = value
            else:
                defaults.pop(name, None)  # annotated again without a default: required
        first_default = ""
        for name in names:
            if name in defaults:
                first_default = first_default or name
            elif first_default:
                raise TypeError(
                    f"{cls.__name__}: field {name}, without a default, follows {first_default}"
                )
        cls._fields = tuple(names)
        cls._field_defaults = defaults
        cls._hidden = frozenset(hidden)
        cls._post_init = getattr(cls, "__post_init__", None)
        cls._names = frozenset(names)
        cls._constants = {n: v for n, v in defaults.items() if not isinstance(v, _Field)}
        cls._factories = tuple((n, v.make) for n, v in defaults.items() if isinstance(v, _Field))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The one write (__setattr__ refuses). Every field given in order is the
        # common case (rows from SQLite, commits from git): nothing to look up.
        if kwargs or len(args) != len(self._fields):
            self.__dict__.update(self._complete(args, kwargs))
        else:
            self.__dict__.update(zip(self._fields, args, strict=True))
        if self._post_init is not None:
            self._post_init()

    @classmethod
    def _complete(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Every field's value, from those given and the defaults (dict
        operations only: a digest makes a few thousand records by keyword)."""
        names = cls._fields
        if not cls._names.issuperset(kwargs):
            unknown = next(name for name in kwargs if name not in cls._names)
            raise TypeError(f"{cls.__name__} has no field {unknown}")
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes {len(names)} fields, not {len(args)}")
        values = dict(cls._constants)
        if args:
            twice = [name for name in names[: len(args)] if name in kwargs]
            if twice:
                raise TypeError(f"{cls.__name__} got two values for {twice[0]}")
            values.update(zip(names, args, strict=False))
        values.update(kwargs)
        for name, make in cls._factories:
            if name not in values:
                values[name] = make()
        if len(values) < len(names):
            missing = next(name for name in names if name not in values)
            raise TypeError(f"{cls.__name__} needs a value for {missing}")
        return values

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a {type(self).__name__}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(self.__dict__[name] for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={self.__dict__[name]!r}" for name in self._fields if name not in self._hidden
        )
        return f"{type(self).__qualname__}({shown})"


def replace(record: R, **changes: Any) -> R:
    """A copy of `record` with some fields changed (checked as at construction)."""
    cls = type(record)
    if not cls._names.issuperset(changes):
        unknown = next(name for name in changes if name not in cls._names)
        raise TypeError(f"{cls.__name__} has no field {unknown}")
    copy = cls.__new__(cls)
    copy.__dict__.update({name: record.__dict__[name] for name in cls._fields}, **changes)
    if copy._post_init is not None:
        copy._post_init()
    return copy


def fields(cls: type[Record] | Record) -> tuple[str, ...]:
    """The names of a record's fields, in order."""
    return cls._fields


def default(cls: type[Record], name: str) -> Any:
    """What a field of `cls` holds when not given (a new one, for a factory)."""
    value = cls._field_defaults[name]
    return value.make() if isinstance(value, _Field) else value


D = TypeVar("D")


def pickled_as_values(cls: type[D]) -> type[D]:
    """A dataclass whose instances pickle as their field values, in order.

    Parser workers send every parsed message to the writer's process
    (bot/parse/pool.py). By default pickle writes each instance as its
    class's `__reduce_ex__` answer, a dict of field names to values, and
    rebuilds it through `copyreg` and `__setstate__`: for the 15,000
    messages of an import that is 0.9 s of CPU on the two sides, against
    0.6 s as plain tuples, and both cores are busy parsing.
    """
    import dataclasses

    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def __reduce__(self: D) -> tuple[Callable[..., D], tuple[type[D], tuple[Any, ...]]]:
        return rebuilt, (type(self), tuple(values_of(self)))

    cls._pickled_fields = names  # type: ignore[attr-defined]
    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


def values_of(obj: object) -> list[Any]:
    """A pickled_as_values instance's field values, in order (what it pickles as)."""
    state = obj.__dict__
    return [state[name] for name in type(obj)._pickled_fields]  # type: ignore[attr-defined]


def rebuilt(cls: type[D], values: tuple[Any, ...] | list[Any]) -> D:
    """An instance from its field values (no __init__: they were checked when made)."""
    obj = object.__new__(cls)  # type: ignore[call-overload]
    obj.__dict__.update(zip(cls._pickled_fields, values, strict=True))  # type: ignore[attr-defined]
    return obj


class Wire(NamedTuple):
    """How worker processes send results back (bot/parse/pool.py): as builtins, by marshal.

    Pickle sends an object as its class and its state, rebuilt by a call a
    record; marshal sends tuples, lists, strings and numbers in C alone. For
    the epoch's 15,000 parsed messages, 0.34 s of CPU on the two sides
    against 0.58 s, on two cores that are busy parsing. `pack` runs in the
    worker and must return builtins only; `unpack` makes the result again.
    Both must be module-level functions, which pickle sends by name.
    """

    pack: Callable[[Any], object]
    unpack: Callable[[Any], Any]
