"""
Multi-process launch for CPU (gloo) and GPU (NCCL): Detectron2 v0.6's ``launch`` where it falls
short, plus ``torchrun`` and checks of the launch arguments.

What v0.6's :func:`detectron2.engine.launch` lacks, and what this module does instead:

* it asserts CUDA, hard-codes NCCL and calls ``torch.cuda.set_device``: here the backend is
  NCCL with CUDA and gloo without (or when ``backend="gloo"`` is asked), and ``set_device`` is
  only called with CUDA (as later Detectron2 does, PR #4720, and with its code structure:
  ``_distributed_worker`` -> ``init_process_group`` -> local process group -> synchronize);
* on CPU every process would use all cores: each gets ``cores // local processes`` threads
  (``torch.set_num_threads`` and ``OMP_NUM_THREADS``) unless ``OMP_NUM_THREADS`` is set;
* ``torchrun`` (``LOCAL_RANK`` / ``RANK`` / ``WORLD_SIZE`` in the environment, env://
  rendezvous): the process joins the group instead of spawning;
* :func:`create_ddp_model` passes ``device_ids=None`` for a CPU model (DistributedDataParallel
  refuses ``device_ids`` there);
* :func:`check_launch_args`: bad launch arguments (no process, a machine rank out of range, a
  port in use, a rendezvous that cannot be reached) raise :class:`~d2_detr.utils.cli.UserError`
  instead of an assertion or a 30-minute hang; with ``connect_timeout`` the tcp:// rendezvous
  itself is bounded (machine 0 waiting for a machine that never starts);
* spawned workers get the launching process's multiprocessing start method back (mp.spawn
  leaves them with "spawn", so panopticapi's PQ pool re-imported the whole program per worker).

When it can go: once a Detectron2 release with PR #4720 (gloo without CUDA) is installed, the
worker's backend / set_device part can become ``detectron2.engine.launch`` again; the argument
checks, bounded rendezvous, thread split, start method, ``torchrun`` and ``create_ddp_model``'s
CPU case are in no Detectron2 release (v0.6 or later) and would stay as a thin wrapper.
"""

import errno
import logging
import multiprocessing
import os
import socket
import sys
import time
from datetime import timedelta
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.defaults import create_ddp_model as _d2_create_ddp_model
from detectron2.utils import comm

from ..utils.cli import EXIT_USER_ERROR, UserError, run_cli

__all__ = [
    "DEFAULT_TIMEOUT",
    "add_launch_arguments",
    "check_launch_args",
    "create_ddp_model",
    "launch",
    "launch_from_args",
    "threads_per_process",
    "torchrun_env",
]

logger = logging.getLogger(__name__)

#: Timeout of the process group's collectives (Detectron2's default).
DEFAULT_TIMEOUT = timedelta(minutes=30)
#: How long a process waits for the rendezvous address to accept connections.
DEFAULT_CONNECT_TIMEOUT = 120.0


def _find_free_port():
    """A TCP port that is free on this machine now (it may be taken again before use)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def threads_per_process(num_local_processes, cores=None):
    """CPU threads for each of ``num_local_processes`` processes sharing this machine's cores."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, num_local_processes))


def _set_threads(num_local_processes):
    """On CPU, split the cores between the local processes unless OMP_NUM_THREADS is set."""
    if torch.cuda.is_available():
        return
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        return
    n = threads_per_process(num_local_processes)
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


def torchrun_env():
    """``(rank, local_rank, world_size, local_world_size)`` when started by torchrun, else None."""
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
    if not all(k in os.environ for k in keys):
        return None
    rank, local_rank, world_size = (int(os.environ[k]) for k in keys)
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return rank, local_rank, world_size, local_world_size


def _backend(backend):
    if backend is None:
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend.lower()


def _create_local_process_group(num_processes_per_machine):
    """Detectron2 v0.6's local group (the ranks on this machine); later ``comm`` has it."""
    assert comm._LOCAL_PROCESS_GROUP is None
    world_size = dist.get_world_size()
    num_machines = world_size // num_processes_per_machine
    machine_rank = dist.get_rank() // num_processes_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_processes_per_machine, (i + 1) * num_processes_per_machine))
        pg = dist.new_group(ranks_on_i)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = pg


