"""The .pxd declarations really apply to the compiled build.

Cython reads a module's augmenting .pxd by the compiled module's name
(core_ext/compiled/<name>.pxd), not beside core_ext/pure/<name>.py; if a pxd stops
being read (moved, renamed, a module renamed), the compiled build still imports and
the parity tests still pass, only slower and untyped. This test parses every pxd and
fails if any declaration is not in force:

- a ``cdef`` function or method is not a Python-visible attribute of the compiled
  module or class (while the pure one has it), a ``cpdef`` one is visible in both;
- a ``cdef``-declared module variable is not visible in the compiled build;
- a ``cdef class`` is an extension type without an instance ``__dict__``, whose
  state holds exactly the declared fields, each rejecting a value of the wrong type
  (through Cython's generated ``__setstate_cython__``, which assigns every field);
- ``readonly`` fields read but cannot be set.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import core_ext
from tests.core.conftest import load

PXD_DIR = Path(core_ext.__file__).parent / "compiled"
PXDS = sorted(PXD_DIR.glob("*.pxd"))
NUMERIC = {
    "int",
    "long",
    "long long",
    "Py_ssize_t",
    "double",
    "float",
    "short",
    "unsigned int",
    "unsigned long",
    "unsigned long long",
    "size_t",
}
BUILTIN = {
    "str": ("", b"x"),
    "bytes": (b"", "x"),
    "dict": ({}, []),
    "list": ([], {}),
    "tuple": ((), []),
}


@dataclass
class CClass:
    name: str
    fields: dict = field(default_factory=dict)  # name -> (type, readonly)
    cdef_methods: list = field(default_factory=list)
    cpdef_methods: list = field(default_factory=list)


@dataclass
class Pxd:
    module: str
    cdef_functions: list = field(default_factory=list)
    cpdef_functions: list = field(default_factory=list)
    variables: list = field(default_factory=list)
    classes: list = field(default_factory=list)


FUNC = re.compile(r"^(cdef|cpdef)\s+(?!class\b).*?(\w+)\s*\(")
CLASS = re.compile(r"^cdef class (\w+)\s*:")
FIELD = re.compile(r"^\s+cdef\s+(readonly\s+|public\s+)?([\w ]+?)\s+(\w+)\s*$")
VARIABLE = re.compile(r"^cdef\s+([\w ]+?)\s+(\w+(?:\s*,\s*\w+)*)\s*$")


def parse(path: Path) -> Pxd:
    pxd = Pxd(path.stem)
    current = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith(("from ", "cimport ", "@")):
            continue
        if not line[0].isspace():
            current = None
            if m := CLASS.match(line):
                current = CClass(m[1])
                pxd.classes.append(current)
            elif m := FUNC.match(line):
                (pxd.cdef_functions if m[1] == "cdef" else pxd.cpdef_functions).append(m[2])
            elif m := VARIABLE.match(line):
                pxd.variables.extend(n.strip() for n in m[2].split(","))
        elif current is not None:
            if m := FUNC.match(line.strip()):
                (current.cdef_methods if m[1] == "cdef" else current.cpdef_methods).append(m[2])
            elif m := FIELD.match(line):
                current.fields[m[3]] = (m[2], bool(m[1] and "readonly" in m[1]))
    return pxd


DECLS = [parse(p) for p in PXDS]
# Core modules compiled without a pxd, because C types would not make them faster: the
# webhook signatures' time is all in hmac and base64 (measured: 16 us a signature either
# way; subscribed/status_class are already well under 1 us compiled, once per delivery).
UNDECLARED = {"webhooks"}


def test_every_core_module_has_its_pxd():
    assert {d.module for d in DECLS} == set(core_ext.MODULES) - UNDECLARED
    for d in DECLS:  # and the parse found something in each
        assert d.classes or d.cdef_functions or d.cpdef_functions, d.module


def values(type_name: str):
    """(a value of the declared type, a value of the wrong type or None if any goes)."""
    if type_name in NUMERIC:
        return (0.0 if type_name in ("double", "float") else 0), "not a number"
    if type_name in BUILTIN:
        return BUILTIN[type_name]
    if type_name in ("object", "bint"):
        return None, None
    return None, object()  # an extension type: None or an instance of it


@pytest.mark.parametrize("decl", DECLS, ids=lambda d: d.module)
def test_cdef_functions_are_c_only(decl):
    compiled, pure = load("compiled", decl.module), load("pure", decl.module)
    for name in decl.cdef_functions + decl.variables:
        assert hasattr(pure, name), f"pure {decl.module} has no {name}: stale pxd?"
        assert not hasattr(compiled, name), (
            f"core_ext.compiled.{decl.module}.{name} is Python-visible: its pxd is not applied"
        )
    for name in decl.cpdef_functions:
        assert callable(getattr(compiled, name)) and callable(getattr(pure, name)), name


@pytest.mark.parametrize(
    "decl,cclass",
    [(d, c) for d in DECLS for c in d.classes],
    ids=lambda x: getattr(x, "name", getattr(x, "module", None)),
)
def test_cdef_classes_are_typed_extension_types(decl, cclass):
    compiled, pure = load("compiled", decl.module), load("pure", decl.module)
    cls, pure_cls = getattr(compiled, cclass.name), getattr(pure, cclass.name)
    assert cls.__module__ == f"core_ext.compiled.{decl.module}"
    assert cls.__dictoffset__ == 0, f"{cclass.name} has an instance __dict__"
    assert pure_cls.__dictoffset__ != 0  # the pure twin is an ordinary class
    obj = cls.__new__(cls)
    assert not hasattr(obj, "__dict__")
    for name in cclass.cdef_methods:
        assert hasattr(pure_cls, name) and not hasattr(cls, name), (cclass.name, name)
    for name in cclass.cpdef_methods:
        assert hasattr(pure_cls, name) and hasattr(cls, name), (cclass.name, name)

    # Exactly the declared fields (Cython's pickle state lists them sorted by name) ...
    names = sorted(cclass.fields)
    state = obj.__reduce_cython__()[1][2]
    assert len(state) == len(names), (cclass.name, names, state)
    good = tuple(values(cclass.fields[n][0])[0] for n in names)
    obj.__setstate_cython__(good)
    # ... each typed: a wrong value is refused.
    for i, name in enumerate(names):
        type_name, readonly = cclass.fields[name]
        wrong = values(type_name)[1]
        if wrong is not None:
            with pytest.raises(TypeError):
                obj.__setstate_cython__((*good[:i], wrong, *good[i + 1 :]))
        if readonly:
            getattr(obj, name)
            with pytest.raises(AttributeError):
                setattr(obj, name, good[i])
        else:
            assert not hasattr(obj, name), f"{cclass.name}.{name} is visible: not declared?"
