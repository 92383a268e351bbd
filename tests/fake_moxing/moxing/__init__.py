"""A stand-in for ModelArts' ``moxing`` package, for tests only (``tests/fake_moxing`` on sys.path).

``obs://bucket/path`` (and ``s3://bucket/path``) URLs map to ``$FAKE_OBS_ROOT/bucket/path`` on the local disk; every call is
appended to ``$FAKE_MOXING_LOG`` (one line: ``<pid> <function> <src> <dst>``) when that is set;
``$FAKE_MOXING_DELAY`` seconds of sleep in each copy_parallel let tests watch other processes wait.
"""
from . import file  # noqa: F401

__all__ = ["file"]
