"""Ray nodes started for one test with the real `ray start` (a head on 127.0.0.1, more nodes on other loopback
addresses), and stopped by their own processes: never a bare `ray stop`, which stops every Ray on the machine,
another test's or a person's included."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port

BIN = Path(sys.executable).parent


class RayNodes:
    """One Ray cluster of this test's own: its temp dir (short: Unix socket paths are limited to 107 bytes) and its
    GCS port name every process it starts."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="aotrn", dir="/tmp")
        self.port = free_port()
        # one auth mode for every Ray process of the test: the nodes, the drivers and the clients
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def head(self, num_cpus: int, *extra: str, dashboard_port: int | None = None) -> None:
        """The head, with its dashboard (on 127.0.0.1) when given a port for it."""
        dash = ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port",
                str(dashboard_port)] if dashboard_port else ["--include-dashboard", "false"]
        out = self.ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                       "--num-cpus", str(num_cpus), "--temp-dir", self.temp, *dash, "--disable-usage-stats", *extra)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    def add(self, ip: str, num_cpus: int, *extra: str) -> None:
        """Another node, at loopback address `ip`, with ports of its own."""
        out = self.ray("start", "--address", self.address, "--node-ip-address", ip, "--num-cpus", str(num_cpus),
                       "--temp-dir", self.temp, "--dashboard-agent-listen-port", str(free_port()), *extra)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    def pids(self, ip: str | None = None) -> set[int]:
        """The processes of this cluster (of one node's address, with `ip`), with their children."""
        mine, parent = set(), {}
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            ours = self.temp in cmd or f":{self.port} " in cmd or cmd.rstrip().endswith(f":{self.port}")
            if ours and (ip is None or f"={ip} " in cmd or f"={ip}:" in cmd or cmd.rstrip().endswith(f"={ip}")):
                mine.add(int(p.name))
        grown = True
        while grown:  # the workers and agents a raylet started
            more = {pid for pid, pp in parent.items() if pp in mine and pid not in mine}
            grown, mine = bool(more), mine | more
        return mine - {os.getpid()}

    def kill(self, pids: set[int], grace_s: float = 10.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + grace_s
            while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
                time.sleep(0.2)

    def stop(self) -> None:
        self.kill(self.pids())
        shutil.rmtree(self.temp, ignore_errors=True)
