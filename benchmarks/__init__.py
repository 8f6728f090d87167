"""pytest-benchmark suites (a package so the suites can import the helpers in conftest)."""
