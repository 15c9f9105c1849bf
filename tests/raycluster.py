"""A real local Ray head (``ray start --head`` on 127.0.0.1) for the cluster tests.

Every port is chosen free, the temp dir is private, token authentication is on with a token of
its own, and ``stop`` ends exactly the processes this head started (its temp dir is in their
command lines; workers and agents are their descendants), never ``ray stop``, which would end
every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(entry.name)] = (ppid, cmd)
    return out


class LocalHead:
    def __init__(self, num_cpus: float = 2, autoscaling_config: dict | None = None):
        # short: Ray's unix socket paths under it must stay below ~107 characters
        self.temp_dir = tempfile.mkdtemp(prefix="lt-ray-", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.num_cpus = num_cpus
        token = Path(self.temp_dir) / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.autoscaling_config = autoscaling_config

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> LocalHead:
        cmd = [
            RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
        ]  # fmt: skip
        if self.autoscaling_config is not None:
            import json

            path = Path(self.temp_dir) / "autoscaling.json"
            path.write_text(json.dumps(self.autoscaling_config))
            cmd.append(f"--autoscaling-config={path}")
            self.env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        subprocess.run(cmd, env=self.env, check=True, capture_output=True, timeout=120)
        return self

    def pids(self) -> list[int]:
        """This head's processes and all their descendants."""
        procs = processes()
        mine = {pid for pid, (_, cmd) in procs.items() if self.temp_dir in cmd}
        grew = True
        while grew:
            children = {pid for pid, (ppid, _) in procs.items() if ppid in mine} - mine
            mine |= children
            grew = bool(children)
        return sorted(mine - {os.getpid()})

    def stop(self, timeout: float = 20) -> None:
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.time() + timeout
            while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
                time.sleep(0.2)
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            if not pids:
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    @functools.cached_property
    def headers(self) -> dict[str, str]:
        """The HTTP header of this head's token, for Ray's SDK clients in the test process
        (no environment change: other tests' Ray sessions keep their own tokens)."""
        token = Path(self.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        return {"authorization": f"Bearer {token}"}

    def job_status(self, job: str) -> str:
        """The job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, or NOT SUBMITTED YET)
        from the job server, in this process: a ``ray job status`` process costs a second of
        CPU per poll, which the job under test needs on a 2-core machine (the test took 30 s
        longer with it)."""
        try:
            return str(self._job_client.get_job_status(job).value)
        except RuntimeError as error:  # the SDK's answer to a 404
            if "does not exist" in str(error):  # a `ray job submit` still submitting it
                return "NOT SUBMITTED YET"
            raise

    @functools.cached_property
    def _job_client(self):
        """One client per head: its constructor checks the server's version over HTTP."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url, headers=self.headers)

    def worker_nodes(self) -> int:
        """Alive nodes other than the head, from the state API (in this process, as above);
        -1 when the state API does not answer (as ``ray list nodes`` failing did before)."""
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource
        from ray.util.state.exception import RayStateApiException

        client = StateApiClient(address=self.dashboard_url, headers=self.headers)
        try:
            nodes = client.list(
                StateResource.NODES, ListApiOptions(), raise_on_missing_output=False
            )
        except RayStateApiException:
            return -1
        return sum(1 for n in nodes if n.state == "ALIVE" and not n.is_head_node)
