"""Build the compiled core.

Each module in ``core_ext/pure/`` is Cython pure-Python mode: it runs as
ordinary Python, and the same source is compiled here under a second name,
``core_ext.compiled.<module>``, so both builds import side by side and the
tests can prove they agree.

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
    extensions = [
        Extension(
            f"core_ext.compiled.{src.stem}",
            [str(src.relative_to(HERE))],
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