def launch(
    main_func,
    num_gpus_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
    backend=None,
    connect_timeout=None,
):
    """
    Detectron2's ``launch`` (same signature and behaviour), on CPU or GPU, or under torchrun.

    Args:
        main_func: called as ``main_func(*args)`` in every process.
        num_gpus_per_machine (int): processes per machine (one per GPU; on CPU, any number).
        num_machines (int): machines in the job.
        machine_rank (int): this machine's rank in ``[0, num_machines)``.
        dist_url (str): rendezvous, e.g. ``tcp://HOST:PORT`` (machine 0's address) or "auto"
            (a free port on 127.0.0.1, one machine only).
        timeout (timedelta): timeout of the process group's collectives.
        backend (str or None): "nccl" / "gloo"; None: NCCL with CUDA, gloo without.
        connect_timeout (float or None): seconds the processes of a tcp:// rendezvous wait for
            each other (then a :class:`UserError`: exit code 2); None: ``timeout`` (Detectron2).
    Returns:
        ``main_func``'s return value when it runs in this process (one process or torchrun),
        else None.

    Under torchrun the arguments describing the job (processes, machines, URL) come from the
    environment instead: this process initialises the group (env://) and runs ``main_func``.
    """
    env = torchrun_env()
    if env is not None and env[2] > 1:
        return _torchrun_worker(main_func, env, args, timeout, backend)
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    if dist_url == "auto":
        assert num_machines == 1, "dist_url=auto not supported in multi-machine jobs."
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init_method in multi-machine jobs. Prefer tcp://")
    try:
        mp.spawn(
            _distributed_worker,
            nprocs=num_gpus_per_machine,
            args=(
                main_func,
                world_size,
                num_gpus_per_machine,
                machine_rank,
                dist_url,
                args,
                timeout,
                backend,
                multiprocessing.get_start_method(allow_none=True),
                connect_timeout,
            ),
            daemon=False,
        )
    except mp.ProcessExitedException as e:
        if e.exit_code == EXIT_USER_ERROR:  # the worker printed the user error already
            sys.exit(EXIT_USER_ERROR)
        raise
    return None


def _distributed_worker(
    local_rank,
    main_func,
    world_size,
    num_gpus_per_machine,
    machine_rank,
    dist_url,
    args,
    timeout=DEFAULT_TIMEOUT,
    backend=None,
    start_method=None,
    connect_timeout=None,
):
    # mp.spawn makes "spawn" the default start method of its children; give them the launching
    # process's (fork on Linux): else every multiprocessing.Pool in main_func (panopticapi's PQ)
    # re-imports the main module in each of its workers (25 s instead of 1 s here)
    multiprocessing.set_start_method(start_method, force=True)
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        assert num_gpus_per_machine <= torch.cuda.device_count()
    _set_threads(num_gpus_per_machine)
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        if connect_timeout is not None and dist_url.startswith("tcp://"):
            # the same TCP rendezvous as init_method=dist_url, but joining is bounded by
            # connect_timeout (a missing machine is an error, not a 30-minute wait)
            store = run_cli(
                _rendezvous_store, dist_url, global_rank, world_size, connect_timeout, timeout
            )
            init = {"store": store}
        else:
            init = {"init_method": dist_url}
        dist.init_process_group(
            backend=_backend(backend),
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
            **init,
        )
    except Exception as e:
        logger.error("Process group URL: {}".format(dist_url))
        raise e

    _create_local_process_group(num_gpus_per_machine)
    if has_gpu:
        torch.cuda.set_device(local_rank)

    # synchronize is needed here to prevent a possible timeout after calling init_process_group
    # See: https://github.com/facebookresearch/maskrcnn-benchmark/issues/172
    comm.synchronize()
    try:
        run_cli(main_func, *args)  # a user error: message + exit 2 (launch exits 2 too)
    finally:
        dist.destroy_process_group()


