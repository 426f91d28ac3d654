"""Authentication and authorization of every RPC over gRPC: no or bad credentials are UNAUTHENTICATED
(IOTDA.000002), another project's path or a missing action is PERMISSION_DENIED (IOTDA.000003, naming
the action), a Deny wins over an Allow, the g:EnterpriseProjectId condition is honoured, and the
`x-auth-token` metadata works like `authorization: Bearer`.
"""

from __future__ import annotations

import secrets

import grpc
import pytest

from conftest import User, make_user, refused, store_snapshot
from iotda.export.v1 import batch_task_pb2 as bpb
from iotda.export.v1 import export_task_pb2 as epb
from iotda_export_server.domain import auth
from iotda_export_server.domain.model import Statement

Code = grpc.StatusCode

# Operation -> (stub, request class); the action each needs is auth.ACTIONS[operation].
RPCS = {
    "CreateExportTask": ("exports", epb.CreateExportTaskRequest),
    "ListExportTasks": ("exports", epb.ListExportTasksRequest),
    "ShowExportTask": ("exports", epb.ShowExportTaskRequest),
    "DeleteExportTask": ("exports", epb.DeleteExportTaskRequest),
    "GetExportTask": ("exports", epb.GetExportTaskRequest),
    "WatchProgress": ("exports", epb.WatchProgressRequest),
    "CancelExportTask": ("exports", epb.CancelExportTaskRequest),
    "CreateBatchTask": ("batches", bpb.CreateBatchTaskRequest),
    "ShowBatchTask": ("batches", bpb.ShowBatchTaskRequest),
    "ListBatchTasks": ("batches", bpb.ListBatchTasksRequest),
    "DeleteBatchTask": ("batches", bpb.DeleteBatchTaskRequest),
    "RecordSubtaskResults": ("batches", bpb.RecordSubtaskResultsRequest),
}
EXPECTED_ACTIONS = {
    "CreateExportTask": "iotda:exporttasks:create", "ListExportTasks": "iotda:exporttasks:queryList",
    "ShowExportTask": "iotda:exporttasks:query", "GetExportTask": "iotda:exporttasks:query",
    "WatchProgress": "iotda:exporttasks:query", "DeleteExportTask": "iotda:exporttasks:delete",
    "CancelExportTask": "iotda:exporttasks:cancel", "CreateBatchTask": "iotda:batchtasks:create",
    "ShowBatchTask": "iotda:batchtasks:query", "ListBatchTasks": "iotda:batchtasks:queryList",
    "DeleteBatchTask": "iotda:batchtasks:delete", "RecordSubtaskResults": "iotda:batchtasks:recordResults",
}


def test_every_rpc_has_the_documented_action():
    assert auth.ACTIONS == EXPECTED_ACTIONS and set(RPCS) == set(auth.ACTIONS)


def invoke(user: User, operation: str, metadata, project_id: str | None = None, **fields):
    service, request_class = RPCS[operation]
    stub = user.exports if service == "exports" else user.batches
    request = request_class(project_id=user.project_id if project_id is None else project_id, **fields)
    return lambda: getattr(stub, operation)(request, metadata=metadata)


def add_policy_principal(server, channel, statements: list[Statement], enterprise_project_id: str = "0") -> User:
    principal, token = auth.new_principal(f"policy-{secrets.token_hex(4)}", secrets.token_hex(16), statements,
                                          enterprise_project_id)
    with server.store.transaction() as tx:
        tx.insert_principal(principal, auth.token_hash(token))
    return User(creds=auth.credentials_document(principal, token), channel=channel)


# -- authentication --------------------------------------------------------------------------------

BAD_CREDENTIALS = {
    "none": (),
    "empty bearer": (("authorization", "Bearer "),),
    "unknown token": (("authorization", "Bearer " + secrets.token_urlsafe(32)),),
    "basic scheme": (("authorization", "Basic dXNlcjpwYXNz"),),
    "unknown x-auth-token": (("x-auth-token", secrets.token_urlsafe(32)),),
    "token without scheme": None,  # filled per user below: the right token, but not as "Bearer <token>"
}


@pytest.mark.parametrize("operation", list(RPCS))
def test_no_or_bad_credentials_are_unauthenticated(server, user, operation):
    before = store_snapshot(server, user.project_id)
    for name, metadata in BAD_CREDENTIALS.items():
        if metadata is None:
            metadata = (("authorization", user.creds["token"]),)
        # With an invalid project_id too: authentication comes first, so the answer is still UNAUTHENTICATED.
        for project_id in (None, "bad project"):
            f = refused(invoke(user, operation, metadata, project_id=project_id), Code.UNAUTHENTICATED)
            assert f.error_code == "IOTDA.000002", (name, f.message)
            assert f.error_info.reason == "UNAUTHENTICATED"
    assert store_snapshot(server, user.project_id) == before


def test_a_removed_principal_token_stops_working(server, channel):
    user = make_user(server, channel)
    assert user.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=user.project_id),
                                        metadata=user.metadata).page.count == 0
    assert auth.remove_principal(server.store, server.server.files, user.creds["user"])
    assert refused(invoke(user, "ListExportTasks", user.metadata), Code.UNAUTHENTICATED).error_code == "IOTDA.000002"


