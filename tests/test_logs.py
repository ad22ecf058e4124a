"""One log: :func:`workembed.logs.setup_logging` sets up one console handler (again on a second call), ``-q``
and ``-v`` move its level, library loggers stay off the console below WARNING but reach the log file."""

import logging
from pathlib import Path

import pytest

import workembed
from workembed.cli import build_parser, with_default_subcommand
from workembed.logs import JOB_LOG_ENV, LIBRARIES, LOGGER, job_console_line, setup_logging


@pytest.fixture(autouse=True)
def restore_logging():
    """Each test starts from, and leaves, the logging state it found."""
    names = ["", LOGGER, *LIBRARIES]
    saved = {
        name: (
            logging.getLogger(name).level,
            logging.getLogger(name).propagate,
            list(logging.getLogger(name).handlers),
        )
        for name in names
    }
    handler_levels = {handler: handler.level for _, _, handlers in saved.values() for handler in handlers}
    yield
    for name, (level, propagate, handlers) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(level)
        logger.propagate = propagate
    for handler, level in handler_levels.items():
        handler.setLevel(level)


def test_setup_is_idempotent():
    setup_logging()
    setup_logging(verbosity=1)
    assert len(logging.getLogger(LOGGER).handlers) == 1
    assert logging.getLogger(LOGGER).handlers[0].level == logging.DEBUG
    library_consoles = [
        h for h in logging.getLogger().handlers if h.get_name() == "workembed-library-console"
    ]
    assert len(library_consoles) == 1


def test_progress_lines_are_plain_and_quiet_hides_them(capsys):
    log = logging.getLogger("workembed.some.stage")
    setup_logging()
    log.info("embedded 10 texts")
    log.debug("a detail")
    log.warning("3 rows rejected")
    assert capsys.readouterr().err == "embedded 10 texts\nwarning: 3 rows rejected\n"
    setup_logging(verbosity=-1)
    log.info("embedded 10 texts")
    log.warning("3 rows rejected")
    assert capsys.readouterr().err == "warning: 3 rows rejected\n"
    setup_logging(verbosity=1)
    log.debug("a detail")
    assert capsys.readouterr().err == "a detail\n"


def test_library_info_goes_to_the_log_file_not_the_console(capsys, tmp_path):
    path = tmp_path / "logs" / "run.log"
    setup_logging(log_file=path)
    setup_logging(log_file=path)  # the path is printed once
    assert capsys.readouterr().err.count(str(path)) == 1
    logging.getLogger("urllib3.connectionpool").info("connection pool opened")
    logging.getLogger("ray").info("ray is ready")  # Ray's logger does not propagate: it gets the file too
    logging.getLogger("urllib3.connectionpool").warning("a library warning")
    logging.getLogger("workembed.train").info("step 1")
    logging.getLogger("workembed.train").debug("a detail")
    err = capsys.readouterr().err
    assert "connection pool opened" not in err and "ray is ready" not in err
    assert "a library warning" in err and "step 1\n" in err and "a detail" not in err
    for handler in logging.getLogger().handlers:
        handler.flush()
    written = path.read_text(encoding="utf-8")
    for line in ("connection pool opened", "ray is ready", "a library warning", "step 1", "a detail"):
        assert line in written
    assert "INFO urllib3.connectionpool: connection pool opened" in written


def test_quiet_and_verbose_come_before_the_command_or_after_run_stage():
    parser = build_parser()
    args = parser.parse_args(["-q", "esco", "stats"])
    assert (args.quiet, args.verbose) == (1, None)
    args = parser.parse_args(["-vv", "run", "ingest", "-c", "x.yaml"])
    assert args.verbose == 2
    args = parser.parse_args(["run", "ingest", "-q", "-c", "x.yaml", "--log-file", "run.log"])  # jobs.ingest
    assert (args.quiet, args.log_file) == (1, "run.log")
    assert with_default_subcommand(["-q", "eval", "--dataset", "D"]) == [
        "-q",
        "eval",
        "run",
        "--dataset",
        "D",
    ]
    assert with_default_subcommand(["--log-file", "x", "eval"]) == ["--log-file", "x", "eval", "run"]


def test_pipeline_job_lines_carry_the_prefix_the_runner_shows(capsys, monkeypatch):
    monkeypatch.setenv(JOB_LOG_ENV, "1")
    setup_logging()
    logging.getLogger("workembed.data").info("ingest run r1: 2 rows\nsecond line")
    logging.getLogger("workembed.data").warning("3 rejects")
    logging.getLogger("urllib3").warning("connection pool is full")
    lines = capsys.readouterr().err.splitlines()
    assert [job_console_line(line) for line in lines] == [
        "ingest run r1: 2 rows",
        "second line",
        "warning: 3 rejects",
        None,  # a library's line: the log file only
    ]
    assert job_console_line("\x1b[36m(pid=12) workembed| not the driver's") is None
    assert job_console_line("Loading weights: 100%|██████████| 103/103") is None


def test_modules_run_as_main_log_under_the_workembed_logger():
    """``python -m workembed.demo`` names its module ``__main__``: a ``getLogger(__name__)`` there would fall
    outside the ``workembed`` logger, and its lines (the demo's answers) would never reach the console."""
    package = Path(workembed.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if '__name__ == "__main__"' in (text := path.read_text(encoding="utf-8"))
        and "getLogger(__name__)" in text
    ]
    assert offenders == []
