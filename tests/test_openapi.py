"""The OpenAPI document (scripts/gen_openapi.py -> docs/openapi.json, served at /openapi.json): fresh
from the protos, valid OpenAPI 3.1 (openapi-spec-validator), exactly the routes the gateway serves,
the parameters the gateway reads, and true to what the gateway answers: every status, media type,
header and body of real calls (success and refusal) is in it and validates against its schema.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import pathlib
import subprocess
import sys

import jsonschema
import pytest
from conftest import make_user
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from iotda_export_server.transport.grpc_server import SERVICE_DESCRIPTORS
from iotda_export_server.transport.transcode import routes_from

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "docs" / "openapi.json"
SERVED_COPY = ROOT / "server" / "iotda_export_server" / "web" / "openapi.json"
GENERATOR = ROOT / "scripts" / "gen_openapi.py"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def doc() -> dict:
    return json.loads(DOC_PATH.read_text(encoding="utf-8"))


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_openapi", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def gateway_routes():
    return routes_from([d.services_by_name[n] for d, n in SERVICE_DESCRIPTORS])


def template(route) -> str:
    names = iter(route.variables)
    return "/" + "/".join(seg if seg is not None else "{" + next(names) + "}" for seg in route.segments)


# -- generated, fresh, valid ----------------------------------------------------------------------

def test_the_document_is_generated_from_the_current_protos():
    r = subprocess.run([sys.executable, str(GENERATOR), "--check"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert DOC_PATH.read_bytes() == SERVED_COPY.read_bytes()


def test_check_mode_fails_with_a_diff_when_a_copy_is_stale(tmp_path, monkeypatch, capsys):
    gen = load_generator()
    fresh, stale = tmp_path / "fresh.json", tmp_path / "stale.json"
    fresh.write_text(DOC_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    stale.write_text(DOC_PATH.read_text(encoding="utf-8").replace('"operationId": "ListExportTasks"',
                                                                 '"operationId": "ListExports"'), encoding="utf-8")
    monkeypatch.setattr(gen, "OUTPUTS", (fresh, stale))
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert any(x.startswith("+") and '"operationId": "ListExportTasks"' in x for x in lines), err
    assert any(x.startswith("-") and '"operationId": "ListExports"' in x for x in lines), err
    assert "stale.json" in err and "fresh.json" not in err


def test_the_document_is_valid_openapi_3_1(doc):
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)
    errors = list(OpenAPIV31SpecValidator(doc).iter_errors())
    assert errors == []


def test_the_validator_refuses_a_broken_document(doc):
    """The validation above can fail: a path parameter without its declaration is refused."""
    broken = json.loads(json.dumps(doc))
    op = broken["paths"]["/v5/iot/{project_id}/export-tasks"]["get"]
    op["parameters"] = [p for p in op["parameters"] if p.get("name") != "project_id"]
    assert list(OpenAPIV31SpecValidator(broken).iter_errors())


# -- the routes and parameters the gateway really has ---------------------------------------------

def test_every_route_the_gateway_serves_is_documented_and_nothing_else(doc):
    served = {(r.http_method, template(r)): r.method.name for r in gateway_routes()}
    documented = {(m.upper(), path): op["operationId"] for path, item in doc["paths"].items()
                  for m, op in item.items() if m in METHODS}
    assert documented == served


def test_parameters_are_the_fields_the_gateway_reads(doc):
    for route in gateway_routes():
        op = doc["paths"][template(route)][route.http_method.lower()]
        params = [p for p in op["parameters"] if "$ref" not in p]
        assert {p["name"] for p in params if p["in"] == "path"} == set(route.variables)
        fields = route.request_class.DESCRIPTOR.fields
        if route.body == "*":
            expected_query = set()
        else:
            bound = set(route.variables) | {route.body}
            expected_query = {f.name for f in fields if f.name not in bound and f.message_type is None}
        assert {p["name"] for p in params if p["in"] == "query"} == expected_query, route.method.name
        headers = {p["$ref"] for p in op["parameters"] if "$ref" in p}
        assert headers == {"#/components/parameters/InstanceId", "#/components/parameters/XProjectId"}
        if route.body:
            body_ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            schema = doc["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
            assert schema["additionalProperties"] is False
            expected = {f.name for f in fields if f.name not in route.variables} if route.body == "*" else None
            if expected is not None:
                assert set(schema["properties"]) == expected, route.method.name
        else:
            assert "requestBody" not in op


def test_field_names_and_types_are_as_the_gateway_renders_them(doc):
    task = doc["components"]["schemas"]["ExportTask"]
    assert task["properties"]["export_count"] == {
        "type": "integer", "format": "int32", "description": task["properties"]["export_count"]["description"]}
    assert "end_time" not in task["required"] and "export_task_id" in task["required"]  # optional: absent until set
    assert task["properties"]["resource_condition"]["anyOf"][1] == {"type": "null"}
    assert all(name == name.lower() for schema in doc["components"]["schemas"].values()
               for name in schema.get("properties", {}))
    assert set(doc["components"]["securitySchemes"]) == {"AkSk", "AuthToken"}
    assert doc["components"]["securitySchemes"]["AuthToken"] == {
        "type": "apiKey", "in": "header", "name": "X-Auth-Token",
        "description": doc["components"]["securitySchemes"]["AuthToken"]["description"]}
    assert doc["security"] == [{"AkSk": []}, {"AuthToken": []}]
    assert set(doc["components"]["schemas"]["Error"]["required"]) == {
        "error_code", "error_msg", "code", "message", "details"}


# -- real answers against the document ------------------------------------------------------------

class Checker:
    """Calls the gateway with a token and checks each answer against the document."""

    def __init__(self, doc: dict, port: int, creds: dict):
        self.doc, self.port, self.creds = doc, port, creds
        self.seen: set[tuple[str, str, str]] = set()  # (method, path template, status)

    def schema_validator(self, schema: dict) -> jsonschema.Draft202012Validator:
        root = {**schema, "components": self.doc["components"]}
        return jsonschema.Draft202012Validator(root)

    def response_doc(self, method: str, tmpl: str, status: int) -> dict:
        responses = self.doc["paths"][tmpl][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {tmpl}: status {status} is not documented"
        resp = responses[str(status)]
        if "$ref" in resp:
            resp = self.doc["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
        return resp

    def call(self, method: str, tmpl: str, values: dict, query: str = "", body=None, token: bool = True,
             expect: int | None = None):
        path = tmpl.format(**values) + (f"?{query}" if query else "")
        headers = {"X-Auth-Token": self.creds["token"]} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        if expect is not None:
            assert r.status == expect, (method, path, r.status, raw[:300])
        resp = self.response_doc(method, tmpl, r.status)
        self.seen.add((method, tmpl, str(r.status)))
        for name in resp.get("headers", {}):
            if name in ("X-Request-Id",) or (name == "Retry-After" and r.status == 403 and b"018003" in raw):
                assert r.getheader(name), f"{method} {tmpl} {r.status}: no {name} header"
        content = resp.get("content")
        if not content:
            assert raw == b"", f"{method} {tmpl} {r.status}: a body where none is documented"
            return r, None
        media = r.getheader("Content-Type", "").split(";")[0]
        assert media in content, f"{method} {tmpl} {r.status}: {media} is not documented ({list(content)})"
        schema = content[media]["schema"]
        if media != "application/json":
            assert schema.get("contentMediaType") == media
            return r, raw
        validator = self.schema_validator(schema)
        docs = [json.loads(line) for line in raw.splitlines() if line.strip()] \
            if self.is_stream(method, tmpl, r.status) else [json.loads(raw)]
        for d in docs:
            errors = sorted(validator.iter_errors(d), key=str)
            assert not errors, f"{method} {tmpl} {r.status}: {errors[0].message} at {list(errors[0].path)}"
        return r, docs if len(docs) > 1 else docs[0]

    def is_stream(self, method: str, tmpl: str, status: int) -> bool:
        op = self.doc["paths"][tmpl][method.lower()]
        return status == 200 and "oneOf" in op["responses"]["200"].get("content", {}).get(
            "application/json", {}).get("schema", {})


def test_real_answers_of_every_operation_match_the_document(doc, server, channel, seed):
    user = make_user(server, channel)
    c = Checker(doc, server.http_port, user.creds)
    p = {"project_id": user.project_id}
    base = "/v5/iot/{project_id}"
    # Batch tasks: create, list, show, record results (which finishes it), later delete.
    _, batch = c.call("POST", base + "/batchtasks", p, body={
        "task_name": "openapi_check", "task_type": "createCommands", "targets": ["dev_1", "dev_2"],
        "document": {"service_id": "s", "command_name": "c", "paras": {"x": 1}}}, expect=201)
    b = {**p, "task_id": batch["task_id"]}
    c.call("GET", base + "/batchtasks", p, query="task_type=createCommands&limit=5", expect=200)
    c.call("GET", base + "/batchtasks/{task_id}", b, query="limit=1", expect=200)
    c.call("POST", base + "/batchtasks/{task_id}/results", b, body={"results": [
        {"target": "dev_1", "status": "Success", "output": "ok"},
        {"target": "dev_2", "status": "Fail", "error": {"error_code": "E1", "error_msg": "down"}}]}, expect=200)
    # Export tasks: create, get, watch to the end, list, download twice (the second refused), cancel
    # a finished task (no change), delete.
    task_id = seed(user, 300)
    _, created = c.call("POST", base + "/export-tasks", p, body={
        "resource_type": "BatchTask", "resource_condition": {"task_id": task_id}}, expect=201)
    e = {**p, "export_task_id": created["export_task_id"]}
    c.call("GET", base + "/export-tasks/{export_task_id}", e, expect=200)
    _, events = c.call("GET", base + "/export-tasks/{export_task_id}/progress", e, expect=200)
    events = events if isinstance(events, list) else [events]
    assert events[-1]["result"]["export_task"]["status"] == "Success"
    c.call("GET", base + "/export-tasks", p, query="limit=5&offset=0", expect=200)
    r, data = c.call("GET", base + "/export-tasks/{export_task_id}/file", e, expect=200)
    assert data[:2] == b"PK" and r.getheader("Repr-Digest") and r.getheader("Content-Disposition")
    r, refused = c.call("GET", base + "/export-tasks/{export_task_id}/file", e, expect=403)
    assert refused["error_code"] == "IOTDA.018003" and int(r.getheader("Retry-After")) >= 1
    c.call("POST", base + "/export-tasks/{export_task_id}/cancel", e, body={}, expect=200)
    c.call("POST", base + "/export-tasks/{export_task_id}/cancel", e, expect=200)  # the body may be left out
    c.call("DELETE", base + "/export-tasks/{export_task_id}", e, expect=204)
    c.call("DELETE", base + "/batchtasks/{task_id}", b, expect=204)
    # Refusals, each in the platform's body.
    c.call("GET", base + "/export-tasks", p, query="limit=0", expect=400)
    c.call("POST", base + "/export-tasks", p, body={"resource_type": "BatchTask", "bogus": 1}, expect=400)
    c.call("GET", base + "/export-tasks", p, token=False, expect=401)
    c.call("GET", base + "/export-tasks/{export_task_id}", e, expect=404)
    c.call("GET", base + "/export-tasks", {"project_id": "someone-elses"}, expect=403)
    operations = {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}
    assert {(m, t) for m, t, _ in c.seen} == operations, operations - {(m, t) for m, t, _ in c.seen}
    # Every documented success status was seen.
    for path, item in doc["paths"].items():
        for m, op in item.items():
            success = [s for s in op["responses"] if s.startswith("2")]
            assert (m.upper(), path, success[0]) in c.seen, (m, path, success)


def test_what_the_document_requires_the_gateway_refuses_to_go_without(doc, server, channel, seed):
    """Each required query parameter and body field: a call that leaves it out (and only it) is a
    400 naming it; with everything the document requires, the call succeeds."""
    user = make_user(server, channel)
    c = Checker(doc, server.http_port, user.creds)
    p = {"project_id": user.project_id}
    base = "/v5/iot/{project_id}"
    valid = {  # (method, path): (query, body) of a call that succeeds
        ("POST", base + "/export-tasks"): ("", {"resource_type": "BatchTask",
                                               "resource_condition": {"task_id": seed(user, 10)}}),
        ("POST", base + "/batchtasks"): ("", {"task_name": "required_check", "task_type": "createCommands",
                                             "targets": ["dev_1"]}),
        ("GET", base + "/batchtasks"): ("task_type=createCommands", None),
    }
    found = set()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            required_query = [q["name"] for q in op["parameters"] if q.get("in") == "query" and q["required"]]
            body_ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            required_body = doc["components"]["schemas"][body_ref["$ref"].rsplit("/", 1)[1]].get("required", []) \
                if body_ref else []
            if not required_query and not required_body:
                continue
            found.add((method.upper(), path))
            query, body = valid[(method.upper(), path)]
            for name in required_query:
                rest = "&".join(x for x in query.split("&") if not x.startswith(name + "="))
                _, refused = c.call(method.upper(), path, p, query=rest, expect=400)
                assert name in refused["error_msg"], (path, name, refused)
            for name in required_body:
                _, refused = c.call(method.upper(), path, p, query=query,
                                    body={k: v for k, v in body.items() if k != name}, expect=400)
                assert name in refused["error_msg"], (path, name, refused)
            r, _ = c.call(method.upper(), path, p, query=query, body=body)
            assert 200 <= r.status < 300, (method, path, r.status)
    assert found == set(valid), "the document's required fields changed: update `valid`"


def test_the_served_document_is_the_committed_one(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        conn.request("GET", "/openapi.json")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type").startswith("application/json")
        assert r.read() == DOC_PATH.read_bytes()
    finally:
        conn.close()
