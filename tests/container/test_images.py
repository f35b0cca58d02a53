"""The real Dockerfiles, built with `make images` (buildah) and run with podman as Data Flow runs them.

This tier fails, and is never skipped, on a machine that cannot build or run images.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Kafka, new_task_db
from devkit import containers
from devkit.apps import http_get
from devkit.databases import MariaDB
from devkit.metadata import LABEL, metadata
from devkit.tansu import Tansu, free_port
from devkit.waiting import wait_for

RECIPE = {"processor": "polyglot-python-processor", "router": "polyglot-python-app", "task": "polyglot-python-task"}
FAST_GROUPS = ["--spring.cloud.stream.kafka.binder.consumerProperties.session.timeout.ms=6000",
               "--spring.cloud.stream.kafka.binder.consumerProperties.heartbeat.interval.ms=2000"]


@pytest.fixture(scope="session")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    containers.require_tools()
    return containers.podman_environ(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="session")
def images(podman_env: dict[str, str]) -> dict[str, str]:
    """The three images, built once per session on the cached stand-in base."""
    containers.ensure_base_image(podman_env)
    return containers.build_images(podman_env)


class Container:
    """A `podman run` in the foreground of a child process, its output in a file."""

    def __init__(self, command: list[str], environ: dict[str, str], log: Path) -> None:
        self.name, self.environ, self.log_path = command[command.index("--name") + 1], environ, log
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, env=environ, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """`podman stop`: SIGTERM, then SIGKILL after 10 s, as Kubernetes does; the container's exit code."""
        subprocess.run([*containers.PODMAN, "stop", "-t", "10", self.name], env=self.environ, check=False,
                       capture_output=True, timeout=60)
        return self.process.wait(30)

    def kill(self) -> None:
        if self.process.poll() is None:
            subprocess.run([*containers.PODMAN, "rm", "-f", self.name], env=self.environ, check=False,
                           capture_output=True, timeout=60)
            self.process.wait(30)


