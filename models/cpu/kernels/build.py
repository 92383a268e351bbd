"""Build the CPU kernels of the speed layer: ``make kernels`` (or ``python models/cpu/kernels/build.py``).

Compiles every ``models/cpu/kernels/*.cc`` (``swiftformer_cpu.cc``, ``swiftformer_train_cpu.cc``, ``soft_cpu.cc``,
all including the shared helpers of ``kernel_common.h``) with the system C++ compiler (``$CXX``, else g++ / c++)
into ``models/cpu/kernels/build/<stem>-<hash>.so``, where <hash> is taken from the source and every local header it
includes (``#include "..."``), so a stale library is never loaded: editing ``kernel_common.h`` rebuilds them all.
The best instruction set of this CPU is used (AVX-512, AVX2 + FMA, or plain).
Without a compiler it says so and exits 0: the models then run on MindSpore's standard operators.

This file imports nothing from the project (it runs before the requirements are installed).
"""
import argparse
import glob
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "swiftformer_cpu.cc")
#: every kernel source of the project
SOURCES = tuple(sorted(glob.glob(os.path.join(HERE, "*.cc"))))
BUILD_DIR = os.path.join(HERE, "build")
_BASE_FLAGS = ["-std=c++17", "-O3", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-pthread"]


_LOCAL_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.MULTILINE)


def local_headers(source):
    """The headers that ``source`` includes with ``#include "..."``, directly or through another one, that exist
    next to the including file or in this folder (the compiler's ``-I``), in the order first included."""
    found, pending = [], [os.path.abspath(source)]
    while pending:
        current = pending.pop(0)
        with open(current, "rb") as fh:
            names = _LOCAL_INCLUDE.findall(fh.read())
        for name in names:
            name = os.fsdecode(name)
            for folder in (os.path.dirname(current), HERE):
                header = os.path.abspath(os.path.join(folder, name))
                if os.path.isfile(header):
                    if header not in found:
                        found.append(header)
                        pending.append(header)
                    break
    return found


def library_path(source=SOURCE, build_dir=BUILD_DIR):
    """Where the library built from ``source`` (as it is now) lives: ``<stem>-<hash>.so``, the hash taken from
    the source and then every header of ``local_headers(source)``, so a change to either gives a new path."""
    with open(source, "rb") as fh:
        digest = hashlib.sha1(fh.read())
    for header in local_headers(source):
        with open(header, "rb") as fh:
            digest.update(b"\0" + os.path.basename(header).encode() + b"\0" + fh.read())
    stem = os.path.splitext(os.path.basename(source))[0]
    return os.path.join(build_dir, f"{stem}-{digest.hexdigest()[:12]}.so")


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def flag_sets():
    """Compiler flag sets to try, best first."""
    cpu = _cpu_flags() if platform.machine() in ("x86_64", "AMD64") else set()
    sets = [_BASE_FLAGS]
    if {"avx2", "fma"} <= cpu:
        sets.insert(0, _BASE_FLAGS + ["-mavx2", "-mfma"])
        if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= cpu:
            sets.insert(0, sets[0] + ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl",
                                      "-mprefer-vector-width=512"])
    return sets


def find_compiler():
    """The C++ compiler to use, or None."""
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def build(source=SOURCE, force=False):
    """Compile ``source`` unless its library is already built; returns its path. RuntimeError when it cannot."""
    target = library_path(source)
    if os.path.isfile(target) and not force:
        return target
    if platform.system() != "Linux":
        raise RuntimeError("MindSpore aot Custom operators need Linux")
    cxx = find_compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    os.makedirs(BUILD_DIR, exist_ok=True)
    errors = []
    for flags in flag_sets():
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=BUILD_DIR)
        os.close(fd)
        try:
            proc = subprocess.run([cxx, *flags, "-I", HERE, "-o", tmp, source], capture_output=True, text=True,
                                  timeout=600, check=False)
            if proc.returncode == 0:
                os.replace(tmp, target)  # atomic: two builds at once both end with a whole file
                return target
            errors.append(f"{' '.join(flags[-2:])}: {proc.stderr.strip()[-400:]}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise RuntimeError(f"{cxx} failed: " + " | ".join(errors))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the library exists")
    args = parser.parse_args(argv)
    for source in SOURCES:
        try:
            print(f"CPU kernels: {build(source, force=args.force)}")
        except RuntimeError as err:
            print(f"CPU kernels of {os.path.basename(source)} not built ({err}); the models will use "
                  "MindSpore's standard operators.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