def test_x_auth_token_works_like_bearer(user, seed):
    for metadata in ((("x-auth-token", user.creds["token"]),), (("authorization", "bearer " + user.creds["token"]),),
                     (("authorization", "Bearer " + user.creds["token"]),)):
        created = user.exports.CreateExportTask(epb.CreateExportTaskRequest(
            project_id=user.project_id, resource_type="BatchTask",
            resource_condition=epb.ResourceCondition(task_id=seed(user, 2))), metadata=metadata).export_task
        got = user.exports.GetExportTask(epb.GetExportTaskRequest(
            project_id=user.project_id, export_task_id=created.export_task_id), metadata=metadata).export_task
        assert got.export_task_id == created.export_task_id
    assert user.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=user.project_id),
                                        metadata=(("x-auth-token", user.creds["token"]),)).page.count == 3


# -- authorization ---------------------------------------------------------------------------------

@pytest.mark.parametrize("operation", list(RPCS))
def test_a_token_of_project_a_on_project_b_is_permission_denied(server, channel, operation):
    a = make_user(server, channel)
    b = make_user(server, channel)
    before = store_snapshot(server, b.project_id)
    f = refused(invoke(a, operation, a.metadata, project_id=b.project_id), Code.PERMISSION_DENIED)
    assert f.error_code == "IOTDA.000003" and f.error_info.reason == "PERMISSION_DENIED"
    assert b.project_id in f.message
    assert store_snapshot(server, b.project_id) == before


def test_a_principal_lacking_an_action_is_refused_naming_it(server, channel):
    limited = make_user(server, channel, actions=["iotda:exporttasks:queryList"])
    assert limited.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=limited.project_id),
                                           metadata=limited.metadata).page.count == 0
    before = store_snapshot(server, limited.project_id)
    for operation in RPCS:
        if operation == "ListExportTasks":
            continue
        f = refused(invoke(limited, operation, limited.metadata), Code.PERMISSION_DENIED)
        action = EXPECTED_ACTIONS[operation]
        assert f.error_code == "IOTDA.000003", operation
        assert f.error_info.metadata["action"] == action and action in f.message, (operation, f.message)
    assert store_snapshot(server, limited.project_id) == before


def test_wildcard_actions_cover_only_their_service(server, channel):
    exports_only = make_user(server, channel, actions=["iotda:exporttasks:*"])
    assert exports_only.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=exports_only.project_id),
                                                metadata=exports_only.metadata).page.count == 0
    for operation in ("CreateBatchTask", "ShowBatchTask", "ListBatchTasks", "DeleteBatchTask",
                      "RecordSubtaskResults"):
        f = refused(invoke(exports_only, operation, exports_only.metadata), Code.PERMISSION_DENIED)
        assert f.error_info.metadata["action"] == EXPECTED_ACTIONS[operation]


def test_deny_statements_win(server, channel):
    user = add_policy_principal(server, channel, [
        Statement("Allow", ("iotda:*:*",)),
        Statement("Deny", ("iotda:exporttasks:delete", "iotda:batchtasks:*")),
        Statement("Allow", ("iotda:exporttasks:delete",)),  # an Allow after the Deny changes nothing
        Statement("Deny", ("iotda:exporttasks:queryList",), ("ep-other",)),  # a Deny for another enterprise project
    ])
    # queryList: allowed (the only Deny of it is conditioned on another enterprise project).
    assert user.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=user.project_id),
                                        metadata=user.metadata).page.count == 0
    f = refused(invoke(user, "DeleteExportTask", user.metadata, export_task_id="a" * 24), Code.PERMISSION_DENIED)
    assert f.error_info.metadata["action"] == "iotda:exporttasks:delete"
    f = refused(invoke(user, "CreateBatchTask", user.metadata), Code.PERMISSION_DENIED)
    assert f.error_info.metadata["action"] == "iotda:batchtasks:create"
    # Allowed actions still reach the domain (here: NOT_FOUND, not PERMISSION_DENIED).
    refused(invoke(user, "GetExportTask", user.metadata, export_task_id="a" * 24), Code.NOT_FOUND)

    # A Deny in the principal's own enterprise project applies.
    scoped = add_policy_principal(server, channel, [
        Statement("Allow", ("iotda:exporttasks:*",)),
        Statement("Deny", ("iotda:exporttasks:queryList",), ("ep1",)),
    ], enterprise_project_id="ep1")
    assert refused(invoke(scoped, "ListExportTasks", scoped.metadata),
                   Code.PERMISSION_DENIED).error_info.metadata["action"] == "iotda:exporttasks:queryList"


def test_enterprise_project_condition(server, channel):
    outside = make_user(server, channel, allowed_enterprise_projects=["ep1"], enterprise_project_id="ep2")
    for operation in ("ListExportTasks", "CreateExportTask", "CreateBatchTask"):
        f = refused(invoke(outside, operation, outside.metadata), Code.PERMISSION_DENIED)
        assert f.error_code == "IOTDA.000003" and f.error_info.metadata["action"] == EXPECTED_ACTIONS[operation]
    inside = make_user(server, channel, allowed_enterprise_projects=["ep1"], enterprise_project_id="ep1")
    assert inside.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=inside.project_id),
                                          metadata=inside.metadata).page.count == 0
    created = inside.batches.CreateBatchTask(bpb.CreateBatchTaskRequest(
        project_id=inside.project_id, task_name="ep_ok", task_type="createCommands", targets=["d1"]),
        metadata=inside.metadata).batchtask
    assert created.status == "Processing"
