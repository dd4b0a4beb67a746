"""The supervisors scripts/bench compares, behind one interface.

Each class knows how to write its own configuration for a list of services,
start the supervisor, name the supervisor's own processes (to measure their
memory and CPU, not the services'), and stop everything. Every supervisor
runs the same services: the `stamp` example binary, which appends a
nanosecond timestamp to a file and then exits or sleeps.

A supervisor that is not installed says why in `available()`; the bench
prints that in its table instead of a figure.
"""
import os
import shutil
import signal
import subprocess
import time


class Svc:
    """One service: a name, a command line, whether to restart it."""

    def __init__(self, name, argv, restart=True):
        self.name = name
        self.argv = argv
        self.restart = restart


def pids_of_tree(root_pid):
    """root_pid and all its descendants (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root_pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Supervisor:
    name = "?"

    def available(self):
        """None when it can run here, else the reason it cannot."""
        return None

    def setup(self, workdir, services):
        raise NotImplementedError

    def start(self):
        raise NotImplementedError

    def supervisor_pids(self):
        """The supervisor's own processes (not the services it runs)."""
        raise NotImplementedError

    def stop(self):
        """Stops everything; returns once the supervisor and every service
        have exited."""
        raise NotImplementedError

    def cleanup(self):
        pass


class Warden(Supervisor):
    name = "warden"

    def __init__(self, binary):
        self.binary = binary
        self.proc = None

    def setup(self, workdir, services):
        self.workdir = workdir
        lines = ["[api]", "enabled = false", ""]
        for s in services:
            argv = ", ".join(f'"{a}"' for a in s.argv)
            policy = "always" if s.restart else "never"
            lines += [
                f"[services.{s.name}]",
                'kind = "process"',
                f"command = [{argv}]",
                f'restart = {{ policy = "{policy}", max_restarts = 1000000, window = "1s", '
                'backoff = { initial = "0s", max = "0s", jitter = 0.0 } }',
                "",
            ]
        self.config = os.path.join(workdir, "services.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines))

    def start(self):
        self.log = open(os.path.join(self.workdir, "warden.log"), "w")
        env = dict(os.environ)
        env.pop("WARDEN_LOG", None)
        self.proc = subprocess.Popen(
            [self.binary, "run", "-c", self.config, "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=self.log, env=env, cwd=self.workdir)

    def supervisor_pids(self):
        return [self.proc.pid]

    def stop(self):
        tree = pids_of_tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        while any(alive(p) for p in tree):
            time.sleep(0.0005)

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


def all_supervisors(warden_binary):
    """warden first, then every peer (the peers are added below)."""
    return [Warden(warden_binary)] + PEERS


# Peers (supervisord, runit, s6, pm2, Horust) register themselves here.
PEERS = []


def which(cmd):
    return shutil.which(cmd)
