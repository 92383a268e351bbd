"""``moxing.file`` stand-in: copy_parallel / copy / exists on local folders (see the package doc)."""
import os
import shutil
import time

__all__ = ["copy_parallel", "copy", "exists", "local_path"]


def local_path(url):
    """``obs://bucket/key`` (or ``s3://bucket/key``, moxing's other spelling) -> ``$FAKE_OBS_ROOT/bucket/key``;
    other paths are returned unchanged."""
    for scheme in ("obs://", "s3://"):
        if url.startswith(scheme):
            root = os.environ.get("FAKE_OBS_ROOT")
            if not root:
                raise RuntimeError("fake moxing: set FAKE_OBS_ROOT to the folder that stands for OBS")
            return os.path.join(root, url[len(scheme):])
    return url


def _record(name, src, dst):
    log = os.environ.get("FAKE_MOXING_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {name} {src} {dst}\n")


def copy_parallel(src_url, dst_url):
    """Copy the folder ``src_url`` into ``dst_url`` (merging with what is there), like moxing does."""
    _record("copy_parallel", src_url, dst_url)
    time.sleep(float(os.environ.get("FAKE_MOXING_DELAY", "0")))  # lets tests see other ranks wait
    src, dst = local_path(src_url), local_path(dst_url)
    if not os.path.isdir(src):
        raise FileNotFoundError(f"fake moxing: no such folder {src_url}")
    shutil.copytree(src, dst, dirs_exist_ok=True)


def copy(src_url, dst_url):
    """Copy one file."""
    _record("copy", src_url, dst_url)
    src, dst = local_path(src_url), local_path(dst_url)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"fake moxing: no such file {src_url}")
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    shutil.copyfile(src, dst)


def exists(url):
    return os.path.exists(local_path(url))