def _rendezvous_store(dist_url, rank, world_size, connect_timeout, timeout):
    """The TCPStore of ``dist_url`` (hosted by rank 0), all ``world_size`` processes joined
    within ``connect_timeout`` seconds, else :class:`UserError`."""
    host, port = _parse_tcp_url(dist_url)
    try:
        store = dist.TCPStore(
            host, port, world_size, rank == 0, timedelta(seconds=connect_timeout),
            wait_for_workers=True,
        )  # fmt: skip
    except (RuntimeError, OSError) as e:
        raise UserError(
            f"--dist-url {dist_url}: not all {world_size} processes joined within "
            f"{connect_timeout:g} s (process {rank}: {str(e).splitlines()[0][:200]})",
            "start every machine with the same --num-machines / --num-gpus / --dist-url and "
            "a different --machine-rank, or wait longer with --connect-timeout SECONDS",
        )
    store.set_timeout(timeout)
    return store


def _torchrun_worker(main_func, env, args, timeout, backend):
    rank, local_rank, world_size, local_world_size = env
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        torch.cuda.set_device(local_rank)
    else:
        # torchrun sets OMP_NUM_THREADS=1 when it is unset; keep the user's value, else split
        _set_threads(local_world_size)
    if world_size % local_world_size:
        raise UserError(
            f"torchrun: WORLD_SIZE {world_size} is not a multiple of LOCAL_WORLD_SIZE "
            f"{local_world_size}",
            "start the same --nproc_per_node on every machine",
        )
    if not dist.is_initialized():
        dist.init_process_group(backend=_backend(backend), init_method="env://", timeout=timeout)
    _create_local_process_group(local_world_size)
    comm.synchronize()
    try:
        return main_func(*args)
    finally:
        dist.destroy_process_group()


def create_ddp_model(model, *, fp16_compression=False, **kwargs):
    """
    Detectron2's ``create_ddp_model``, also for a CPU model: ``device_ids`` (the local GPU) is
    only passed for a model on CUDA. The model itself when there is one process.
    """
    if comm.get_world_size() > 1 and "device_ids" not in kwargs:
        on_cuda = any(p.is_cuda for p in model.parameters())
        kwargs["device_ids"] = [comm.get_local_rank()] if on_cuda else None
    return _d2_create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)


# ---------------------------------------------------------------------------------------------
# the command line


def add_launch_arguments(parser):
    """Add ``--dist-timeout`` and ``--connect-timeout`` to Detectron2's argument parser."""
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT.total_seconds(),
        help="seconds before a collective (all-reduce, gather) of a multi-process job fails",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT,
        help="seconds the processes wait for each other at --dist-url (machine 0 for the "
        "others, the others for machine 0) before they give up",
    )
    return parser


def _parse_tcp_url(dist_url):
    url = urlparse(dist_url)
    if url.scheme != "tcp" or not url.hostname or url.port is None:
        raise ValueError(dist_url)
    return url.hostname, url.port


