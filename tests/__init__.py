"""Backline's tests."""

import pytest

# The harness's own asserts (an agent that did not enroll, a relay that did not start)
# say what was compared, as the tests' asserts do: without this a failure under load
# read only "AssertionError". (Here, before tests.conftest imports them.)
pytest.register_assert_rewrite("tests.harness", "tests.browser.helpers",
                               "tests.browser.cobrowse_support")
