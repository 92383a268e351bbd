"""Where this process sits in a job: device, rank, number of devices, job id, read from the environment.

The ONE place that reads the launchers' environment variables; no other module should:

================  ==========================================================================
launcher          variables set per process
================  ==========================================================================
rank table        RANK_TABLE_FILE (or MINDSPORE_HCCL_CONFIG_PATH), DEVICE_ID, RANK_ID, RANK_SIZE
                  (scripts/run_distribute_train_ascend.sh, ModelArts)
msrun             MS_ROLE, MS_SCHED_HOST, DEVICE_ID (= local rank), RANK_ID (= MS_NODE_ID), RANK_SIZE,
                  MS_WORKER_NUM
mpirun            OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK
ModelArts         the above plus JOB_ID (MA_JOB_ID on newer images)
================  ==========================================================================

``get_launcher()`` names the launcher that started this process (None for a plain ``python train.py``,
including the standalone scripts, which export RANK_SIZE=1 without a rank table).

Nothing here imports MindSpore: these helpers run before the context is set (e.g. to decide which
process copies the data of a ModelArts job). Inside a running distributed job the communication group
(``mindspore.communication.get_rank``) is authoritative; these functions agree with it for the
launchers above.
"""
import os

__all__ = ["get_launcher", "get_device_id", "get_device_num", "get_rank_id", "get_local_rank_id", "get_local_rank_size",
           "get_job_id", "is_first_local_rank", "describe"]

#: devices per server assumed when only a global count is known (Ascend 910 / GPU servers have 8)
DEVICES_PER_SERVER = 8


def _env_int(names, default):
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
    return default


def get_launcher():
    """The launcher that started this process as one of a data-parallel job, or None.

    ``"msrun"`` (MindSpore's dynamic cluster: MS_ROLE is set), ``"mpirun"`` (OMPI_COMM_WORLD_SIZE), ``"rank
    table"`` (RANK_TABLE_FILE or MINDSPORE_HCCL_CONFIG_PATH with RANK_SIZE > 1: the Ascend script and
    ModelArts); None otherwise.
    """
    if os.environ.get("MS_ROLE", "").strip():
        return "msrun"
    if os.environ.get("OMPI_COMM_WORLD_SIZE", "").strip():
        return "mpirun"
    table = os.environ.get("RANK_TABLE_FILE", "").strip() or os.environ.get("MINDSPORE_HCCL_CONFIG_PATH", "").strip()
    if table and _env_int(("RANK_SIZE",), 1) > 1:
        return "rank table"
    return None


def get_device_id():
    """The device index of this process on its server: DEVICE_ID (default 0)."""
    return _env_int(("DEVICE_ID",), 0)


def get_device_num():
    """Devices (processes) in the job: RANK_SIZE, else msrun's MS_WORKER_NUM, else mpirun's size, else 1."""
    return max(1, _env_int(("RANK_SIZE", "MS_WORKER_NUM", "OMPI_COMM_WORLD_SIZE"), 1))


def get_rank_id():
    """Global rank: RANK_ID, else msrun's MS_NODE_ID, else mpirun's rank, else 0."""
    return _env_int(("RANK_ID", "MS_NODE_ID", "OMPI_COMM_WORLD_RANK"), 0)


def get_local_rank_id():
    """Rank of this process among those of its server.

    LOCAL_RANK or mpirun's local rank when set; otherwise DEVICE_ID modulo the devices per server
    (msrun and the rank-table script export DEVICE_ID = local index); 0 in a single-device job.
    """
    explicit = _env_int(("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"), None)
    if explicit is not None:
        return explicit
    num = get_device_num()
    if num == 1:
        return 0
    return get_device_id() % min(num, DEVICES_PER_SERVER)


def get_local_rank_size():
    """Processes of this job on this server (they share its CPU cores).

    LOCAL_WORLD_SIZE or mpirun's local size when set; otherwise the devices of the job, at most
    ``DEVICES_PER_SERVER`` (msrun and the rank-table scripts start one process per device).
    """
    explicit = _env_int(("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"), None)
    if explicit is not None:
        return max(1, explicit)
    return min(get_device_num(), DEVICES_PER_SERVER)


def is_first_local_rank():
    """True for the one process per server that does per-server work (e.g. copying the dataset)."""
    return get_local_rank_id() == 0


def get_job_id():
    """The job's id: JOB_ID or MA_JOB_ID (ModelArts), else "default"."""
    for name in ("JOB_ID", "MA_JOB_ID"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return "default"


def describe():
    """One line for logs: ``rank 0/8, device 0, local rank 0, job default``."""
    return (f"rank {get_rank_id()}/{get_device_num()}, device {get_device_id()}, "
            f"local rank {get_local_rank_id()}, job {get_job_id()}")
