"""Build the compiled core.

Each module in ``core_ext/pure/`` is Cython pure-Python mode: it runs as
ordinary Python, and the same source is compiled here under a second name,
``core_ext.compiled.<module>``, so both builds import side by side and the
tests can prove they agree.

Declarations live in ``core_ext/compiled/<module>.pxd``: Cython looks for a module's
augmenting .pxd by the module's full name (``core_ext.compiled.X`` ->
``<root>/core_ext/compiled/X.pxd``, the root being the directory above the source's
top package), not beside the source. ``cythonize``'s own change tracking only knows
``pure/X.pxd``, so a module is regenerated here whenever any ``compiled/*.pxd`` is newer
than its C file (the pxds cimport one another; there are few).

Switches (environment):
  KASSA_CORE_DEBUG=1   annotate HTML (``cython -a``), line tracing, bounds checks.
"""

import os
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
DEBUG = os.environ.get("KASSA_CORE_DEBUG") == "1"


def core_extensions():
    from Cython.Build import cythonize

    sources = sorted(
        p for p in (HERE / "core_ext" / "pure").glob("*.py") if p.name != "__init__.py"
    )
    pxds = sorted((HERE / "core_ext" / "compiled").glob("*.pxd"))
    newest_pxd = max((p.stat().st_mtime for p in pxds), default=0.0)
    for src in sources:
        c_file = src.with_suffix(".c")
        if c_file.exists() and c_file.stat().st_mtime < newest_pxd:
            c_file.unlink()  # stale against a declaration: regenerate
    extensions = [
        Extension(
            f"core_ext.compiled.{src.stem}",
            [str(src.relative_to(HERE))],
            depends=[str(p.relative_to(HERE)) for p in pxds],
            define_macros=[("CYTHON_TRACE", "1")] if DEBUG else [],
        )
        for src in sources
    ]
    return cythonize(
        extensions,
        annotate=DEBUG,
        compiler_directives={
            "language_level": "3",
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
            "linetrace": DEBUG,
            "embedsignature": True,
        },
    )


setup(ext_modules=core_extensions())