@pytest.fixture
def run(podman_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def start(image: str, args: list[str], env: dict[str, str] | None = None,
              volumes: dict[str, str] | None = None) -> Container:
        name = f"polyglot-test-{uuid.uuid4().hex[:8]}"
        container = Container(containers.run_args(image, args, name, env, volumes=volumes), podman_env,
                              tmp_path / f"{name}.log")
        started.append(container)
        return container

    yield start
    for container in started:
        container.kill()


def run_to_end(podman_env: dict[str, str], image: str, args: list[str], entrypoint: str | None = None) -> \
        subprocess.CompletedProcess[str]:
    command = containers.run_args(image, args, f"polyglot-test-{uuid.uuid4().hex[:8]}", entrypoint=entrypoint)
    return subprocess.run(command, env=podman_env, capture_output=True, text=True, timeout=120, check=False)


def test_processor_image_reverses_answers_probes_runs_as_non_root_and_drains_on_stop(
        images: dict[str, str], run: Callable[..., Container], broker: Tansu, kafka: Kafka,
        names: Callable[[str], str], podman_env: dict[str, str]) -> None:
    source, sink, port = kafka.create(names("in")), names("out"), free_port()
    container = run(images[RECIPE["processor"]], [
        f"--spring.cloud.stream.bindings.input.destination={source}", "--spring.cloud.stream.bindings.input.group=s",
        f"--spring.cloud.stream.bindings.output.destination={sink}", "--spring.cloud.dataflow.stream.name=s",
        "--spring.cloud.dataflow.stream.app.label=python-processor", f"--server.port={port}", "--reversestring=true",
        *FAST_GROUPS], env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": broker.bootstrap})
    wait_for(lambda: http_get(port, "/actuator/health")[0] == 200, 60, "health UP in the container")
    kafka.produce(source, [b"hello world"], headers=[("contentType", b"text/plain")])
    assert [r.value for r in kafka.read(sink, 1)] == [b"dlrow olleh"]
    info = json.loads(http_get(port, "/actuator/info")[1])
    assert info["stream"] == {"name": "s", "label": "python-processor"}
    assert info["app"]["version"] == containers.TAG
    pid = containers.inspect(container.name, "{{.State.Pid}}", podman_env, kind="container")
    uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    assert uids.split()[1:] == ["10001"] * 4
    assert container.stop() == 0
    assert "Stopped cleanly" in container.log


def test_processor_image_reads_the_instance_index_the_statefulset_init_container_wrote_to_config(
        images: dict[str, str], run: Callable[..., Container], broker: Tansu, kafka: Kafka,
        names: Callable[[str], str], tmp_path: Path) -> None:
    """Data Flow's Kubernetes deployer, for a partitioned app: pod ``<app>-1`` gets its index only in the file."""
    config = tmp_path / "config"
    config.mkdir(mode=0o755)
    (config / "application.properties").write_text("INSTANCE_INDEX=1\nspring.cloud.stream.instanceIndex=1\n")
    (config / "application.properties").chmod(0o644)
    source, sink, port = kafka.create(names("in"), partitions=2), names("out"), free_port()
    container = run(images[RECIPE["processor"]], [
        f"--spring.cloud.stream.bindings.input.destination={source}", "--spring.cloud.stream.bindings.input.group=s",
        f"--spring.cloud.stream.bindings.output.destination={sink}", "--spring.cloud.stream.instanceCount=2",
        "--spring.cloud.stream.kafka.bindings.input.consumer.autoRebalanceEnabled=false",
        "--spring.cloud.stream.bindings.input.consumer.partitioned=true", f"--server.port={port}",
        "--reversestring=true", *FAST_GROUPS], env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": broker.bootstrap},
        volumes={str(config): "/config"})
    wait_for(lambda: http_get(port, "/actuator/health")[0] == 200, 60, "health UP in the container")
    wait_for(lambda: f"Static assignment (instance 1 of 2): {source}-1" in container.log, 60, "the assignment")
    kafka.produce(source, [b"zero"], headers=[("contentType", b"text/plain")], partition=0)
    kafka.produce(source, [b"one"], headers=[("contentType", b"text/plain")], partition=1)
    assert [r.value for r in kafka.read(sink, 1, settle=2.0)] == [b"eno"]  # partition 0 is instance 0's
    assert json.loads(http_get(port, "/actuator/info")[1])["config"] == {"files": ["/config/application.properties"],
                                                                         "profiles": ["default"]}
    assert 'instance_index="1"' in http_get(port, "/actuator/prometheus")[1]
    assert container.stop() == 0


def test_router_image_routes_in_the_boot_entry_point_style(
        images: dict[str, str], run: Callable[..., Container], broker: Tansu, kafka: Kafka,
        names: Callable[[str], str]) -> None:
    source, even, odd, port = kafka.create(names("time")), names("even"), names("odd"), free_port()
    app_json = {"spring.cloud.stream.bindings.input.destination": source,
                "spring.cloud.stream.bindings.even.destination": even,
                "spring.cloud.stream.bindings.odd.destination": odd,
                "spring.cloud.stream.bindings.input.group": names("g"), "server.port": str(port),
                "spring.cloud.stream.kafka.binder.brokers": broker.bootstrap,
                **dict(arg[2:].split("=", 1) for arg in FAST_GROUPS)}
    container = run(images[RECIPE["router"]], [], env={"SPRING_APPLICATION_JSON": json.dumps(app_json)})
    kafka.produce(source, [b"05/17/21 17:56:36", b"05/17/21 17:56:37"])
    assert [r.value for r in kafka.read(even, 1)] == [b"Even timestamp: 05/17/21 17:56:36"]
    assert [r.value for r in kafka.read(odd, 1)] == [b"Odd timestamp: 05/17/21 17:56:37"]
    assert container.stop() == 0


def test_task_image_completes_the_row_and_fails_with_error_message(
        images: dict[str, str], mariadb: MariaDB, podman_env: dict[str, str]) -> None:
    db = new_task_db(mariadb)
    db.insert_execution(1, "python-task")
    db.insert_execution(2, "python-task")
    common = ["--sleep.seconds=0", "--spring.cloud.task.name=python-task", *db.args]
    ok = run_to_end(podman_env, images[RECIPE["task"]], [*common, "--spring.cloud.task.executionid=1"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    failed = run_to_end(podman_env, images[RECIPE["task"]],
                        ["--error.message=MyTestError", *common, "--spring.cloud.task.executionid=2"])
    assert failed.returncode == 1
    rows = db.rows()
    assert (rows[1]["EXIT_CODE"], rows[1]["END_TIME"] is not None) == (0, True)
    assert rows[2]["EXIT_CODE"] == 1
    assert "MyTestError" in rows[2]["ERROR_MESSAGE"]


def secret_volume(where: Path, files: dict[str, str]) -> Path:
    """A directory laid out as Kubernetes mounts a Secret: the files in a timestamped directory behind ``..data``,
    a symlink a name; readable by the image's non-root user."""
    data = where / "..2026_12_04_00_00_00.1"
    data.mkdir(parents=True, mode=0o755)
    where.chmod(0o755)
    (where / "..data").symlink_to(data.name)
    for name, value in files.items():
        (data / name).write_text(value)
        (data / name).chmod(0o644)
        (where / name).symlink_to(f"..data/{name}")
    return where


def test_task_image_reads_a_profile_from_a_config_map_and_a_password_from_a_secret_config_tree(
        images: dict[str, str], mariadb: MariaDB, podman_env: dict[str, str], run: Callable[..., Container],
        tmp_path: Path) -> None:
    """SPRING_PROFILES_ACTIVE picks /config/application-prod.yml (a mounted ConfigMap); SPRING_CONFIG_IMPORT
    reads the datasource password from a mounted Secret; the password is in no output and no task row."""
    password = "from-a-mounted-secret"
    db = new_task_db(mariadb, user="from-a-tree", password=password)
    db.insert_execution(3, "python-task")
    secrets = secret_volume(tmp_path / "secrets", {"spring.datasource.password": password + "\n"})
    config = secret_volume(tmp_path / "config", {"application-prod.yml": "exit.message: prod-from-a-config-map\n"})
    args = ["--sleep.seconds=0", "--spring.cloud.task.name=python-task", "--spring.cloud.task.executionid=3",
            "--logging.level.root=DEBUG", *(a for a in db.args if "password" not in a)]
    container = run(images[RECIPE["task"]], args,
                    env={"SPRING_PROFILES_ACTIVE": "prod", "SPRING_CONFIG_IMPORT": "optional:configtree:/etc/secrets/"},
                    volumes={str(secrets): "/etc/secrets", str(config): "/config"})
    assert container.process.wait(120) == 0, container.log
    row = db.rows()[3]
    assert (row["EXIT_CODE"], row["EXIT_MESSAGE"]) == (0, "prod-from-a-config-map")
    assert password not in container.log
    assert not [param for param in db.params(3) if password in param]


@pytest.mark.parametrize("recipe", sorted(RECIPE))
def test_image_labels_list_every_property_and_the_build(
        recipe: str, images: dict[str, str], podman_env: dict[str, str]) -> None:
    labels = json.loads(containers.inspect(images[RECIPE[recipe]], "{{json .Labels}}", podman_env))
    assert json.loads(labels[LABEL]) == json.loads(json.dumps(metadata(recipe)))
    assert labels["org.opencontainers.image.version"] == containers.TAG
    assert len(labels["org.opencontainers.image.revision"]) == 40
    assert labels["org.opencontainers.image.title"] == RECIPE[recipe]
    if recipe == "router":
        assert (labels["configuration-properties.inbound-ports"],
                labels["configuration-properties.outbound-ports"]) == ("input", "even,odd")


@pytest.mark.parametrize("recipe", sorted(RECIPE))
def test_image_has_no_compilers_or_headers_and_a_non_root_user(
        recipe: str, images: dict[str, str], podman_env: dict[str, str]) -> None:
    config = json.loads(containers.inspect(images[RECIPE[recipe]], "{{json .Config}}", podman_env))
    assert config["User"] == "10001"
    assert config["Entrypoint"][0] == "/opt/venv/bin/python"
    assert not config.get("Cmd")
    assert "PYTHONUNBUFFERED=1" in config["Env"]
    probe = run_to_end(podman_env, images[RECIPE[recipe]],
                       ["-c", "command -v gcc cc g++ pkg-config; ls -d /usr/include/mariadb /usr/include/mysql "
                        "2>/dev/null; id -u"], entrypoint="sh")
    assert probe.stdout.split() == ["10001"], probe.stdout


def test_image_sizes(images: dict[str, str], podman_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    sizes = {name: int(containers.inspect(image, "{{.Size}}", podman_env)) for name, image in images.items()}
    base = int(containers.inspect(containers.base_image(), "{{.Size}}", podman_env))
    with capsys.disabled():
        print(f"\nimage sizes (on the Debian stand-in base of {base / 1e6:.0f} MB, not the real slim one):")
        for name, size in sorted(sizes.items()):
            print(f"  {name}: {size / 1e6:.0f} MB ({(size - base) / 1e6:+.0f} MB over the base)")
    assert all(size > base for size in sizes.values())
