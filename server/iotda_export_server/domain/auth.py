"""Principals, credentials and IAM-style authorization.

A principal is a user of one project, with a bearer token (gRPC), an AK/SK pair (the official SDK's
signatures, through the HTTP gateway) and policy statements: Allow/Deny of actions such as
`iotda:exporttasks:create`, optionally conditioned on `g:EnterpriseProjectId`. Every operation names
its action in ACTIONS; nothing is allowed that no statement allows, and a Deny wins.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
import string
import time

from .errors import PermissionDenied, Unauthenticated, invalid
from .model import Caller, Principal, Statement

# Operation -> IAM action. The platform's where it has one; ours under the same service prefix.
ACTIONS = {
    "CreateExportTask": "iotda:exporttasks:create",
    "ListExportTasks": "iotda:exporttasks:queryList",
    "ShowExportTask": "iotda:exporttasks:query",
    "GetExportTask": "iotda:exporttasks:query",
    "WatchProgress": "iotda:exporttasks:query",
    "DeleteExportTask": "iotda:exporttasks:delete",
    "CancelExportTask": "iotda:exporttasks:cancel",
    "CreateBatchTask": "iotda:batchtasks:create",
    "ShowBatchTask": "iotda:batchtasks:query",
    "ListBatchTasks": "iotda:batchtasks:queryList",
    "DeleteBatchTask": "iotda:batchtasks:delete",
    "RecordSubtaskResults": "iotda:batchtasks:recordResults",
}
ALL_ACTIONS = ("iotda:exporttasks:*", "iotda:batchtasks:*")
DEFAULT_ENTERPRISE_PROJECT = "0"  # the platform's default enterprise project
USER = re.compile(r"^[A-Za-z0-9_.@-]{1,64}\Z")
CLIENT_CERT_SAN = re.compile(r"^[\x21-\x7e]{1,255}\Z")
ACTION = re.compile(r"^(\*|iotda:[A-Za-z*]+:[A-Za-z*]+)\Z")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def action_allowed(principal: Principal, action: str, enterprise_project_id: str) -> bool:
    action = action.lower()

    def matches(s: Statement) -> bool:
        if not any(fnmatch.fnmatchcase(action, a.lower()) for a in s.actions):
            return False
        return s.enterprise_projects is None or enterprise_project_id in s.enterprise_projects

    relevant = [s for s in principal.statements if matches(s)]
    if any(s.effect == "Deny" for s in relevant):
        return False
    return any(s.effect == "Allow" for s in relevant)


def authorize(caller: Caller, operation: str) -> None:
    """Raises PermissionDenied unless the caller may run `operation` in the request's project."""
    action = ACTIONS[operation]
    p = caller.principal
    if caller.project_id != p.project_id:
        raise PermissionDenied(action, f"The credentials are not valid for project {caller.project_id!r}.")
    if not action_allowed(p, action, p.enterprise_project_id):
        raise PermissionDenied(action)


def statements_for(actions: list[str], enterprise_projects: list[str] | None = None) -> list[Statement]:
    for a in actions:
        if not ACTION.match(a):
            raise invalid("actions", f"{a!r} is not an action like iotda:exporttasks:create")
    return [Statement("Allow", tuple(actions), None if enterprise_projects is None else tuple(enterprise_projects))]


