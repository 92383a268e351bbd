"""Lock files that name their owner, shared by the run's folders and the image cache.

    >>> from src.locks import claim_folders
    >>> with claim_folders([("/out/run1", "output folder", "output_path")]) as notes:
    ...     ...   # this process owns /out/run1; notes: lines about locks taken over from dead runs

A lock file holds one JSON object naming its owner: ``host``, ``pid``, ``pid_start`` (the process's
start time in clock ticks after boot, from ``/proc``; it tells a reused PID from the owner), ``started``
(local time, for people) and ``command``. It is created atomically with its content (a hard link of a
complete temporary file; ``O_EXCL`` where the file system has no hard links), so a reader never sees a
half-written one.

Whether the owner still runs (``owner_state``): ``alive`` or ``gone`` when the lock was written on this
host (``gone``: no such PID, a zombie, or a PID reused by a process started later); ``elsewhere`` for
another host, where this process cannot tell. A lock is only ever removed by its owner, or, when its
owner is gone, by a process that holds an ``flock`` on the lock's folder while it checks and removes
it, so two newcomers cannot both take over (nor remove the lock the other one has just written).

``claim_folders`` is how a training run owns its output and checkpoint folders (``.train.lock`` in
each): a second run into a folder a live run owns stops with one sentence naming that run, a lock left
by a dead run of this host is taken over with one line. The image cache's ``build.lock``
(``src/image_manifest.py``) uses the same owner records.
"""
import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time

__all__ = ["FolderInUse", "owner_record", "create_lock", "read_lock", "owner_state", "describe_owner",
           "remove_if_unchanged", "remove_own_lock", "claim_folders", "RUN_LOCK_NAME"]

#: the lock file of a training run in each folder it owns
RUN_LOCK_NAME = ".train.lock"


class FolderInUse(ValueError):
    """A folder is owned by another live run (or by a run this host cannot check)."""


# ------------------------------------------------------------------------------------------ owners
def _stat_fields(pid):
    """The fields of ``/proc/<pid>/stat`` from field 3 (state) on, or None (no such process, not Linux)."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) "; comm may hold spaces and parentheses


def _process_start_ticks(pid):
    """The start time of process ``pid`` in clock ticks after boot (Linux), or None."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19])  # field 22: starttime
    except (TypeError, IndexError, ValueError):
        return None


def _process_state(pid):
    """The one-letter state of process ``pid`` (``Z``: zombie), or None."""
    fields = _stat_fields(pid)
    return fields[0].decode() if fields else None


def owner_record(pid=None):
    """The owner fields of a lock written by this process (``pid``: another process of this host)."""
    pid = os.getpid() if pid is None else int(pid)
    started = time.time()
    if pid != os.getpid():
        ticks = _process_start_ticks(pid)
        if ticks is not None:  # the process's own start time, for the message
            try:
                boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
                started = boot + ticks / os.sysconf("SC_CLK_TCK")
            except (AttributeError, OSError, ValueError):
                pass
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start_ticks(pid),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "command": " ".join(sys.argv)[:300] if pid == os.getpid() else ""}


def describe_owner(owner):
    """``host h, PID 123, started 2026-12-03 10:00:00`` (what a message names)."""
    return f"host {owner.get('host', '?')}, PID {owner.get('pid', '?')}, started {owner.get('started', '?')}"


def owner_state(owner):
    """``alive``, ``gone`` (this host, the process no longer runs) or ``elsewhere`` (another host)."""
    if owner.get("host") != socket.gethostname():
        return "elsewhere"
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return "gone"
    if pid <= 0:
        return "gone"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # another user's process: alive
    if _process_state(pid) == "Z":
        return "gone"
    recorded, current = owner.get("pid_start"), _process_start_ticks(pid)
    if recorded is not None and current is not None and int(recorded) != current:
        return "gone"  # the PID now belongs to a later process
    return "alive"


# ------------------------------------------------------------------------------------------ files
def create_lock(path, owner):
    """Create the lock file ``path`` holding ``owner``; False when it exists already. Atomic."""
    data = json.dumps(owner, sort_keys=True).encode()
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        return _create_exclusive(path, data)  # a file system without hard links
    finally:
        try:
            os.remove(tmp)
        except OSError:
            pass


def _create_exclusive(path, data):
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return True


def read_lock(path):
    """(raw bytes, owner dict or None when the content is not an owner record); raises FileNotFoundError."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        owner = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return raw, None
    return raw, owner if isinstance(owner, dict) and "pid" in owner and "host" in owner else None


@contextlib.contextmanager
def _folder_guard(folder):
    """An exclusive ``flock`` on ``folder`` while a lock in it is checked and removed (best effort: file
    systems without ``flock`` on folders go without)."""
    import fcntl
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the flock


def remove_if_unchanged(path, raw):
    """Remove the lock ``path`` if it still holds ``raw`` (checked under the folder's guard); returns
    whether it was removed."""
    with _folder_guard(os.path.dirname(path) or "."):
        try:
            with open(path, "rb") as fh:
                if fh.read() != raw:
                    return False
            os.remove(path)
            return True
        except FileNotFoundError:
            return False


def remove_own_lock(path, owner):
    """Remove ``path`` when it is the lock ``owner`` wrote (never another process's)."""
    try:
        raw, found = read_lock(path)
    except OSError:
        return
    if found == owner:
        remove_if_unchanged(path, raw)


# ------------------------------------------------------------------------------------------ run folders
def _claim(folder, what, key, owner):
    """Own ``folder`` (``what``: "output folder", ``key``: the config key that chooses it); returns the
    lock path and a takeover line or None. Raises FolderInUse."""
    lock = os.path.join(folder, RUN_LOCK_NAME)
    note = None
    for _ in range(100):  # each pass either creates the lock or removes one that is gone
        if create_lock(lock, owner):
            return lock, note
        try:
            raw, found = read_lock(lock)
        except FileNotFoundError:
            continue
        if found is None:
            raise FolderInUse(f"the {what} {folder} holds a lock file {lock} that is not a training run's: "
                              f"delete it if no other run uses this folder, or set another {key}.")
        state = owner_state(found)
        if state == "alive":
            raise FolderInUse(f"the {what} {folder} is in use by another training run ({describe_owner(found)}): "
                              f"wait for it to end, or set another {key}.")
        if state == "elsewhere":
            raise FolderInUse(f"the {what} {folder} is in use by a training run on another host "
                              f"({describe_owner(found)}), which cannot be checked from here: set another {key}, "
                              f"or delete {lock} if that run has ended.")
        if remove_if_unchanged(lock, raw):
            note = (f"taking over the {what} {folder}: the training run that held it ({describe_owner(found)}) "
                    "is gone")
    raise FolderInUse(f"could not take the lock {lock} of the {what} {folder}: other runs keep creating it.")


@contextlib.contextmanager
def claim_folders(folders):
    """Own every (folder, what, config key) of ``folders`` for the ``with`` block.

    The folders must exist. Yields the takeover lines (one per lock left by a dead run of this host) for
    the caller to log. Raises FolderInUse (a ValueError: one sentence naming the owner) before taking
    anything when one of them is owned by a live run or by a run on another host; the locks are removed
    when the block ends, however it ends.
    """
    owner = owner_record()
    taken, notes = [], []
    try:
        seen = set()
        for folder, what, key in folders:
            real = os.path.realpath(folder)
            if real in seen:
                continue
            seen.add(real)
            lock, note = _claim(folder, what, key, owner)
            taken.append(lock)
            if note:
                notes.append(note)
        yield notes
    finally:
        for lock in reversed(taken):
            remove_own_lock(lock, owner)
