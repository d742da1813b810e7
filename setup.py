"""Build the synfast Cython extensions against the system's LMDB and xxHash libraries.

Both are found with pkg-config (modules ``lmdb`` and ``libxxhash``) and never
vendored: the LMDB that the service itself links against is the one whose file
format and locking we must match, and the checksum comes from the
distribution's xxHash.  When one is missing the build stops with one line that
says what to install, instead of a compiler error about a header.
"""

import os
import platform
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


MISSING_XXHASH = (
    "synfast: the xxHash library was not found by pkg-config (module 'libxxhash'); install "
    "it: Debian/Ubuntu: apt-get install libxxhash-dev | Fedora/RHEL: dnf install xxhash-devel "
    "| Alpine: apk add xxhash-dev | macOS: brew install xxhash"
)


def pkg_config(*args: str, module: str = "lmdb", missing: str = MISSING_LMDB) -> list[str]:
    """Return pkg-config's answer for ``module`` as compiler/linker words, or stop the build."""
    exe = shutil.which("pkg-config") or shutil.which("pkgconf")
    if exe is None:
        sys.exit(missing)
    proc = subprocess.run([exe, *args, module], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(missing)
    return shlex.split(proc.stdout)


def xxhash_dispatch(cflags: list[str]) -> list[tuple[str, str]]:
    """Use libxxhash's x86 dispatch (AVX2 picked at run time) where its header is there."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    dirs = [f[2:] for f in cflags if f.startswith("-I")] + ["/usr/include", "/usr/local/include"]
    if any(os.path.exists(os.path.join(d, "xxh_x86dispatch.h")) for d in dirs):
        return [("SYNFAST_XXH_DISPATCH", "1")]
    return []


def extensions() -> list[Extension]:
    pkg_config("--exists")
    cflags = pkg_config("--cflags")
    libs = pkg_config("--libs")
    pkg_config("--exists", module="libxxhash", missing=MISSING_XXHASH)
    xxh_cflags = pkg_config("--cflags", module="libxxhash", missing=MISSING_XXHASH)
    xxh_libs = pkg_config("--libs", module="libxxhash", missing=MISSING_XXHASH)

    from Cython.Build import cythonize

    common = dict(
        define_macros=[("_GNU_SOURCE", "1"), ("_FILE_OFFSET_BITS", "64")],
        extra_compile_args=["-O2", "-Wall", *cflags],
        include_dirs=["ext/includes"],
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
                  depends=["ext/includes/xxh_shim.h", "ext/includes/sigbus_guard.h",
                           "ext/includes/cachestat.h"],
                  extra_link_args=xxh_libs,
                  define_macros=[*common["define_macros"], *xxhash_dispatch(xxh_cflags)],
                  extra_compile_args=[*common["extra_compile_args"], *xxh_cflags],
                  include_dirs=common["include_dirs"]),
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
