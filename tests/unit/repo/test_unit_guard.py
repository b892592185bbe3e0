"""The guard in tests/unit/conftest.py is itself tested: a unit test cannot reach the embedded weights."""

import pytest

import lensteer


def test_a_unit_test_that_loads_the_embedded_model_fails_with_a_pointer():
    with pytest.raises(pytest.fail.Exception, match="move this test to tests/integration"):
        lensteer.load_model()