def _random(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def new_principal_id() -> str:
    """24 random hex: the principal's immutable identity (owner of its records)."""
    return secrets.token_hex(12)


def new_principal(user: str, project_id: str, statements: list[Statement],
                  enterprise_project_id: str = DEFAULT_ENTERPRISE_PROJECT, client_cert_subject: str | None = None,
                  client_cert_san: str | None = None) -> tuple[Principal, str]:
    """A principal with fresh credentials; returns it and its bearer token (stored only hashed)."""
    if not USER.match(user):
        raise invalid("user", "must be 1-64 of [A-Za-z0-9_.@-]")
    from .validation import project_id as check_project
    check_project(project_id)
    # Hex: a token that started with "-" (as urlsafe base64 can) would read as an option on command lines.
    token = secrets.token_hex(32)
    principal = Principal(
        user=user, principal_id=new_principal_id(), project_id=project_id, enterprise_project_id=enterprise_project_id,
        ak=_random(string.ascii_uppercase + string.digits, 20),
        sk=_random(string.ascii_letters + string.digits, 40),
        statements=statements, created_at=int(time.time() * 1000),
        client_cert_subject=client_cert_subject, client_cert_san=_client_cert_san(client_cert_san))
    return principal, token


def _client_cert_san(san: str | None) -> str | None:
    if san is None:
        return None
    if not CLIENT_CERT_SAN.match(san):
        raise invalid("client_cert_san", "must be a DNS name, IP address, URI or e-mail address as the"
                                         " certificate names it (1-255 printable characters, no spaces)")
    return san


def credentials_document(principal: Principal, token: str) -> dict:
    """What `principal add --json` prints and credentials.json holds."""
    return {"user": principal.user, "principal_id": principal.principal_id, "project_id": principal.project_id,
            "token": token,
            "ak": principal.ak, "sk": principal.sk,
            "enterprise_project_id": principal.enterprise_project_id}


class Authenticator:
    """Credentials -> principal, through the store: a bearer token, or the principal a trusted front
    end (the HTTP gateway, which verified an AK/SK signature itself) vouches for, by its immutable
    id, with its key."""

    def __init__(self, store, front_end_key: str | None = None):
        self.store = store
        self.front_end_key = front_end_key

    def authenticate(self, token: str, vouched_principal_id: str = "", front_end_key: str = "",
                     client_cert: tuple[str, tuple[str, ...]] | None = None) -> Principal:
        """`client_cert`: (subject, SANs) of a client certificate the connection presented and the
        server's client CA verified. A token, when given, wins over it (an explicit credential);
        a certificate bound to no principal, without a token, is refused like a missing token."""
        if vouched_principal_id and self.front_end_key and hmac.compare_digest(front_end_key, self.front_end_key):
            # By id, not by name: a principal removed (and another added under its name) since the
            # signature was checked is not found, rather than found as the new one.
            principal = self.store.reader().principal_by("principal_id", vouched_principal_id)
            if principal is None:
                raise Unauthenticated()
            return principal
        if not token and client_cert is not None:
            principal = self.by_client_cert(*client_cert)
            if principal is not None:
                return principal
        return self.by_token(token)

    def by_client_cert(self, subject: str, sans: tuple[str, ...]) -> Principal | None:
        """The principal bound to this verified client certificate: by its subject, else by one of
        its SANs (in the certificate's order)."""
        reader = self.store.reader()
        principal = reader.principal_by("client_cert_subject", subject) if subject else None
        for san in sans:
            if principal is not None:
                break
            principal = reader.principal_by("client_cert_san", san)
        return principal

    def by_token(self, token: str) -> Principal:
        if not token:
            raise Unauthenticated()
        principal = self.store.reader().principal_by("token_sha256", token_hash(token))
        if principal is None:
            raise Unauthenticated("Request unauthorized: the token is not valid.")
        return principal

    def by_access_key(self, access_key: str) -> Principal | None:
        """The principal whose AK this is (its SK then verifies the request's signature), or None."""
        return self.store.reader().principal_by("ak", access_key)

def remove_principal(store, files, user: str) -> bool:
    """Removes the principal named `user`: its credentials stop working at once, and its export
    tasks, idempotency records and download mark go in the same transaction, locked on its id (the
    lock every per-user decision takes, so a create or download racing the removal either comes first
    and is deleted with the rest, or comes after and finds the principal gone). The tasks' result
    files are removed after the commit; a crash in between leaves files of tasks that no longer exist,
    which the server's start-up sweep removes. Returns False when there is no such principal."""
    while True:
        found = store.reader().principal_by("user", user)
        if found is None:
            return False
        with store.transaction(lock_key=found.principal_id) as tx:
            current = tx.principal_by("user", user)
            if current is not None and current.principal_id == found.principal_id:
                export_task_ids = tx.delete_principal(found.principal_id)
            else:  # removed, or removed and added again, between the look-up and the lock: look again
                export_task_ids = None
        if export_task_ids is not None:
            break
    for export_task_id in export_task_ids:
        files.remove(export_task_id)
    return True
