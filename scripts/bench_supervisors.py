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


def wait_exit(proc, timeout):
    """Waits for `proc` to exit, noticing it within half a millisecond.
    (Popen.wait with a timeout polls with sleeps that double up to 50 ms:
    an exit at 16 ms would be seen at 31.5 ms, which made "stop to exit"
    jump between two values.)"""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.0005)
    return proc.returncode


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
        # The API up, as the issue measures it (it answers /v1/health).
        port = free_port()
        self.api = f"http://127.0.0.1:{port}"
        lines = ["[api]", f'listen = "127.0.0.1:{port}"', ""]
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
        wait_exit(self.proc, 60)
        while any(alive(p) for p in tree):
            time.sleep(0.0005)

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


class Floor(Supervisor):
    """The floor: examples/floor.rs, a fork+exec loop that starts each
    command, starts again at once any that exits, and stops them all on
    SIGTERM. No state, no API: what a supervisor cannot beat."""
    name = "floor"

    def __init__(self, binary):
        self.binary = binary
        self.proc = None

    def setup(self, workdir, services):
        self.workdir = workdir
        self.config = os.path.join(workdir, "commands")
        with open(self.config, "w") as f:
            for s in services:
                f.write(" ".join(s.argv) + "\n")

    def start(self):
        self.proc = subprocess.Popen([self.binary, self.config], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=self.workdir)

    supervisor_pids = Warden.supervisor_pids
    stop = Warden.stop
    cleanup = Warden.cleanup


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_supervisors(warden_binary):
    """warden first, then every peer (the peers are added below)."""
    return [Warden(warden_binary)] + PEERS


# Peers (supervisord, runit, s6, pm2, Horust) register themselves here.
PEERS = []  # filled at the end of this file, once the classes exist


def which(cmd):
    return shutil.which(cmd)


# Where scripts/install-peers puts what is not a Debian package (gitignored).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_DIR = os.path.join(ROOT, "bench", "peers")
NOT_INSTALLED = "not installed: run scripts/install-peers"


def install_failure(peer):
    """Why scripts/install-peers could not install this peer, if it said."""
    try:
        with open(os.path.join(PEERS_DIR, f"{peer}.failed")) as f:
            return " ".join(f.read().split())
    except OSError:
        return None


def local_or_path(local, cmd):
    """The copy scripts/install-peers made under bench/peers, else PATH's."""
    return local if os.access(local, os.X_OK) else which(cmd)


