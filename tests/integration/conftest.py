"""Integration tests load the embedded SmolLM2-135M-Instruct (or its tokenizer): every one is marked `embedded`."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.embedded)
