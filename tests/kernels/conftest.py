"""Collection rules of the kernel tests."""
import os

from .cases import selected_for_testing


def pytest_collection_modifyitems(config, items):
    """Under ``LC4_TEST_BACKENDS`` a case parametrized with another backend (the reference's too)
    would repeat what the process without it runs: it is deselected."""
    if not os.environ.get("LC4_TEST_BACKENDS", "").strip():
        return
    kept, left_out = [], []
    for item in items:
        backend = getattr(item, "callspec", None) and item.callspec.params.get("backend")
        (left_out if isinstance(backend, str) and not selected_for_testing(backend) else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
