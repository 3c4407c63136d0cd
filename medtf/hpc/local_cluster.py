"""A private single-node SLURM (munged + slurmctld + slurmd) in one folder, for tests and laptops.

    python -m medtf.hpc.local_cluster install                        # apt, as root, no services started
    python -m medtf.hpc.local_cluster start --root /tmp/medtf-slurm   # prints `export SLURM_CONF=...`
    python -m medtf.hpc.local_cluster status --root /tmp/medtf-slurm
    python -m medtf.hpc.local_cluster stop --root /tmp/medtf-slurm

Everything (config, munge key and socket, state, spool, logs, pid files) lives under ``root``; the daemons listen
on free ports picked at start, so the system's own SLURM (if any) and other private instances are not disturbed.
Clients find the instance through ``SLURM_CONF=root/etc/slurm.conf``. Daemons are stopped through their pid files
only. Needs root and the Debian packages ``slurmctld slurmd slurm-client munge`` (see `install_command`); the
pitfalls this works around are commented where they are handled (the slurm.conf template, `LocalSlurm.start`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order: node(s), controller, then authentication

_CONF = """\
# Private single-node SLURM written by medtf.hpc.local_cluster: do not edit, it is rewritten at every start.
ClusterName=medtf-local
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job's restart (default 120 s); short keeps requeue tests quick.
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Short scheduling passes: a requeued job (or one whose dependency cleared) starts within seconds, not minutes.
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
# Impossible requests and failed dependencies must fail at once instead of pending forever (tests wait on them).
EnforcePartLimits=ALL
DependencyParameters=kill_invalid_depend
# Finished jobs stay visible to `scontrol show job` for 10 minutes (no slurmdbd, so no sacct).
MinJobAge=600
JobRequeue=1
ReturnToService=2
KillWait=5
InactiveLimit=0
MessageTimeout=10
SlurmdTimeout=60
SlurmctldTimeout=60
{nodes}"""


class LocalSlurmError(RuntimeError):
    """SLURM cannot be installed or started here (not root, packages missing, a daemon failed)."""


def install_command() -> list[str]:
    """The apt command that installs what a local instance needs (run it with services kept from starting)."""
    return ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]


def install(timeout: float = 600.0) -> None:
    """Install the packages with apt as root, keeping apt from starting the system's own daemons.

    While it runs, /usr/sbin/policy-rc.d exits 101 (Debian's "do not start services" hook); a policy file that
    was already there is left as it was. Raises `LocalSlurmError` where apt is missing or fails (e.g. offline).
    """
    if os.geteuid() != 0:
        raise LocalSlurmError("installing SLURM needs root")
    if shutil.which("apt-get") is None:
        raise LocalSlurmError("no apt-get here: install slurmctld, slurmd, slurm-client and munge yourself")
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\n# written by medtf.hpc.local_cluster.install: apt must not start services\n"
                          "exit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        proc = subprocess.run(install_command(), env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LocalSlurmError(f"{' '.join(install_command())} took longer than {timeout:.0f} s") from None
    finally:
        if created:
            policy.unlink()
    if proc.returncode != 0 or missing_programs():
        raise LocalSlurmError(f"{' '.join(install_command())} failed ({proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()[-800:]}")


def missing_programs() -> list[str]:
    return [p for p in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")
            if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped by pid 1) counts as stopped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurm:
    """One private SLURM instance rooted at ``root``.

    Args:
        root: folder for everything the instance writes (created; keep it short: the munge socket path is
            limited to ~100 characters).
        partition: name of the default partition (all nodes).
        cpu_nodes: extra CPU-only nodes ``HOST-cpuK``, also in a partition ``cpu`` (as a cluster's CPU nodes),
            each its own slurmd on 127.0.0.K+2 declaring this machine's CPUs (so the CPUs are oversubscribed).
            Needed for heterogeneous jobs: SLURM starts them from the backfill scheduler only, whose plan books
            whole nodes, so two components never start together on a single node (the first one's planned
            start takes the node; the second is planned after it ends, forever). 0 (default): one node.

    Example:
        >>> cluster = LocalSlurm("/tmp/medtf-slurm")      # doctest: +SKIP
        >>> env = cluster.start()                          # waits until the node is idle
        >>> subprocess.run(["sbatch", "--wrap", "hostname"], env=env)
        >>> cluster.stop()                                 # nothing left running
    """

    def __init__(self, root: str | os.PathLike, partition: str = "debug", cpu_nodes: int = 0):
        if not 0 <= cpu_nodes <= 8:
            raise ValueError(f"cpu_nodes must be 0..8, got {cpu_nodes}")
        self.root = Path(root).resolve()
        self.partition = partition
        self.conf = self.root / "etc" / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.nodes = [self.host] + [f"{self.host}-cpu{k}" for k in range(1, cpu_nodes + 1)]

    # --- paths -------------------------------------------------------------------------------------------------
    def _daemons(self) -> list[str]:
        """Stop order: every node's slurmd (``slurmd`` for the first, ``slurmd:NODE`` for the others), then the rest.

        Nodes whose pid file is there count too, so `stop` without ``cpu_nodes`` still stops every slurmd.
        """
        extra = {p.name[len("slurmd-"):-len(".pid")] for p in (self.root / "run").glob("slurmd-*.pid")}
        extra = sorted((extra | set(self.nodes[1:])) - {self.host})
        return ["slurmd"] + [f"slurmd:{node}" for node in extra] + list(DAEMONS[1:])

    def pid_file(self, daemon: str) -> Path:
        if daemon.startswith("slurmd"):
            return self.root / "run" / f"slurmd-{daemon.partition(':')[2] or self.host}.pid"
        return self.root / ("munge" if daemon == "munged" else "run") / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        if daemon.startswith("slurmd"):
            return self.root / "log" / f"slurmd-{daemon.partition(':')[2] or self.host}.log"
        return self.root / "log" / f"{daemon}.log"

    @property
    def env(self) -> dict:
        """``os.environ`` plus ``SLURM_CONF`` pointing at this instance (what clients and jobs need)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # --- state -------------------------------------------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        """Running daemons of this instance, by name (from their pid files)."""
        running = {}
        for daemon in self._daemons():
            try:
                pid = int(self.pid_file(daemon).read_text().split()[0])
            except (FileNotFoundError, ValueError, IndexError):
                continue
            if _pid_alive(pid):
                running[daemon] = pid
        return running

    def node_state(self) -> str:
        """``idle`` when every node is; otherwise what sinfo says per node (or its error)."""
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True,
                             timeout=30)
        if out.returncode != 0:
            return f"error: {out.stderr.strip()}"
        states = dict(line.split()[:2] for line in out.stdout.lower().splitlines() if len(line.split()) >= 2)
        if states and set(states.values()) == {"idle"}:
            return "idle"
        return ", ".join(f"{node} {state}" for node, state in states.items()) or "no nodes"

    # --- start / stop ------------------------------------------------------------------------------------------
    def _write_files(self) -> None:
        for sub in ("etc", "munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses a socket directory others cannot traverse and a key readable by others.
        os.chmod(self.root, 0o755)
        os.chmod(self.root / "munge", 0o755)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        os.chmod(key, 0o600)
        cpus = os.cpu_count() or 1
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        # The first node listens on SlurmdPort; each extra node's slurmd on its own address and port (one machine).
        lines = [f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN"]
        lines += [f"NodeName={node} NodeHostname={self.host} NodeAddr=127.0.0.{k + 1} Port={_free_port()} "
                  f"CPUs={cpus} RealMemory={memory} State=UNKNOWN" for k, node in enumerate(self.nodes[1:], 1)]
        lines.append(f"PartitionName={self.partition} Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE "
                     "State=UP")
        if len(self.nodes) > 1:
            lines.append(f"PartitionName=cpu Nodes={','.join(self.nodes[1:])} MaxTime=INFINITE State=UP")
        self.conf.write_text(_CONF.format(host=self.host, root=self.root, ctld_port=_free_port(),
                                          slurmd_port=_free_port(), nodes="\n".join(lines) + "\n"))

    def start(self, timeout: float = 60.0) -> dict:
        """Start munged, slurmctld and slurmd and wait until the node is idle; returns the client environment.

        Raises `LocalSlurmError` when this machine cannot run it (then nothing is left running).
        """
        if os.geteuid() != 0:
            raise LocalSlurmError("a private SLURM needs root (slurmd runs jobs as their owner)")
        missing = missing_programs()
        if missing:
            raise LocalSlurmError(f"missing {', '.join(missing)}; install with: {' '.join(install_command())} "
                                  "(with /usr/sbin/policy-rc.d exiting 101 so apt starts no services)")
        if self.pids():
            raise LocalSlurmError(f"an instance is already running under {self.root}: {self.pids()}")
        self._write_files()
        sock = self.root / "munge" / "munge.socket"
        commands = {
            "munged": [_which("munged"), f"--socket={sock}", f"--key-file={self.root}/munge/munge.key",
                       f"--pid-file={self.pid_file('munged')}", f"--log-file={self.log_file('munged')}",
                       f"--seed-file={self.root}/munge/munged.seed", "--force"],
            "slurmctld": [_which("slurmctld"), "-f", str(self.conf), "-i"],
            **{daemon: [_which("slurmd"), "-f", str(self.conf), "-N", daemon.partition(":")[2] or self.host]
               for daemon in self._daemons() if daemon.startswith("slurmd")},
        }
        try:
            for daemon in reversed(self._daemons()):  # each daemonises and writes its pid file
                proc = subprocess.run(commands[daemon], env=self.env, capture_output=True, text=True, timeout=30)
                if proc.returncode != 0:
                    raise LocalSlurmError(f"{daemon} failed ({proc.returncode}): {proc.stderr.strip()[-500:]} "
                                          f"{self._log_tail(daemon)}")
                self._wait(lambda: daemon in self.pids(), 15, f"{daemon} did not write a live pid file")
            self._wait(lambda: self.node_state() == "idle", timeout,
                       "the node did not become idle", lambda: self.node_state())
        except BaseException:
            self.stop()
            raise
        return self.env

    def _log_tail(self, daemon: str, chars: int = 800) -> str:
        try:
            return f"\n--- {self.log_file(daemon)} ---\n" + self.log_file(daemon).read_text()[-chars:]
        except FileNotFoundError:
            return ""

    def _wait(self, predicate, timeout: float, message: str, detail=None) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.2)
        extra = f" (last: {detail()})" if detail else ""
        raise LocalSlurmError(f"{message} within {timeout:.0f} s{extra}"
                              + "".join(self._log_tail(d) for d in self._daemons()))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the daemons named in this instance's pid files (TERM, then KILL); raise if one survives."""
        for daemon in self._daemons():
            pid = self.pids().get(daemon)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < end:
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
        left = self.pids()
        if left:
            raise LocalSlurmError(f"still running after stop: {left}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medtf.hpc.local_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("install", "start", "stop", "status"))
    parser.add_argument("--root", default="/tmp/medtf-slurm", help="instance folder (default %(default)s)")
    parser.add_argument("--cpu-nodes", type=int, default=0, metavar="K",
                        help="start: K extra CPU-only nodes (partition cpu), e.g. 1 for heterogeneous jobs")
    args = parser.parse_args(argv)
    cluster = LocalSlurm(args.root, cpu_nodes=args.cpu_nodes)
    try:
        if args.action == "install":
            install()
            print("installed: " + " ".join(PACKAGES))
        elif args.action == "start":
            cluster.start()
            print(f"export SLURM_CONF={cluster.conf}")
        elif args.action == "stop":
            cluster.stop()
            print("stopped")
        else:
            pids = cluster.pids()
            print(", ".join(f"{d} {p}" for d, p in pids.items()) or "not running")
            if "slurmctld" in pids:
                print(f"node: {cluster.node_state()}  (SLURM_CONF={cluster.conf})")
            return 0 if pids else 3
    except LocalSlurmError as exc:
        print(f"local slurm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