def _check_port_free(host, port):
    """Machine 0 hosts the rendezvous on ``host:port``: bind it once to see that it can."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(
            f"--dist-url: cannot resolve host {host!r} ({e.strerror})",
            "give machine 0's address as tcp://HOST:PORT",
        )
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    # as the rendezvous store does: a port in TIME_WAIT is free, only a listener makes it busy
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"--dist-url tcp://{host}:{port}: port {port} is already in use on this machine",
                "pick another port (or --dist-url auto on one machine)",
            )
        if e.errno == errno.EADDRNOTAVAIL:
            raise UserError(
                f"--dist-url tcp://{host}:{port}: {host} is not an address of this machine, but "
                "machine rank 0 hosts the rendezvous",
                "start machine rank 0 on the host named in --dist-url",
            )
        raise UserError(f"--dist-url tcp://{host}:{port}: cannot listen there ({e.strerror})")
    finally:
        sock.close()


def _wait_reachable(host, port, timeout):
    """Retry connecting to ``host:port`` until it accepts or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, left))):
                return
        except socket.gaierror as e:
            raise UserError(
                f"--dist-url: cannot resolve host {host!r} ({e.strerror})",
                "give machine 0's address as tcp://HOST:PORT",
            )
        except OSError as e:
            last = e.strerror or str(e)
        if time.monotonic() >= deadline:
            raise UserError(
                f"--dist-url tcp://{host}:{port} cannot be reached within {timeout:g} s ({last})",
                "start machine rank 0 first with the same --dist-url, check the address and the "
                "firewall, or wait longer with --connect-timeout SECONDS",
            )
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def check_launch_args(args):
    """
    Check the launch arguments of ``args`` (Detectron2's argument parser); raise
    :class:`UserError` naming the argument. Returns the dist-url to use.

    Checks: ``--num-gpus`` >= 1 (and no more than the GPUs with CUDA), ``--num-machines`` >= 1,
    ``0 <= --machine-rank < --num-machines``, a ``tcp://HOST:PORT`` (or "auto" on one machine,
    or ``file://``) ``--dist-url``; on machine 0 the port must be free, on the others machine 0
    must accept connections within ``--connect-timeout`` seconds.
    """
    num_gpus, num_machines, machine_rank = args.num_gpus, args.num_machines, args.machine_rank
    if num_gpus < 1:
        raise UserError(
            f"--num-gpus {num_gpus}: needs at least 1 (processes per machine)",
            "--num-gpus 1 trains in this process; --num-gpus N starts N processes (one per GPU; "
            "on CPU any number, the cores are split between them)",
        )
    if torch.cuda.is_available() and num_gpus > torch.cuda.device_count():
        raise UserError(
            f"--num-gpus {num_gpus}: this machine has {torch.cuda.device_count()} GPU(s)",
            "start at most one process per GPU",
        )
    if num_machines < 1:
        raise UserError(f"--num-machines {num_machines}: needs at least 1")
    if not 0 <= machine_rank < num_machines:
        raise UserError(
            f"--machine-rank {machine_rank} is out of range for --num-machines {num_machines}",
            f"give each machine a different rank from 0 to {num_machines - 1} (0 on the machine "
            "named in --dist-url)",
        )
    dist_url = args.dist_url
    if num_machines * num_gpus == 1:
        return dist_url
    if dist_url == "auto":
        if num_machines > 1:
            raise UserError(
                "--dist-url auto works on one machine only",
                "give machine 0's address as --dist-url tcp://HOST:PORT on every machine",
            )
        return dist_url
    if dist_url.startswith("file://"):
        return dist_url
    try:
        host, port = _parse_tcp_url(dist_url)
    except ValueError:
        raise UserError(
            f"--dist-url {dist_url!r}: expected tcp://HOST:PORT (or auto on one machine)",
            "e.g. --dist-url tcp://10.0.0.1:29500 with machine 0's address",
        )
    if machine_rank == 0:
        _check_port_free(host, port)
    else:
        _wait_reachable(host, port, args.connect_timeout)
    return dist_url


def launch_from_args(main_func, args, backend=None):
    """
    Check the launch arguments, then :func:`launch` ``main_func(args)`` as they say (or join a
    torchrun job: then the job comes from torchrun's environment and they are not checked).
    ``backend`` None: ``$D2_DETR_DIST_BACKEND`` if set (nccl / gloo), else NCCL with CUDA and
    gloo without.
    """
    timeout = timedelta(seconds=getattr(args, "dist_timeout", DEFAULT_TIMEOUT.total_seconds()))
    backend = backend or os.environ.get("D2_DETR_DIST_BACKEND") or None
    if torchrun_env() is not None:
        return launch(main_func, 1, args=(args,), timeout=timeout, backend=backend)
    dist_url = check_launch_args(args)
    return launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=dist_url,
        args=(args,),
        timeout=timeout,
        backend=backend,
        connect_timeout=getattr(args, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
    )
