"""Build the synfast Cython extensions against the system's LMDB C library.

LMDB is found with pkg-config (module name ``lmdb``) and is never vendored: the
library that the service itself links against is the one whose file format and
locking we must match.  When it is missing the build stops with one line that
says what to install, instead of a compiler error about ``lmdb.h``.
"""

import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, setup

MISSING_LMDB = (
    "synfast: the LMDB C library was not found by pkg-config (module 'lmdb'); install it: "
    "Debian/Ubuntu: apt-get install liblmdb-dev pkg-config | Fedora/RHEL: dnf install "
    "lmdb-devel pkgconf-pkg-config | Alpine: apk add lmdb-dev pkgconf | macOS: brew install "
    "lmdb pkg-config"
)


def pkg_config(*args: str) -> list[str]:
    """Return pkg-config's answer for lmdb as compiler/linker words, or stop the build."""
    exe = shutil.which("pkg-config") or shutil.which("pkgconf")
    if exe is None:
        sys.exit(MISSING_LMDB)
    proc = subprocess.run([exe, *args, "lmdb"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(MISSING_LMDB)
    return shlex.split(proc.stdout)


def extensions() -> list[Extension]:
    pkg_config("--exists")
    cflags = pkg_config("--cflags")
    libs = pkg_config("--libs")

    from Cython.Build import cythonize

    common = dict(
        define_macros=[("_GNU_SOURCE", "1"), ("_FILE_OFFSET_BITS", "64")],
        extra_compile_args=["-O2", "-Wall", *cflags],
        include_dirs=["ext/includes", "ext/backup"],
    )
    # Each extension lives beside the one package that imports it, and its
    # source under ext/ in a folder of the same name.
    exts = [
        Extension("synfast.files._sparse", ["ext/files/_sparse.pyx"], **common),
        Extension("synfast.files._durable", ["ext/files/_durable.pyx"], **common),
        Extension("synfast.lmdb._lmdb", ["ext/lmdb/_lmdb.pyx"], extra_link_args=libs, **common),
        Extension("synfast.lmdb._rebuild", ["ext/lmdb/_rebuild.pyx"], extra_link_args=libs,
                  **common),
        Extension("synfast.backup._hash", ["ext/backup/_hash.pyx"],
                  depends=["ext/backup/blake2b4.h"], **common),
    ]
    # ext/includes: C declarations, one .pxd per C header (cimported);
    # ext/common: code that extensions of several packages share (.pxi, included).
    return cythonize(
        exts,
        include_path=["ext/includes", "ext/common"],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(ext_modules=extensions())
