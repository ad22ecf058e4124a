"""What every test shares (environment, ports, the tracking guard) and the two test tiers.

Tiers (``make test-unit``, ``make test-integration``; ``make test`` runs both):

- ``unit``: no Ray, no services, no model beyond a tiny random one; fixtures in ``tests/fixtures/unit.py``.
- ``integration``: local Ray, real servers (S3, MLflow), Serve, the packaged MiniLM, vLLM, the shared
  data; fixtures in ``tests/fixtures/integration.py``.

Every test is classified at collection: ``integration`` when it uses (directly or through other fixtures)
a fixture named in ``INTEGRATION_FIXTURES`` or is marked ``integration`` (``pytestmark`` or a decorator:
for tests that start Ray, a server or MiniLM themselves), ``unit`` otherwise. A test marked ``unit`` that
needs an integration fixture, or one that ends with both markers, fails the collection; a unit test that
leaves Ray running fails.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

import pytest

# Ray stays on 127.0.0.1; nothing reaches a model hub or a telemetry endpoint.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.fixtures.unit", "tests.fixtures.integration"]

TIERS = ("unit", "integration")
TINY_PARAMETERS = 2_000_000
"""The most parameters a model loaded by a unit test may have (tiny_bert: 1.0M)."""
UNIT_SECONDS = 10.0
"""A unit test (setup and call) slower than this is listed at the end of the run: it belongs in
integration, or `make test-unit` stops fitting in two minutes."""


def free_port(low: int = 20000, high: int = 60000) -> int:
    """A free TCP port on 127.0.0.1 outside Ray's default worker-port range (10002-19999)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if low <= port < high:
            return port


@contextlib.contextmanager
def environ(values: dict[str, str]):
    """``os.environ`` with ``values`` set, restored afterwards (for fixtures wider than a test)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def _no_ambient_tracking(monkeypatch):
    """A shell's MLFLOW_TRACKING_URI must not make tests log runs; tests that log pass their server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# ------------------------------------------------------------------------------------------------ tiers


def tier_marks(item: pytest.Item) -> set[str]:
    return {mark.name for mark in item.iter_markers() if mark.name in TIERS}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from tests.fixtures.integration import INTEGRATION_FIXTURES

    wrong = []
    for item in items:
        marked = tier_marks(item)
        uses = sorted(INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())))
        if "unit" in marked and uses:
            wrong.append(f"{item.nodeid}: marked unit but uses {', '.join(uses)}")
            continue
        if not marked:
            item.add_marker("integration" if uses else "unit")
        if len(tier_marks(item)) != 1:
            wrong.append(f"{item.nodeid}: marked {' and '.join(sorted(tier_marks(item)))}")
    if wrong:
        raise pytest.UsageError("each test is exactly one of unit, integration:\n  " + "\n  ".join(wrong))


_RAY_BEFORE = pytest.StashKey[bool]()
"""Whether Ray was running before a test's setup."""
_BIG_MODELS = pytest.StashKey[list]()
"""The models over ``TINY_PARAMETERS`` a unit test loaded."""
_running: list[pytest.Item] = []
"""The test being set up, run or torn down."""


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _watch_model_loads() -> None:
    """Once transformers is imported, wrap ``PreTrainedModel.from_pretrained`` so that a unit test that loads
    a model over ``TINY_PARAMETERS`` (the packaged MiniLM has 22.7M) is noted, and failed after its call."""
    modeling = sys.modules.get("transformers.modeling_utils")
    if modeling is None or getattr(modeling.PreTrainedModel.from_pretrained, "_workembed_tiers", False):
        return
    original = modeling.PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        model = original(cls, *args, **kwargs)
        if _running and _running[0].get_closest_marker("unit"):
            loaded = model[0] if isinstance(model, tuple) else model
            size = sum(parameter.numel() for parameter in loaded.parameters())
            if size > TINY_PARAMETERS:
                source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
                noted = _running[0].stash.setdefault(_BIG_MODELS, [])
                noted.append(f"{source} ({size / 1e6:.1f}M parameters)")
        return model

    from_pretrained._workembed_tiers = True
    modeling.PreTrainedModel.from_pretrained = classmethod(from_pretrained)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _running[:] = [item]
    item.stash[_RAY_BEFORE] = _ray_running()
    _watch_model_loads()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    if item.get_closest_marker("unit"):
        if _ray_running() and not item.stash.get(_RAY_BEFORE, True):
            pytest.fail("a unit test started Ray: mark it integration (or use ray_session)", pytrace=False)
        if item.stash.get(_BIG_MODELS, []):
            loaded = ", ".join(item.stash[_BIG_MODELS])
            pytest.fail(f"a unit test loaded {loaded}: mark it integration (or use tiny_bert)", pytrace=False)
    return result


def pytest_runtest_teardown(item: pytest.Item) -> None:
    _watch_model_loads()  # transformers may have been imported by the test itself


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish() -> None:
    _running.clear()


_unit_seconds: dict[str, float] = {}
"""Setup and call time of each unit test of this run."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when in ("setup", "call") and "unit" in report.keywords:
        _unit_seconds[report.nodeid] = _unit_seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    slow = {node: seconds for node, seconds in _unit_seconds.items() if seconds > UNIT_SECONDS}
    if slow:
        terminalreporter.section(f"unit tests slower than {UNIT_SECONDS:.0f} s (integration material?)")
        for node, seconds in sorted(slow.items(), key=lambda pair: -pair[1]):
            terminalreporter.write_line(f"{seconds:6.1f} s  {node}")