def ppid_and_comm(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None, None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    return int(stat.rsplit(")", 1)[1].split()[1]), comm


def children_named(parent, comm):
    """The live children of parent whose command name is comm."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid, c = ppid_and_comm(int(entry))
            if ppid == parent and c == comm and alive(int(entry)):
                out.append(int(entry))
    return sorted(out)


def pids_under(workdir):
    """Every process whose command line names workdir or whose current
    directory is inside it: the supervisor and everything it runs (the
    services' command lines all name the stamps file in workdir). Used to
    clean up, even after the supervisor died and its services were
    reparented."""
    out = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if (workdir + os.sep) in cmdline or cwd == workdir or cwd.startswith(workdir + os.sep):
            out.append(int(entry))
    return out


def wait_all_gone(pids, timeout=120.0):
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            left = [p for p in pids if alive(p)]
            raise RuntimeError(f"still running {timeout:g} s after the stop: pids {left}")
        time.sleep(0.0005)


def write_script(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


def sh_exec(argv):
    """A run script: the shell execs the service, so the supervised pid is
    the service itself (the idiomatic runit/s6 run script)."""
    import shlex
    return "#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in argv) + "\n"


class Peer(Supervisor):
    """What the peers share: a workdir, the supervisor's root process (the
    one that stays in the foreground), its log, and stop/cleanup around
    them."""

    def setup(self, workdir, services):
        self.workdir = workdir
        self.proc = None
        self.log = None
        self.configure(workdir, services)

    def configure(self, workdir, services):
        raise NotImplementedError

    def env(self):
        return dict(os.environ)

    def spawn(self, argv):
        """Starts the supervisor in the foreground of its own process."""
        self.log = open(os.path.join(self.workdir, f"{self.name}.log"), "w")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env())

    def root_pid(self):
        return self.proc.pid

    def request_stop(self):
        """What an operator does to stop it all."""
        raise NotImplementedError

    def stop(self):
        tree = pids_of_tree(self.root_pid())
        self.request_stop()
        if self.proc:
            wait_exit(self.proc, 120)
        wait_all_gone(tree, timeout=120)

    def cleanup(self):
        if getattr(self, "workdir", None):
            for _ in range(3):
                left = [p for p in pids_under(self.workdir) if alive(p)]
                if not left:
                    break
                for p in left:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    wait_all_gone(left, timeout=5)
                except RuntimeError:
                    pass
        if getattr(self, "proc", None) and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
            self.log = None


class Supervisord(Peer):
    """supervisord in the foreground (-n). startsecs=0 so that a process
    that exits at once is not a failed start, and autorestart; it restarts
    from its main loop, whose poll wakes once a second."""
    name = "supervisord"

    def available(self):
        return None if which("supervisord") else NOT_INSTALLED

    def configure(self, workdir, services):
        import shlex

        def val(v):  # supervisord expands %(name)s in its values
            return v.replace("%", "%%")
        lines = [
            "[supervisord]",
            "nodaemon=true",
            f"logfile={val(os.path.join(workdir, 'supervisord-main.log'))}",
            f"pidfile={val(os.path.join(workdir, 'supervisord.pid'))}",
            f"childlogdir={val(workdir)}",
            "",
        ]
        for s in services:
            lines += [
                f"[program:{s.name}]",
                f"command={val(' '.join(shlex.quote(a) for a in s.argv))}",
                f"directory={val(workdir)}",
                "autostart=true",
                f"autorestart={'true' if s.restart else 'false'}",
                "startsecs=0",
                "startretries=1000000",
                "stopsignal=TERM",
                "stopwaitsecs=10",
                "stdout_logfile=NONE",
                "stderr_logfile=NONE",
                "",
            ]
        self.config = os.path.join(workdir, "supervisord.conf")
        with open(self.config, "w") as f:
            f.write("\n".join(lines))

    def start(self):
        self.spawn([which("supervisord"), "-n", "-c", self.config])

    def supervisor_pids(self):
        return [self.proc.pid]

    def request_stop(self):
        self.proc.send_signal(signal.SIGTERM)


class Runit(Peer):
    """runsvdir over one directory per service, each with an executable
    ./run that execs the service; runsvdir starts one runsv per service.
    runsv waits a second before restarting a ./run that exited at once:
    that is runit's behaviour, not configurable."""
    name = "runit"

    def available(self):
        missing = [c for c in ("runsvdir", "runsv") if not which(c)]
        return f"{NOT_INSTALLED} ({', '.join(missing)} missing)" if missing else None

    def configure(self, workdir, services):
        self.dir = os.path.join(workdir, "runit")
        for s in services:
            d = os.path.join(self.dir, s.name)
            os.makedirs(d)
            write_script(os.path.join(d, "run"), sh_exec(s.argv))
            if not s.restart:
                # ./finish runs after ./run exits: ask runsv not to restart it.
                write_script(os.path.join(d, "finish"), '#!/bin/sh\nexec sv down "$PWD"\n')

    def start(self):
        self.spawn([which("runsvdir"), self.dir])

    def supervisor_pids(self):
        return [self.proc.pid] + children_named(self.proc.pid, "runsv")

    def request_stop(self):
        # runsvdir(8): on HUP it sends TERM to every runsv, which takes its
        # service down (TERM, CONT) and exits; runsvdir exits 111.
        self.proc.send_signal(signal.SIGHUP)


class S6(Peer):
    """s6-svscan over one directory per service, each with an executable
    ./run that execs the service; s6-svscan starts one s6-supervise per
    service. s6-supervise waits a second before restarting a service that
    died within a second: s6's behaviour, not configurable."""
    name = "s6"

    def available(self):
        missing = [c for c in ("s6-svscan", "s6-supervise", "s6-svscanctl") if not which(c)]
        return f"{NOT_INSTALLED} ({', '.join(missing)} missing)" if missing else None

    def configure(self, workdir, services):
        self.dir = os.path.join(workdir, "s6")
        for s in services:
            d = os.path.join(self.dir, s.name)
            os.makedirs(d)
            write_script(os.path.join(d, "run"), sh_exec(s.argv))
            if not s.restart:
                # s6-supervise(8): ./finish exiting 125 means do not restart.
                write_script(os.path.join(d, "finish"), "#!/bin/sh\nexit 125\n")

    def start(self):
        self.spawn([which("s6-svscan"), self.dir])

    def supervisor_pids(self):
        return [self.proc.pid] + children_named(self.proc.pid, "s6-supervise")

    def request_stop(self):
        # Brings every service down, waits for the s6-supervise processes,
        # and makes s6-svscan exit.
        subprocess.run([which("s6-svscanctl"), "-t", self.dir], check=True,
                       stdout=subprocess.DEVNULL, stderr=self.log)


class Pm2(Peer):
    """pm2's God daemon (it daemonizes itself: started by `pm2 start`, its
    pid in $PM2_HOME/pm2.pid), with PM2_HOME in the workdir so that it never
    touches ~/.pm2. Fork mode, no interpreter (the binary itself), no
    restart delay, min_uptime 0, logs to /dev/null, and pm2's extras (git
    metadata, pmx/automation) off: pm2 at its leanest."""
    name = "pm2"

    def pm2(self):
        return local_or_path(os.path.join(PEERS_DIR, "npm", "node_modules", ".bin", "pm2"), "pm2")

    def available(self):
        if not which("node"):
            return f"{NOT_INSTALLED} (node missing)"
        if not self.pm2():
            return f"{NOT_INSTALLED} ({install_failure('pm2')})" if install_failure("pm2") else NOT_INSTALLED
        return None

    def env(self):
        env = dict(os.environ)
        env["PM2_HOME"] = self.home
        return env

    def configure(self, workdir, services):
        import json
        self.home = os.path.join(workdir, "pm2-home")
        os.makedirs(self.home)
        apps = [{
            "name": s.name,
            "script": s.argv[0],
            "args": s.argv[1:],
            "interpreter": "none",
            "exec_mode": "fork",
            "instances": 1,
            "cwd": workdir,
            "autorestart": s.restart,
            "restart_delay": 0,
            "min_uptime": 0,
            "max_restarts": 1000000000,
            "kill_timeout": 10000,
            "kill_signal": "SIGTERM",
            # pm2 special-cases /dev/null for logs (opens no file). Never
            # point pid_file there: pm2 unlinks the pid file on stop.
            "out_file": "/dev/null",
            "error_file": "/dev/null",
            "merge_logs": True,
            "watch": False,
            "vizion": False,
            "pmx": False,
            "automation": False,
        } for s in services]
        self.config = os.path.join(workdir, "ecosystem.config.js")
        with open(self.config, "w") as f:
            f.write("module.exports = " + json.dumps({"apps": apps}, indent=1) + ";\n")

    def start(self):
        # The CLI starts the daemon, hands it the apps and exits.
        self.log = open(os.path.join(self.workdir, "pm2.log"), "w")
        subprocess.run([self.pm2(), "start", self.config], stdin=subprocess.DEVNULL,
                       stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir,
                       env=self.env(), check=True)

    def root_pid(self):
        with open(os.path.join(self.home, "pm2.pid")) as f:
            return int(f.read().strip())

    def supervisor_pids(self):
        return [self.root_pid()]

    def request_stop(self):
        subprocess.run([self.pm2(), "kill"], stdin=subprocess.DEVNULL, stdout=self.log,
                       stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env(), check=True)


class Horust(Peer):
    """horust over a directory of one TOML per service: restart strategy
    always, backoff 0 s, no start delay."""
    name = "horust"

    def horust(self):
        return local_or_path(os.path.join(PEERS_DIR, "horust", "bin", "horust"), "horust")

    def available(self):
        if self.horust():
            return None
        why = install_failure("horust")
        return f"{NOT_INSTALLED} ({why})" if why else NOT_INSTALLED

    def configure(self, workdir, services):
        import json
        import shlex
        self.dir = os.path.join(workdir, "horust")
        os.makedirs(self.dir)
        for s in services:
            # Horust splits command with shlex; TOML basic strings escape
            # like JSON. Service files also go through shell-like ${VAR}
            # expansion, hence no $ in the paths used here.
            command = " ".join(shlex.quote(a) for a in s.argv)
            with open(os.path.join(self.dir, f"{s.name}.toml"), "w") as f:
                f.write("\n".join([
                    f"command = {json.dumps(command)}",
                    f"working-directory = {json.dumps(workdir)}",
                    'start-delay = "0s"',
                    "[restart]",
                    f'strategy = "{"always" if s.restart else "never"}"',
                    'backoff = "0s"',
                    "attempts = 0",
                    "[termination]",
                    'signal = "TERM"',
                    'wait = "10s"',
                    "",
                ]))

    def start(self):
        self.spawn([self.horust(), "--services-path", self.dir,
                    "--uds-folder-path", os.path.join(self.workdir, "uds"),
                    "--config-path", os.path.join(self.workdir, "horust.toml")])

    def supervisor_pids(self):
        return [self.proc.pid]

    def request_stop(self):
        self.proc.send_signal(signal.SIGTERM)


PEERS[:] = [Supervisord(), Runit(), S6(), Pm2(), Horust()]
