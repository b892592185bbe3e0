"""Unit tests never touch the embedded model: they run on tiny random models in seconds.

A unit test that asks for the embedded model (the fixture, or ``load_model()`` / the GGUF file
behind it) fails at once with a message saying where such a test belongs: ``tests/integration``.
"""

import pytest

_WHERE = (
    "unit tests must not load the embedded model; move this test to tests/integration and mark it `embedded`"
)


@pytest.fixture(scope="session")
def embedded_model():
    pytest.fail(_WHERE)


@pytest.fixture(autouse=True)
def _no_embedded_weights(monkeypatch):
    from lensteer.core import models

    def refuse(*args, **kwargs):
        pytest.fail(_WHERE)

    monkeypatch.setattr(models, "embedded_gguf_path", refuse)


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("embedded") is not None and "tests/unit/" in str(item.path).replace(
            "\\", "/"
        ):
            raise pytest.UsageError(f"{item.nodeid} is marked embedded but lives in tests/unit; {_WHERE}")
