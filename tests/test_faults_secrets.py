"""Secrets never leak: every output of runs that used them (logs, actuator answers, task rows) is scanned."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from conftest import TASK_SCRIPT, Figures, TaskDatabase
from devkit.apps import App
from devkit.waiting import wait_for

StartApp = Callable[..., App]
ACTUATOR = ("/actuator/health", "/actuator/health/liveness", "/actuator/info", "/actuator/prometheus",
            "/actuator/env", "/actuator/configprops")


def leaks(secrets: list[str], texts: dict[str, str]) -> list[str]:
    """Where any secret, or its URL-encoded form, appears."""
    forms = {form for secret in secrets for form in (secret, quote(secret, safe=""))}
    return [f"{where}: {form}" for where, text in texts.items() for form in forms if form in text]


# How each client logs a SASL handshake the broker refused.
SASL_REFUSED = {"librdkafka": "SASL PLAIN mechanism handshake failed", "kafka-python": "SaslHandshake failed"}


def test_stream_app_keeps_sasl_and_ssl_secrets_out_of_logs_and_actuator(
        start_processor: Callable[..., App], names: Callable[[str], str], client: str, figures: Figures) -> None:
    jaas, key = "Jaas-pw-31f9", "Ssl-key-pw-77c2"
    config = "spring.cloud.stream.kafka.binder.configuration"
    secrets_json = json.dumps({
        f"{config}.sasl.jaas.config":
            f'org.apache.kafka.common.security.plain.PlainLoginModule required username="alice" password="{jaas}";',
        f"{config}.ssl.key.password": key})
    texts: dict[str, str] = {}
    # PLAINTEXT: the secrets are configured but unused; the app runs, its actuator answers.
    running = start_processor(names("in"), names("out"), "--logging.level.root=DEBUG",
                              env={"SPRING_APPLICATION_JSON": secrets_json})
    running.wait_for_log("Partitions assigned")
    for path in ACTUATOR:
        texts[f"running {path}"] = running.get(path)[1]
    assert running.stop() == 0
    texts["running log"] = running.log
    # SASL against a broker that has none: the app fails, saying why, in its log.
    failing = start_processor(names("in"), names("out"), "--logging.level.root=DEBUG",
                              f"--{config}.security.protocol=SASL_PLAINTEXT", f"--{config}.sasl.mechanism=PLAIN",
                              env={"SPRING_APPLICATION_JSON": secrets_json})
    failing.port  # noqa: B018 - the actuator is up while the client fails
    texts["failing /actuator/info"] = failing.get("/actuator/info")[1]
    # It retries until its bootstrap timeout, then exits 1 (librdkafka sooner: the broker refused the handshake).
    wait_for(lambda: SASL_REFUSED[client] in failing.log, 30, "the refused handshake logged")
    assert failing.stop(timeout=10) in (0, 1)
    texts["failing log"] = failing.log
    assert leaks([jaas, key], texts) == []
    figures.add("stream outputs scanned", f"{len(texts)} ({sum(len(t) for t in texts.values())} characters), "
                "logging at DEBUG")


def test_task_keeps_the_database_password_out_of_logs_rows_and_params(
        task_db: Callable[..., TaskDatabase], start_app: StartApp, tmp_path: Path, figures: Figures) -> None:
    password, wrong, token = "Db-pw-4e8a:@/?", "Wrong-pw-9d21", "Token-5b3c"
    db = task_db(user="scdf_scan", password=password)  # its own user: the others keep their password
    scheme, where = db.url.split("://", 1)
    host, rest = where.split("/", 1)
    base = ["--spring.cloud.task.name=python-task", f"--spring.cloud.task.tablePrefix={db.prefix}",
            "--sleep.seconds=0", "--logging.level.root=DEBUG", f"--api.token={token}"]
    launches = {
        "password property": ([f"--spring.datasource.url={db.url}", f"--spring.datasource.username={db.user}",
                               f"--spring.datasource.password={password}"], {}),
        "password in the URL's user info": (
            [f"--spring.datasource.url={scheme}://{db.user}:{quote(password, safe='')}@{host}/{rest}"], {}),
        "password in the URL's query": (
            [f"--spring.datasource.url={db.url}&user={db.user}&password={quote(password, safe='')}"], {}),
        "password from a Kubernetes secret, failing run": (
            [f"--spring.datasource.url={db.url}", "--error.message=boom"],
            {"SPRING_DATASOURCE_USERNAME": db.user, "SPRING_DATASOURCE_PASSWORD": password}),
        "password in SPRING_APPLICATION_JSON": (
            [], {"SPRING_APPLICATION_JSON": json.dumps({"spring.datasource.url": db.url,
                                                        "spring.datasource.username": db.user,
                                                        "spring.datasource.password": password})}),
        "wrong password": ([f"--spring.datasource.url={db.url}", f"--spring.datasource.username={db.user}",
                            f"--spring.datasource.password={wrong}"], {}),
    }
    texts: dict[str, str] = {}
    codes = {}
    for name, (args, env) in launches.items():
        app = start_app(TASK_SCRIPT, [*base, *args], env)
        codes[name] = app.wait(60)
        texts[f"log, {name}"] = app.log
    assert list(codes.values()) == [0, 0, 0, 1, 0, 1], texts
    assert "Access denied" in texts["log, wrong password"] or "authentication failed" in texts["log, wrong password"]
    texts["TASK_EXECUTION"] = repr(db.rows())
    texts["TASK_EXECUTION_PARAMS"] = repr([db.params(i) for i in db.rows()])
    assert leaks([password, wrong, token], texts) == []
    assert len(db.rows()) == 5
    figures.add(f"{db.server.name}: task outputs scanned", f"{len(texts)} ({sum(len(t) for t in texts.values())} "
                "characters), logging at DEBUG")
