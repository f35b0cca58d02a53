"""Spring Cloud Data Flow task: records its run in the TASK_* tables, waits, and fails on request.

    task create --name python-task --definition "python-task-with-status"
    task launch --name python-task --arguments "--error.message=MyTestError"
"""

import logging
import time

from util import Property, TaskExecution, run_task

log = logging.getLogger("python_task")

SLEEP_SECONDS = Property("sleep.seconds", float, 60, "How long the task works (waits), seconds.")
ERROR_MESSAGE = Property("error.message", str, None, "When set, the task fails with this message.")
EXIT_MESSAGE = Property("exit.message", str, None,
                        "Exit message of a successful run (composed-task transitions match it).")
OPTIONS = {"sleep_seconds": SLEEP_SECONDS, "error_message": ERROR_MESSAGE, "exit_message": EXIT_MESSAGE}


def task(execution: TaskExecution, sleep_seconds: float, error_message: str | None,
         exit_message: str | None) -> str | None:
    """The work: acknowledge, wait (SIGTERM ends the wait), then fail if asked to."""
    log.info("Task %s started, execution id %d; working for %g s", execution.name, execution.id, sleep_seconds)
    time.sleep(sleep_seconds)
    if error_message:
        raise RuntimeError(error_message)
    return exit_message


if __name__ == "__main__":
    run_task(task, OPTIONS)
