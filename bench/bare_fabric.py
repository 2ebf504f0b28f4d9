"""The bare fabric deploy script that ``bench/deploy.py`` measures Chassis against.

Everything a deploy does on each host, with fabric and nothing else: one
thread and one fabric ``Connection`` per host; put the bundle, check its
sha256 on the host, unpack it into ``releases/<id>``, stop the old process
(pidfile), start the new one detached, poll ``/healthz`` every 100 ms until
200, swap the ``current`` symlink. No ledger: the floor any deploy tool pays.

It is a script of its own so that the benchmark can time it as a whole
command, exactly as it times ``chassis deploy`` and ``ansible-playbook``
(interpreter start and ``import fabric`` included, as the issue's own table
did), and call :func:`deploy` in its own process as well (the floor without
a start). Run: ``python bench/bare_fabric.py JOB.json``; the job names the
hosts, the release and the health timings (``bench/deploy.py`` writes it).
Exit 0 when every host is healthy on the new release, 1 with one line per
failed host on stderr otherwise.
"""

from __future__ import annotations

import http.client
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# Run as a script, bench/ is first on sys.path, where bench/ledger.py and its
# siblings would shadow packages of the same name: take it off.
if __name__ == "__main__":
    sys.path.pop(0)

import fabric
import paramiko

# Wait until process $pid has exited. A zombie counts as exited: on this
# machine PID 1 reaps orphans only about once a second, so `kill -0` alone
# would add a second to every stop (Chassis' supervisor skips zombies too).
WAIT_EXITED = (
    "while { IFS= read -r st < /proc/$pid/stat; } 2>/dev/null && st=${st##*) } && "
    '[ "${st%% *}" != Z ]; do sleep 0.05; done;'
)


class DeployFailed(Exception):
    """One host's deploy did not do its job (the message says what)."""


def http_status(address: str, port: int, timeout_s: float) -> tuple[int, str]:
    """Status and body of ``GET /healthz``; ``(0, why)`` when nothing answered."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout_s)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e)
    finally:
        conn.close()


def wait_healthy(address: str, port: int, health: dict[str, float]) -> None:
    """Poll ``/healthz`` every ``interval_s`` until it answers 200."""
    deadline = time.monotonic() + health["window_s"]
    while True:
        started = time.monotonic()
        status, body = http_status(address, port, health["timeout_s"])
        if status == 200:
            return
        if started + health["interval_s"] > deadline:
            raise DeployFailed(f"{address}:{port}/healthz never answered 200 ({status} {body})")
        time.sleep(max(0.0, started + health["interval_s"] - time.monotonic()))


def deploy_host(host: dict[str, Any], release: dict[str, str], job: dict[str, Any]) -> None:
    """Everything a deploy does on one host."""
    conn = fabric.Connection(
        host=host["address"],
        user=host["user"],
        port=host["ssh_port"],
        config=fabric.Config(ssh_config=paramiko.SSHConfig(), lazy=True),
        connect_kwargs={
            "key_filename": [host["client_key"]],
            "allow_agent": False,
            "look_for_keys": False,
            "timeout": job["connect_timeout_s"],
        },
    )
    conn.client.load_host_keys(host["known_hosts"])
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    q = shlex.quote
    root = host["root"]
    rel = f"{root}/releases/{release['dir_name']}"
    bundle = f"{rel}.tar.gz"
    pidfile = f"{root}/run/api.pid"

    def run(command: str) -> str:
        return str(conn.run(command, hide=True, in_stream=False).stdout)

    try:
        run(f"mkdir -p {q(root + '/releases')} {q(root + '/run')} {q(root + '/logs')}")
        conn.put(release["bundle"], bundle)
        found = run(f"sha256sum < {q(bundle)}").split()[0]
        if found != release["sha256"]:
            raise DeployFailed(f"{host['name']}: uploaded bundle has sha256 {found}")
        tmp = q(rel + ".unpack")
        run(
            f"rm -rf {tmp} && mkdir -p {tmp} && tar -xzf {q(bundle)} -C {tmp} && "
            f"rm -rf {q(rel)} && mv {tmp} {q(rel)}"
        )
        run(
            f"f={q(pidfile)}; if [ -f $f ]; then pid=$(cat $f); kill $pid 2>/dev/null; "
            f"{WAIT_EXITED} rm -f $f; fi"
        )
        run(
            f"cd {q(rel)} || exit 1; setsid nohup python3 app/api.py --port {host['app_port']} "
            f"--bind {host['address']} >> {q(root + '/logs/api.log')} 2>&1 < /dev/null & "
            f"echo $! > {q(pidfile)}"
        )
        wait_healthy(host["address"], host["app_port"], job["health"])
        link = q(root + "/current")
        run(f"ln -sfn {q('releases/' + release['dir_name'])} {link}.tmp && mv -T {link}.tmp {link}")
    finally:
        conn.close()


def deploy(job: dict[str, Any]) -> None:
    """Deploy ``job['release']`` to every host of the job, one thread each."""
    hosts = job["hosts"]
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        futures = [pool.submit(deploy_host, h, job["release"], job) for h in hosts]
        for future in futures:
            future.result()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: bare_fabric.py JOB.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    try:
        deploy(job)
    except Exception as e:  # one line, as a script's user would want
        print(f"bare fabric deploy failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
