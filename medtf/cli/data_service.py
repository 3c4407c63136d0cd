"""``medtf data-service``: a tf.data service dispatcher or worker, so augmentation runs on CPU-only machines.

    medtf data-service dispatcher [--port P] [--work-dir D] [--address-file F] [--host H] [--worker-timeout S]
    medtf data-service worker (--dispatcher ADDR | --address-file F) [--port P] [--host H] [--wait S]

The dispatcher runs in fault-tolerant mode: it journals its state (registered datasets, jobs) in --work-dir before
answering, so a dispatcher restarted with the same --work-dir and port resumes, and its workers and trainers
reconnect. --port 0 picks a free port, or, on a restart, the port of the address already in --address-file. It
writes ``grpc://HOST:PORT`` to --address-file (default WORK_DIR/dispatcher.address), logs each change of the number
of registered workers and removes the file when stopped (SIGTERM / SIGINT).

A worker runs the pipelines the trainers register (reading the shard files itself: they must be at the same path
on every machine). With --address-file it waits for the file, follows the dispatcher to a new address when the file
changes (a requeued job), and exits 0 once the file is removed (the dispatcher stopped: the training is over).

Trainers use it through ``make_dataset(..., service=ADDRESS)`` or the experiment key ``data.service`` (an address,
or ``auto``: the file named by $MEDTF_DATA_SERVICE_FILE, which `medtf slurm --data-workers N` jobs set).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from pathlib import Path


def register(commands) -> None:
    p = commands.add_parser("data-service", help="run a tf.data service dispatcher or worker (remote augmentation)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    roles = p.add_subparsers(dest="role", metavar="ROLE", required=True)
    d = roles.add_parser("dispatcher", help="coordinate the workers (fault tolerant: journal in --work-dir)",
                         description="Run a tf.data service dispatcher in fault-tolerant mode: it journals its state "
                                     "in --work-dir (a restart with the same --work-dir and port resumes), writes "
                                     "grpc://HOST:PORT to --address-file and removes it when stopped.")
    d.add_argument("--port", type=int, default=0, help="port (0: free one, or the address file's on a restart)")
    d.add_argument("--work-dir", default="data_service", help="journal folder (default %(default)s)")
    d.add_argument("--address-file", default=None, help="where to write grpc://HOST:PORT "
                                                        "(default WORK_DIR/dispatcher.address)")
    d.add_argument("--host", default=None, help="host name the workers and trainers reach (default: this host)")
    d.add_argument("--worker-timeout", type=float, default=30.0,
                   help="seconds without a heartbeat before a worker counts as gone (default %(default)s)")
    w = roles.add_parser("worker", help="run the trainers' input pipelines for a dispatcher",
                         description="Run a tf.data service worker: it executes the input pipelines (reading the "
                                     "shard files, which must be at the same path here) that trainers register "
                                     "with the dispatcher. With --address-file it follows the file and exits 0 "
                                     "when the dispatcher removes it.")
    source = w.add_mutually_exclusive_group(required=True)
    source.add_argument("--dispatcher", default=None, metavar="ADDR", help="dispatcher address (grpc://)HOST:PORT")
    source.add_argument("--address-file", default=None, help="read the address from the dispatcher's file")
    w.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    w.add_argument("--host", default=None, help="host name the trainers reach (default: this host)")
    w.add_argument("--heartbeat", type=float, default=1.0,
                   help="seconds between heartbeats to the dispatcher (below its --worker-timeout; default 1)")
    w.add_argument("--wait", type=float, default=600.0,
                   help="seconds to wait for the address file (default %(default)s)")
    p.set_defaults(handler=run)


class _Stop:
    """SIGTERM / SIGINT end the serving loop (SLURM sends SIGTERM at the end of a job step)."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def _log(message: str) -> None:
    print(f"medtf data-service: {message}", flush=True)


def run(args) -> int:
    from medtf.data import service

    try:
        return dispatcher(args) if args.role == "dispatcher" else worker(args)
    except (service.DataServiceError, ValueError) as exc:
        print(f"medtf data-service {args.role}: {exc}", file=sys.stderr)
        return 2


def dispatcher(args, poll: float = 0.5) -> int:
    import tensorflow as tf

    from medtf.data import service

    work_dir = Path(args.work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    address_file = Path(args.address_file or work_dir / "dispatcher.address").absolute()
    port = args.port
    if port == 0 and address_file.is_file():  # a restart: workers and trainers know this port
        port = int(service.read_address_file(address_file).rsplit(":", 1)[1])
    journal = (work_dir / "tf_data_dispatcher_journal").exists()
    stop = _Stop()
    server = tf.data.experimental.service.DispatchServer(tf.data.experimental.service.DispatcherConfig(
        port=port, work_dir=str(work_dir), fault_tolerant_mode=True,
        worker_timeout_ms=int(args.worker_timeout * 1000)))
    address = f"grpc://{args.host or socket.gethostname()}:{server.target.rsplit(':', 1)[1]}"
    service.write_address_file(address_file, address)
    _log(f"dispatcher at {address} ({'resumed from' if journal else 'journal in'} {work_dir}); "
         f"address in {address_file}")
    workers = -1
    try:
        while not stop.requested:
            count = server._num_workers()
            if count != workers:
                _log(f"{count} worker(s) registered")
                workers = count
            time.sleep(poll)
    finally:
        address_file.unlink(missing_ok=True)  # tells file-following workers that the training is over
        server._stop()
    _log("dispatcher stopped")
    return 0


def _start_worker(address: str, port: int, host: str, heartbeat: float):
    import tensorflow as tf

    target = address.removeprefix("grpc://")
    # TF's default heartbeat (30 s) would outlast the dispatcher's --worker-timeout: a live worker would be dropped.
    return tf.data.experimental.service.WorkerServer(tf.data.experimental.service.WorkerConfig(
        dispatcher_address=target, worker_address=f"{host}:%port%", port=port,
        data_transfer_address=f"{host}:%dts_port%", heartbeat_interval_ms=int(heartbeat * 1000)))


def worker(args, poll: float = 0.5) -> int:
    from medtf.data import service

    host = args.host or socket.gethostname()
    address_file = Path(args.address_file) if args.address_file else None
    address = service.normalize_address(args.dispatcher) if args.dispatcher else \
        service.read_address_file(address_file, timeout=args.wait)
    server = _start_worker(address, args.port, host, args.heartbeat)
    # Only now: registering blocks in C++ (until the dispatcher answers), where a Python handler would never run
    # and SIGTERM must keep its default action.
    stop = _Stop()
    port = args.port or int(server._address.rsplit(":", 1)[1])
    _log(f"worker {host}:{port} serving the dispatcher at {address}")
    try:
        while not stop.requested:
            time.sleep(poll)
            if address_file is None:
                continue
            if not address_file.exists():
                _log(f"{address_file} removed: the dispatcher stopped, the training is over")
                break
            try:
                current = service.read_address_file(address_file)
            except service.DataServiceError:  # removed or rewritten just now: look again
                continue
            if current != address:  # the dispatcher restarted elsewhere (a requeued job)
                _log(f"dispatcher moved to {current}; re-registering")
                server._stop()
                address, server = current, _start_worker(current, port, host, args.heartbeat)
    finally:
        server._stop()
    _log("worker stopped")
    return 0
