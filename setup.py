"""Build of the optional compiled decoder (``traceview.load._simd``); everything else is in pyproject.toml.

The extension links the system's simdjson (Debian/Ubuntu: ``apt-get install g++ libsimdjson-dev``,
found with pkg-config).  It is optional: where the compiler, the headers or the library are
missing, the build prints why and goes on without it, and traceview decodes with its pure-Python
path (same results).  ``TRACEVIEW_NO_EXTENSION=1`` skips it on purpose.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _pkg_config(*args: str) -> list[str] | None:
    try:
        out = subprocess.run(["pkg-config", *args, "simdjson"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out)


class OptionalBuildExt(build_ext):
    """A failed extension build is a warning, not an error: the pure-Python path remains."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler at all
            print(f"traceview: not building the compiled decoder ({e}); the pure-Python path will be used")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # missing simdjson headers or library, compile error
            print(f"traceview: not building {ext.name} ({e}); the pure-Python path will be used")


def _extensions() -> list[Extension]:
    if os.environ.get("TRACEVIEW_NO_EXTENSION"):
        return []
    cflags = _pkg_config("--cflags") or []
    libs = _pkg_config("--libs") or ["-lsimdjson"]
    return [Extension(
        "traceview.load._simd",
        sources=["traceview/load/_simd.cpp"],
        language="c++",
        extra_compile_args=["-std=c++17", "-O2", *cflags],
        extra_link_args=libs,
        optional=True,
    )]


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
