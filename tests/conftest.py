"""Shared fixtures: tiny offline models (built in well under a second) and the embedded model.

Every test that uses a model fixture is checked afterwards for leaked hooks.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from lensteer.core.plain import _VIEWS, foreign_hooks

torch.set_num_threads(min(2, torch.get_num_threads()))

MODEL_FIXTURES = ("tiny_bridge", "tiny_llama_bridge", "embedded_model")


# The files that take longest, with their seconds on one torch thread of a quiet 2-core machine
# (LENSTEER_SMOKE=1; make test's slowest-durations list and cell timings, 2026-12-07): ``make test`` hands
# whole files to two pytest-xdist workers in collection order, so these go first, longest first, and the
# many short unit files fill whatever they leave. Re-rank a file here when its time changes a lot.
LONG_FILES = {
    "tests/integration/test_study_steerings.py": 185,
    "notebooks/03_steer_and_evaluate.ipynb": 175,
    "tests/unit/study/test_distributed.py": 130,
    "notebooks/00_quickstart.ipynb": 75,
    "tests/unit/study/test_study.py": 73,
    "tests/integration/test_embedded.py": 72,
    "tests/integration/test_embedded_locate.py": 56,
    "tests/integration/test_embedded_inducers.py": 31,
    "notebooks/01_locate.ipynb": 27,
}


def pytest_collection_modifyitems(config, items):
    """Long files first: those in ``LONG_FILES``, longest first; then the other notebooks, the embedded-model
    integration tests, the files with Ray tests (a local Ray cluster each), then the rest as collected."""
    ray_files = {item.path for item in items if item.get_closest_marker("ray")}

    def rank(item):
        path = str(item.path).replace("\\", "/")
        firsts = (path.endswith(".ipynb"), "/tests/integration/" in path, item.path in ray_files)
        seconds = LONG_FILES.get(os.path.relpath(item.path, config.rootpath).replace("\\", "/"), 0)
        return -seconds, next((k for k, first in enumerate(firsts) if first), len(firsts))

    items.sort(key=rank)  # stable: collection order within a rank


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from builders import make_char_tokenizer

    return make_char_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="module")
def tiny_bridge():
    from builders import make_tiny_bridge

    return make_tiny_bridge()


@pytest.fixture(scope="module")
def tiny_llama_bridge(tiny_tokenizer):
    from builders import make_tiny_llama_bridge

    return make_tiny_llama_bridge(tiny_tokenizer)


@pytest.fixture(scope="session")
def embedded_model():
    import lensteer

    return lensteer.load_model()


@pytest.fixture(autouse=True)
def _no_leaked_hooks(request):
    yield
    for name in MODEL_FIXTURES:
        if name in request.fixturenames:
            model = request.getfixturevalue(name)
            assert model.list_hooks() == {}, f"test leaked hooks on {name}: {model.list_hooks()}"
            view = _VIEWS.get(model)  # the plain Hugging Face view generation decodes through
            assert view is None or foreign_hooks(view.module) == [], (
                f"test leaked hooks on {name}'s plain view"
            )
