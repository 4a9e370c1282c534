"""Build configuration of the optional C extension ``otelprof_middleware._native``.

Everything else is declared in ``pyproject.toml``.  The extension is optional:
without a C compiler, on a platform other than Linux, or with
``OTELPROF_BUILD_NATIVE=0`` in the environment, ``pip install`` still succeeds
and the package uses its pure-Python sampler (see docs/sampling.md).
"""

import os
import sys

from setuptools import Extension, setup

SOURCES = ["module.c", "safe_read.c", "code_registry.c", "frames.c", "cpu_sampler.c", "thread_state.c", "alloc_hook.c", "lock_wrap.c"]


def _native_wanted() -> bool:
    if os.environ.get("OTELPROF_BUILD_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return sys.platform.startswith("linux") and sys.implementation.name == "cpython"


ext_modules = []
if _native_wanted():
    ext_modules.append(
        Extension(
            "otelprof_middleware._native",
            sources=[os.path.join("native", s) for s in SOURCES],
            depends=[os.path.join("native", "otelprof_native.h")],
            libraries=["rt", "m"],
            extra_compile_args=["-O2", "-fno-strict-aliasing", "-Wall", "-Wno-missing-field-initializers"],
            optional=True,  # a failed build leaves the pure-Python sampler, never a failed install
        )
    )

setup(ext_modules=ext_modules)
