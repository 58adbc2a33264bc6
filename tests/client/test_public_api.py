"""The package's public surface: ``__all__`` is complete and everything in it imports."""

import types

import grpc
import pytest
import rnnserve.client as api
from rnnserve.client import _exceptions


def test_all_is_importable():
    for name in api.__all__:
        assert getattr(api, name) is not None, name


def test_all_is_complete():
    public = {
        name
        for name, value in vars(api).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(api.__all__)


def test_all_is_sorted_without_duplicates():
    assert list(api.__all__) == sorted(set(api.__all__))


def test_every_exception_is_an_rnnserve_error():
    errors = [getattr(api, n) for n in api.__all__ if n.endswith("Error")]
    assert len(errors) >= 11
    for cls in errors:
        assert issubclass(cls, api.RnnserveError)
        assert isinstance(cls.code, grpc.StatusCode)


def test_exception_tree_is_drawn_in_the_docstring():
    errors = [n for n in api.__all__ if n.endswith("Error")]
    for name in errors:
        assert name in _exceptions.__doc__, name


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_every_status_code_maps_to_a_typed_error(code):
    class FakeRpcError(grpc.RpcError):
        def code(self):
            return code

        def details(self):
            return "why"

    error = _exceptions.from_rpc_error(FakeRpcError())
    assert isinstance(error, api.RnnserveError)
    assert error.code is code
    assert error.details == "why"
    assert str(error) == f"{code.name}: why"
    if code in _exceptions._BY_CODE:
        assert type(error) is _exceptions._BY_CODE[code]


def test_rpc_error_without_status_is_unknown():
    error = _exceptions.from_rpc_error(grpc.RpcError())
    assert type(error) is api.RnnserveError
    assert error.code is grpc.StatusCode.UNKNOWN


def test_errors_can_be_raised_directly_and_pickled():
    import pickle

    error = api.NotFoundError("session_id: gone")
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert str(error) == "NOT_FOUND: session_id: gone"
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is api.NotFoundError and again.details == "session_id: gone"


def test_the_client_is_thin():
    """Importing the client (and its CLI) pulls in neither torch nor the server."""
    import subprocess
    import sys

    code = (
        "import sys, rnnserve.client, rnnserve.client.cli; "
        "heavy = [m for m in ('torch', 'numpy', 'rnnserve.server', 'rnnserve.models') "
        "if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
