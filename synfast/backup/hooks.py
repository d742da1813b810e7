"""The commands a backup runs around itself, and the points where a test can stop it.

``--pre-cmd`` and ``--post-cmd`` run with ``/bin/sh``; their output goes to our
stderr, so that stdout stays clean for ``--json``.

Test hook: when the environment variable ``SYNFAST_TEST_PAUSE_AT`` names one
of :data:`PAUSE_POINTS`, the backup prints ``paused at POINT`` on stderr when
it gets there and waits (forever, or until the file named by
``SYNFAST_TEST_RESUME_FILE`` exists), so a test can kill it, or change the
source, at that exact moment.  A cancelled run stops waiting.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from synfast.errors import CopyFailed, SynfastError
from synfast.workers import Cancel

PAUSE_POINTS = ("partial-created", "snapshots-taken", "mid-file", "manifest-written")
PAUSE_ENV = "SYNFAST_TEST_PAUSE_AT"
RESUME_ENV = "SYNFAST_TEST_RESUME_FILE"


def pause_wanted(name: str) -> bool:
    """Whether the test hook asks the backup to pause at ``name``."""
    return os.environ.get(PAUSE_ENV) == name


def pause_point(name: str, cancel: Cancel) -> None:
    """Stop here when the test hook asks to, for good, or until the file named
    by ``SYNFAST_TEST_RESUME_FILE`` exists."""
    if pause_wanted(name):
        sys.stderr.write(f"synfast: test hook: paused at {name}\n")
        sys.stderr.flush()
        resume = os.environ.get(RESUME_ENV)
        while not (resume and os.path.exists(resume)):
            cancel.sleep(0.05 if resume else 3600)


def run_hook(cmd: str, what: str) -> None:
    """Run a --pre-cmd/--post-cmd with the shell; its output goes to our stderr
    (stdout is kept for --json)."""
    proc = subprocess.run(["/bin/sh", "-c", cmd], stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise CopyFailed(None, f"the {what} command failed with exit code {proc.returncode}: "
                         f"{cmd}", f"fix the command or drop --{what}-cmd")


@contextmanager
def around(pre_cmd: str | None, post_cmd: str | None) -> Iterator[None]:
    """Run ``pre_cmd`` before the body and ``post_cmd`` after it, even when the
    body fails; a failing ``post_cmd`` fails only a body that succeeded (the
    body's own error is the one to report)."""
    ok = False
    try:
        if pre_cmd:
            run_hook(pre_cmd, "pre")
        yield
        ok = True
    finally:
        if post_cmd:
            try:
                run_hook(post_cmd, "post")
            except SynfastError:
                if ok:
                    raise
