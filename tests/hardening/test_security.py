"""TLS, mutual TLS, bearer tokens (data and admin) and the per-client session cap."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rnnserve.client import (
    AsyncClient,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from rnnserve.server.rpc.auth import TokenSet, bearer_token
from rnnserve.v1 import admin_pb2, admin_pb2_grpc, models_pb2, models_pb2_grpc

from .conftest import bearer

DATA_TOKEN = "data-token-0123456789"
OTHER_TOKEN = "second-token-abcdef"
ADMIN_TOKEN = "admin-token-9876543210"
Code = grpc.StatusCode


async def _code(awaitable) -> grpc.StatusCode:
    try:
        await awaitable
    except grpc.aio.AioRpcError as err:
        return err.code()
    return Code.OK


# ------------------------------------------------------------------------------------- TLS
async def test_tls_serves_and_plaintext_is_refused(make_server, repo, pki):
    server = await make_server(model_repository=repo, tls_cert_file=pki.server_cert,
                               tls_key_file=pki.server_key)
    async with AsyncClient(server.target, credentials=pki.channel_credentials(), retries=0) as c:
        assert (await c.generate("the time", max_tokens=5)).text
    async with AsyncClient(server.target, timeout=2, retries=0) as plain:
        with pytest.raises(UnavailableError):
            await plain.health()


async def test_mutual_tls_refuses_a_client_without_a_certificate(make_server, repo, pki):
    server = await make_server(model_repository=repo, tls_cert_file=pki.server_cert,
                               tls_key_file=pki.server_key, tls_client_ca_file=pki.ca)
    async with AsyncClient(server.target, credentials=pki.channel_credentials(), timeout=2,
                           retries=0) as anonymous:
        with pytest.raises(UnavailableError):
            await anonymous.health()
    creds = pki.channel_credentials(with_client_cert=True)
    async with AsyncClient(server.target, credentials=creds, retries=0) as known:
        assert await known.health() == "SERVING"


def test_half_a_tls_configuration_is_refused(pki):
    from pydantic import ValidationError
    from rnnserve.server.settings import ServerSettings

    with pytest.raises(ValidationError, match="go together"):
        ServerSettings(tls_cert_file=pki.server_cert)
    with pytest.raises(ValidationError, match="needs tls_cert_file"):
        ServerSettings(tls_client_ca_file=pki.ca)


async def test_unreadable_tls_or_token_files_stop_the_start(make_server, repo, tmp_path, pki):
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match="tls_cert_file .*missing.pem"):
        await make_server(model_repository=repo, tls_cert_file=missing,
                          tls_key_file=pki.server_key)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(ValueError, match="not a PEM file"):
        await make_server(model_repository=repo, tls_cert_file=pki.server_cert,
                          tls_key_file=not_pem)
    with pytest.raises(OSError):
        await make_server(model_repository=repo, auth_tokens_file=tmp_path / "no-tokens")


# ---------------------------------------------------------------------------------- tokens
def test_token_parsing_and_constant_time_lookup():
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("authorization", "bearer  abc ")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([("authorization", "Bearer ")]) is None
    assert bearer_token(None) is None
    tokens = TokenSet(["one", "two", "", "one"])
    assert len(tokens) == 2
    assert tokens.identify("two") is not None and tokens.identify("two") != tokens.identify("one")
    assert tokens.identify("tw") is None and tokens.identify("two2") is None
    assert "two" not in tokens.identify("two")  # an identity never shows the token


async def test_tokens_from_file_and_environment(make_server, repo, tmp_path, monkeypatch):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# data tokens\n{DATA_TOKEN}\n\n")
    monkeypatch.setenv("RNNSERVE_AUTH_TOKENS", f" {OTHER_TOKEN} ,")
    server = await make_server(model_repository=repo, auth_tokens_file=token_file)
    async with grpc.aio.insecure_channel(server.target) as channel:
        models = models_pb2_grpc.ModelServiceStub(channel)
        req = models_pb2.ListModelsRequest()
        assert await _code(models.ListModels(req)) == Code.UNAUTHENTICATED
        assert await _code(models.ListModels(req, metadata=bearer("nope"))) == Code.UNAUTHENTICATED
        assert await _code(models.ListModels(
            req, metadata=(("authorization", DATA_TOKEN),))) == Code.UNAUTHENTICATED
        assert await _code(models.ListModels(req, metadata=bearer(DATA_TOKEN))) == Code.OK
        assert await _code(models.ListModels(req, metadata=bearer(OTHER_TOKEN))) == Code.OK
        # health stays open (probes carry no token)
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # reflection needs a token as well (grpcurl -H passes it)
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def list_services(metadata=None):
            async for reply in reflect.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                    metadata=metadata):
                return reply

        assert await _code(list_services()) == Code.UNAUTHENTICATED
        assert (await list_services(bearer(DATA_TOKEN))).list_services_response.service


async def test_every_service_needs_the_token_and_the_client_passes_it(make_server, repo):
    server = await make_server(model_repository=repo, auth_tokens=DATA_TOKEN)
    async with AsyncClient(server.target, retries=0) as anonymous:
        for call in (anonymous.generate("the", max_tokens=3),
                     anonymous.classify(["a good film"]),
                     anonymous.end_session("x"),
                     anonymous.get_model("timemachine")):
            with pytest.raises(UnauthenticatedError):
                await call
        assert await anonymous.health() == "SERVING"
    async with AsyncClient(server.target, metadata={"authorization": f"Bearer {DATA_TOKEN}"},
                           retries=0) as client:
        assert (await client.generate("the", max_tokens=3)).text
        assert len(await client.classify(["a good film"])) == 1
        chunks = [c async for c in client.stream("the time", max_tokens=4)]
        assert "".join(c.text for c in chunks)


async def test_sessions_per_client_are_capped(make_server, repo):
    server = await make_server(model_repository=repo, auth_tokens=f"{DATA_TOKEN},{OTHER_TOKEN}",
                               max_sessions_per_client=2)
    one = AsyncClient(server.target, metadata=bearer(DATA_TOKEN), retries=0)
    two = AsyncClient(server.target, metadata=bearer(OTHER_TOKEN), retries=0)
    async with one, two:
        first = [await one.generate("the", max_tokens=2, keep_session=True) for _ in range(2)]
        with pytest.raises(ResourceExhaustedError, match="this client holds its maximum of 2"):
            await one.generate("the", max_tokens=2, keep_session=True)
        # another client is not affected; ending a session frees a place
        assert (await two.generate("the", max_tokens=2, keep_session=True)).session_id
        await one.end_session(first[0].session_id)
        assert (await one.generate("the", max_tokens=2, keep_session=True)).session_id


# ----------------------------------------------------------------------------------- admin
async def test_admin_is_off_by_default(make_server, repo):
    server = await make_server(model_repository=repo)
    async with grpc.aio.insecure_channel(server.target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.ReloadModelRequest(name="timemachine")
        assert await _code(admin.ReloadModel(request)) == Code.UNIMPLEMENTED
        assert await _code(admin.ReloadModel(request, metadata=bearer(ADMIN_TOKEN))) \
            == Code.UNIMPLEMENTED


def test_admin_needs_a_token_to_be_enabled():
    from pydantic import ValidationError
    from rnnserve.server.settings import ServerSettings

    with pytest.raises(ValidationError, match="admin_token"):
        ServerSettings(admin_enabled=True)


async def test_admin_needs_the_admin_token(make_server, repo, tmp_path):
    admin_file = tmp_path / "admin-token"
    admin_file.write_text(ADMIN_TOKEN + "\n")
    server = await make_server(model_repository=repo, auth_tokens=DATA_TOKEN,
                               admin_enabled=True, admin_token_file=admin_file)
    async with grpc.aio.insecure_channel(server.target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.ReloadModelRequest(name="timemachine")
        assert await _code(admin.ReloadModel(request)) == Code.UNAUTHENTICATED
        assert await _code(admin.ReloadModel(request, metadata=bearer("x"))) == Code.UNAUTHENTICATED
        try:
            await admin.ReloadModel(request, metadata=bearer(DATA_TOKEN))
        except grpc.aio.AioRpcError as err:
            assert err.code() == Code.PERMISSION_DENIED and "admin token" in err.details()
        else:
            pytest.fail("a data token was accepted for an admin call")
        reply = await admin.ReloadModel(request, metadata=bearer(ADMIN_TOKEN))
        assert reply.model.name == "timemachine" and reply.previous_version == 1
        # grpcurl resolves admin methods through reflection, so the admin token opens it too
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request_list = reflection_pb2.ServerReflectionRequest(list_services="")
        async for listed in reflect.ServerReflectionInfo(iter([request_list]),
                                                         metadata=bearer(ADMIN_TOKEN)):
            names = {s.name for s in listed.list_services_response.service}
            assert "rnnserve.v1.AdminService" in names
            break
        # the admin token is not a data token
        models = models_pb2_grpc.ModelServiceStub(channel)
        assert await _code(models.ListModels(models_pb2.ListModelsRequest(),
                                             metadata=bearer(ADMIN_TOKEN))) == \
            Code.PERMISSION_DENIED


async def test_admin_unload_and_load(make_server, repo):
    server = await make_server(model_repository=repo, admin_enabled=True, admin_token=ADMIN_TOKEN)
    async with grpc.aio.insecure_channel(server.target) as channel, \
            AsyncClient(server.target, retries=0) as client:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        meta = bearer(ADMIN_TOKEN)
        opened = await client.generate("the time", max_tokens=3, keep_session=True)
        gone = await admin.UnloadModel(admin_pb2.UnloadModelRequest(name="timemachine"),
                                       metadata=meta)
        assert (gone.version, gone.sessions_dropped) == (1, 1)
        names = [m.name for m in await client.list_models()]
        assert names == ["sentiment"]
        assert await client.health("rnnserve.v1.GenerationService") == "NOT_SERVING"
        loaded = await admin.LoadModel(admin_pb2.LoadModelRequest(name="timemachine", version=1),
                                       metadata=meta)
        assert loaded.model.version == 1 and loaded.previous_version == 0
        assert (await client.generate("the time", max_tokens=3)).text
        assert await client.health("rnnserve.v1.GenerationService") == "SERVING"
        with pytest.raises(Exception, match="no longer loaded"):
            await client.generate(" and", max_tokens=3, session_id=opened.session_id)
        for bad, code in (("", Code.INVALID_ARGUMENT), ("../etc", Code.INVALID_ARGUMENT),
                          ("nosuchmodel", Code.NOT_FOUND)):
            assert await _code(admin.LoadModel(admin_pb2.LoadModelRequest(name=bad),
                                               metadata=meta)) == code
        assert await _code(admin.LoadModel(admin_pb2.LoadModelRequest(name="timemachine",
                                                                      version=7),
                                           metadata=meta)) == Code.FAILED_PRECONDITION


async def test_admin_token_is_refused_where_data_tokens_are_off(make_server, repo):
    """With admin on and no data tokens, data calls stay open and admin calls need the token."""
    server = await make_server(model_repository=repo, admin_enabled=True, admin_token=ADMIN_TOKEN)
    async with AsyncClient(server.target, retries=0) as client:
        assert (await client.generate("the", max_tokens=2)).text
    async with AsyncClient(server.target, metadata=bearer("wrong"), retries=0) as client:
        assert (await client.generate("the", max_tokens=2)).text  # tokens are not checked
    async with grpc.aio.insecure_channel(server.target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        assert await _code(admin.ReloadModel(admin_pb2.ReloadModelRequest(name="sentiment"))) \
            == Code.UNAUTHENTICATED
