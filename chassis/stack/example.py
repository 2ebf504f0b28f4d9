"""The commented example stack written by ``chassis init --example``."""

from __future__ import annotations

EXAMPLE_STACK = """\
# Chassis stack file: what to run, how to group it, where it can run.
# Reference: guides/deployment.md. Validate with `chassis stack validate`.

[app]
name = "{name}"
description = "Example three-component app: gateway, api, worker"

# ---------------------------------------------------------------- components
# A component is one process. `command` runs from the release directory;
# `ports` are named so health checks can refer to them.

[components.gateway]
command = "python3 app/gateway.py --port 8080 --upstream 127.0.0.1:8081"
ports = {{ http = 8080 }}
env = {{ LOG_LEVEL = "info" }}
health = {{ type = "http", port = "http", path = "/healthz", body_contains = "ok", window_ms = 8000 }}
resources = {{ cpu = 0.25, memory = "256MiB" }}

[components.api]
command = "python3 app/api.py --port 8081"
ports = {{ http = 8081 }}
health = {{ type = "http", port = "http", path = "/healthz", passes = 3, window_ms = 8000 }}
resources = {{ cpu = 0.5, memory = "512MiB" }}

[components.worker]
command = "python3 app/worker.py"
health = {{ type = "command", command = "test -f ../../run/worker.ready", interval_ms = 250 }}
resources = {{ cpu = 0.5, memory = "512MiB" }}

# ------------------------------------------------------------------ profiles
# A profile groups components into node groups; each group lands on one host.

[profiles.monolith]
description = "everything on one host"
groups.all = {{ components = ["gateway", "api", "worker"] }}

[profiles.ternary-split-3]
description = "edge, core and jobs on three hosts"
groups.edge = {{ components = ["gateway"] }}
groups.core = {{ components = ["api"] }}
groups.jobs = {{ components = ["worker"] }}

[profiles.maximal-decoupled]
description = "every component alone, jobs only on hosts labelled role=batch"
groups.gateway = {{ components = ["gateway"] }}
groups.api = {{ components = ["api"] }}
groups.worker = {{ components = ["worker"], labels = {{ role = "batch" }} }}

# -------------------------------------------------------------- environments
# dev: three local hosts, each with its own root directory (relative paths
# are under the workspace). prod: ssh hosts; keys are paths, never contents.
# PLACEHOLDERS: the prod addresses (192.0.2.x) are reserved for documentation
# and reach nothing: put your hosts' addresses there, or delete the prod table.
# `chassis doctor` names them until then (`chassis doctor --env dev` skips them).

[environments.dev]
description = "local processes on this machine"
hosts = [
  {{ name = "dev-1", connector = "local", root = ".chassis/hosts/dev-1" }},
  {{ name = "dev-2", connector = "local", root = ".chassis/hosts/dev-2" }},
  {{ name = "dev-3", connector = "local", root = ".chassis/hosts/dev-3", labels = {{ role = "batch" }} }},
]

[environments.prod]
description = "three ssh hosts under systemd"
hosts = [
  {{ name = "prod-1", connector = "ssh", address = "192.0.2.11", user = "deploy", key = "~/.ssh/chassis_ed25519", root = "/srv/{name}", supervisor = "systemd" }},
  {{ name = "prod-2", connector = "ssh", address = "192.0.2.12", user = "deploy", key = "~/.ssh/chassis_ed25519", root = "/srv/{name}", supervisor = "systemd" }},
  {{ name = "prod-3", connector = "ssh", address = "192.0.2.13", user = "deploy", key = "~/.ssh/chassis_ed25519", root = "/srv/{name}", supervisor = "systemd", labels = {{ role = "batch" }} }},
]

# ------------------------------------------------------------------ releases
# A release is a .tar.gz bundle plus its configuration; its id is a digest
# of both. (The deploy engine builds and uses these.)

# `chassis init --example` built this bundle from dist/sample-app-v1/ (the
# sample app's source: change it, bundle it with `tar czf`, add it as v2).
[releases.v1]
artifact = "dist/sample-app-v1.tar.gz"
# config = {{ GREETING = "hello" }}   # release config: env for every component

# Shorter commands: with these, `chassis deploy --release v1` is enough.
# [defaults]
# env = "dev"
# and in [environments.dev]: profile = "ternary-split-3"

# ------------------------------------------------------------------ runtimes
# Hardware requirements for `chassis hardware validate`; built in:
# cuda-small, cuda-large, cpu-only.

[runtimes.small-cpu]
description = "anything with 2 cores and 1 GiB"
min_cores = 2
min_memory = "1GiB"

# -------------------------------------------------------------------- ledger
# Default: .chassis/ledger.db (SQLite). A shared ledger:
# [ledger]
# url = "postgresql://chassis@db.internal.example:5432/chassis?schema={schema}"
"""


def example_stack(name: str) -> str:
    return EXAMPLE_STACK.format(name=name, schema=name.replace("-", "_"))
