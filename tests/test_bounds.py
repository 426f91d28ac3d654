"""Every input that can grow is bounded; list responses always fit in one message; per-user caps on
the streams a user holds open.

- JSON fields of a batch task (document, targets_filter, task_ext_info): size and nesting, refused
  with the field named, a multi-megabyte Struct refused before it is decoded;
- RecordSubtaskResults cannot grow a batch task past 30,000 sub-tasks, also under concurrent calls,
  on SQLite and across PostgreSQL replicas;
- ListBatchTasks, ShowBatchTask and ListExportTasks stop a page before rules.LIST_PAGE_BUDGET_BYTES
  and chain through every record exactly once by the marker (gRPC, raw HTTP, the official SDK); the
  largest record the limits allow fits in one message;
- WatchProgress streams and downloads per user: the one over the cap is refused before its first
  message with RESOURCE_EXHAUSTED + QuotaFailure, a closed or cancelled stream gives its slot back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import json
import time

import grpc
import pytest
from conftest import (ServerThread, User, invalid_argument, make_user, refused, rpc_failure, store_snapshot,
                      wait_for)
from google.protobuf import json_format, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from iotda.export.v1 import batch_task_pb2 as bpb
from iotda.export.v1 import export_task_pb2 as epb
from iotda.export.v1 import export_task_pb2_grpc as epb_grpc
from iotda_export_server.domain import errors, pages, rules
from iotda_export_server.domain.batches import JSON_FIELDS, seed_batch_task
from iotda_export_server.domain.errors import InvalidArgument, QuotaExceeded
from iotda_export_server.domain.limits import ConcurrencyLimiter
from iotda_export_server.domain.model import BatchTask, Subtask, TaskProgress
from iotda_export_server.transport import render
from iotda_export_server.transport.grpc_server import MAX_MESSAGE_BYTES

# -- helpers ---------------------------------------------------------------------------------------


def batch_request(user, *, task_type: str = "createCommands", **structs) -> bpb.CreateBatchTaskRequest:
    req = bpb.CreateBatchTaskRequest(project_id=user.project_id, task_name="bounds", task_type=task_type)
    if "targets" in structs:
        req.targets.extend(structs.pop("targets"))
    elif "targets_filter" not in structs:
        req.targets.append("dev_1")
    for name, value in structs.items():
        getattr(req, name).update(value)
    return req


def create(user, **kw) -> bpb.BatchTask:
    return user.batches.CreateBatchTask(batch_request(user, **kw), metadata=user.metadata).batchtask


def compact(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def nested(depth: int) -> dict:
    """An object `depth` levels deep (alternating objects and arrays), the outer object level 1."""
    value: object = "leaf"
    for level in range(depth - 1, 0, -1):
        value = {"k": value} if level % 2 else [value]
    return {"k": value}


def numbers_document(chars: int) -> dict:
    """The document of exactly `chars` characters (as the server measures: Struct numbers are doubles,
    0 renders as 0.0) with the densest encoding a real document has: an array of numbers."""
    n = (chars - len('{"a":[]}') + 1) // 4 - 2  # "0.0," each; room for a padding key of 2-5 characters
    pad = chars - len(compact({"a": [0.0] * n}))
    doc = {"a": [0] * n, "b" * (pad - len(',"":""')): ""}
    assert len(compact(json_format.MessageToDict(_struct(doc)))) == chars, "the helper is off"
    return doc


def _struct(value: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


# -- 1. bounded JSON fields --------------------------------------------------------------------------

def test_json_fields_are_refused_past_their_size_and_accepted_at_it(server, channel):
    user = make_user(server, channel)
    at = numbers_document(rules.MAX_DOCUMENT_CHARS)
    t = create(user, document=at)
    assert len(compact(json_format.MessageToDict(t.document))) == rules.MAX_DOCUMENT_CHARS
    over = numbers_document(rules.MAX_DOCUMENT_CHARS + 1)
    f = invalid_argument(lambda: create(user, document=over), "document")
    assert f"at most {rules.MAX_DOCUMENT_CHARS} characters" in f.message

    ext = {"note": "名" * (rules.MAX_TASK_EXT_INFO_CHARS - len('{"note":""}'))}
    assert create(user, task_type="firmwareUpgrade", task_ext_info=ext).task_ext_info["note"] == ext["note"]
    ext["note"] += "名"
    invalid_argument(lambda: create(user, task_type="firmwareUpgrade", task_ext_info=ext), "task_ext_info")

    groups = [f"group_{i:03d}" + "g" * 119 for i in range(rules.MAX_TARGET_GROUPS)]
    assert len(compact({"group_ids": groups})) <= rules.MAX_TARGETS_FILTER_CHARS  # any valid filter fits
    t = create(user, targets_filter={"group_ids": groups})
    assert list(t.targets_filter["group_ids"]) == groups
    f = invalid_argument(lambda: create(user, targets_filter={"group_ids": [*groups, "one_more"]}), "targets_filter")
    assert f"at most {rules.MAX_TARGET_GROUPS} group_ids" in f.message


def test_nesting_is_refused_past_the_limit_over_grpc_and_http(server, channel):
    from test_http_gateway import Api
    user = make_user(server, channel)
    assert create(user, document=nested(rules.MAX_JSON_DEPTH)).document == _struct(nested(rules.MAX_JSON_DEPTH))
    for name, extra in (("document", {}), ("task_ext_info", {"task_type": "firmwareUpgrade"})):
        f = invalid_argument(lambda: create(user, **{name: nested(rules.MAX_JSON_DEPTH + 1)}, **extra), name)
        assert f"at most {rules.MAX_JSON_DEPTH} levels" in f.message
    api = Api(server, user.creds)
    body = {"task_name": "bounds", "task_type": "createCommands", "targets": ["d1"],
            "document": nested(rules.MAX_JSON_DEPTH + 1)}
    doc = api.call("POST", api.path("/batchtasks"), body).error(400, "IOTDA.000006")
    assert "document" in doc["error_msg"] and f"{rules.MAX_JSON_DEPTH} levels" in doc["error_msg"]
    body["document"] = nested(rules.MAX_JSON_DEPTH)
    assert api.call("POST", api.path("/batchtasks"), body).status == 201


def test_a_huge_struct_is_refused_before_it_is_decoded(server, channel):
    """The check that names the field runs on the encoded size (C) before the pure-Python decoding,
    which takes seconds for a few megabytes: the refusal costs a small fraction of a decoding."""
    req = bpb.CreateBatchTaskRequest(project_id="p", task_name="n", task_type="createCommands", targets=["d"])
    req.document.update({"a": [0] * 1_000_000})  # 11 MB encoded
    assert req.ByteSize() > 10_000_000
    started = time.perf_counter()
    with pytest.raises(InvalidArgument) as e:
        render.create_batch_request(req)
    refusal = time.perf_counter() - started
    assert [v.field for v in e.value.violations] == ["document"]
    started = time.perf_counter()
    json_format.MessageToDict(req.document)
    decoding = time.perf_counter() - started
    print(f"\n11 MB document: refused in {refusal * 1000:.1f} ms; decoding it would take {decoding * 1000:.0f} ms")
    assert refusal * 20 < decoding, (refusal, decoding)
    # The same over gRPC, and nothing is stored.
    user = make_user(server, channel)
    before = store_snapshot(server, user.project_id)
    req.project_id = user.project_id
    invalid_argument(lambda: user.batches.CreateBatchTask(req, metadata=user.metadata), "document")
    for name in ("task_ext_info", "targets_filter"):
        big = bpb.CreateBatchTaskRequest(project_id=user.project_id, task_name="n", task_type="firmwareUpgrade")
        getattr(big, name).update({"group_ids": ["g" * 100] * 20_000})
        invalid_argument(lambda: user.batches.CreateBatchTask(big, metadata=user.metadata), name)
    assert store_snapshot(server, user.project_id) == before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=60)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=8))
def test_the_encoded_size_check_never_refuses_what_the_rule_accepts(value):
    """STRUCT_BYTES_PER_JSON_CHAR bounds the encoding of every value by its JSON text: the early
    check on the encoded size cannot refuse a value within the characters limit."""
    s = _struct(value)
    text = compact(json_format.MessageToDict(s))
    assert s.ByteSize() <= rules.STRUCT_BYTES_PER_JSON_CHAR * max(len(text), 1)


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


scalars = st.none() | st.booleans() | st.integers(0, 9) | st.text(max_size=3)
flat = st.lists(scalars, max_size=2) | st.dictionaries(st.text(max_size=2), scalars, max_size=2)


@st.composite
def deep_objects(draw) -> dict:
    """An object with a chain of `depth` nested objects and arrays (the deepest part), small values
    beside it on the way, and a padding string: around both limits, depth and size."""
    depth = draw(st.integers(1, rules.MAX_JSON_DEPTH + 4))
    value = draw(scalars)
    for level in range(depth, 0, -1):
        siblings = draw(st.lists(flat if level < depth else scalars, max_size=2))
        if level == 1 or draw(st.booleans()):
            value = {"k": value, **{f"s{i}": v for i, v in enumerate(siblings)}}
        else:
            value = [value, *siblings]
    value["pad"] = "x" * draw(st.integers(0, 520))
    return value


@pytest.fixture(scope="module")
def ext_user(server, channel):
    return make_user(server, channel)


def test_task_ext_info_is_accepted_exactly_when_within_depth_and_size(ext_user):
    outcomes = {True: 0, False: 0}

    @settings(max_examples=80, deadline=None)
    @given(deep_objects())
    def check(value):
        outcomes[_ext_info_case(ext_user, value)] += 1
    check()
    assert all(outcomes.values()), outcomes  # both sides of the limits were tried


def _ext_info_case(user, value: dict) -> bool:
    text = compact(json_format.MessageToDict(_struct(value)))
    fits = _depth(value) <= rules.MAX_JSON_DEPTH and len(text) <= rules.MAX_TASK_EXT_INFO_CHARS
    try:
        t = create(user, task_type="firmwareUpgrade", task_ext_info=value)
        assert fits, (len(text), _depth(value))
        assert json_format.MessageToDict(t.task_ext_info) == json_format.MessageToDict(_struct(value))
    except grpc.RpcError as err:
        f = rpc_failure(err)
        assert not fits and f.code == grpc.StatusCode.INVALID_ARGUMENT and f.fields == ["task_ext_info"], f
    return fits


def test_other_growing_fields_are_bounded(server, channel):
    user = make_user(server, channel)
    cond = json.dumps({"task_id": "0" * 24}) + " " * rules.MAX_RESOURCE_CONDITION_CHARS
    f = invalid_argument(lambda: user.exports.ListExportTasks(epb.ListExportTasksRequest(
        project_id=user.project_id, resource_condition=cond), metadata=user.metadata), "resource_condition")
    assert f"at most {rules.MAX_RESOURCE_CONDITION_CHARS} characters" in f.message
    ok = json.dumps({"task_id": "0" * 24})
    ok += " " * (rules.MAX_RESOURCE_CONDITION_CHARS - len(ok))
    assert user.exports.ListExportTasks(epb.ListExportTasksRequest(
        project_id=user.project_id, resource_condition=ok), metadata=user.metadata).page.count == 0
    tomorrow = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    for when in ("20300101T000000Z" + "0" * 1_000_000,
                 tomorrow.strftime("%Y%m%dT10105Z")):  # 10:10:05 unpadded, which strptime would take
        req = batch_request(user)
        req.task_policy.schedule_time = when
        f = invalid_argument(lambda: user.batches.CreateBatchTask(req, metadata=user.metadata),
                             "task_policy.schedule_time")
        assert len(f.message) < 200  # the value is not echoed
    req.task_policy.schedule_time = tomorrow.strftime("%Y%m%dT101005Z")
    assert user.batches.CreateBatchTask(req, metadata=user.metadata).batchtask.task_policy.schedule_time


# -- 2. RecordSubtaskResults keeps a batch task at 30,000 sub-tasks -------------------------------

def _results(user, task_id: str, targets: list[str]) -> bpb.RecordSubtaskResultsRequest:
    return bpb.RecordSubtaskResultsRequest(project_id=user.project_id, task_id=task_id, results=[
        bpb.SubtaskResult(target=t, status="Success", output="ok") for t in targets])


def _too_many(failure) -> None:
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION, failure
    assert failure.error_code == errors.Codes.BATCH_TASK_TOO_MANY_TARGETS, failure
    assert failure.precondition.violations[0].type == "TOO_MANY_TARGETS"


def test_results_cannot_grow_a_task_past_30000_subtasks(server, channel):
    user = make_user(server, channel)
    task = create(user, targets_filter={"group_ids": ["g1"]})
    per_call = rules.MAX_RECORDED_RESULTS_PER_CALL
    for call in range(rules.MAX_BATCH_TARGETS // per_call):
        targets = [f"dev_{call}_{i}" for i in range(per_call)]
        t = user.batches.RecordSubtaskResults(_results(user, task.task_id, targets), metadata=user.metadata)
    assert t.batchtask.task_progress.total == rules.MAX_BATCH_TARGETS
    before = store_snapshot(server, user.project_id)
    f = refused(lambda: user.batches.RecordSubtaskResults(_results(user, task.task_id, ["dev_0_0", "one_more"]),
                                                          metadata=user.metadata))
    _too_many(f)
    assert "at most 30000" in f.message and "add 1 targets" in f.message
    assert store_snapshot(server, user.project_id) == before  # not even dev_0_0 was updated
    # Results for targets it already has are still recorded.
    req = _results(user, task.task_id, ["dev_0_0"])
    req.results[0].status = "Fail"
    assert user.batches.RecordSubtaskResults(req, metadata=user.metadata).batchtask.task_progress.fail == 1
    # Demo data seeded beyond the cap takes updates, never a new target.
    seeded = seed_batch_task(server.store, user.project_id, "", rules.MAX_BATCH_TARGETS + 5, seed=3)
    known = server.store.reader().subtask_rows(seeded, "", 1)[0][1]
    user.batches.RecordSubtaskResults(_results(user, seeded, [known]), metadata=user.metadata)
    _too_many(refused(lambda: user.batches.RecordSubtaskResults(_results(user, seeded, ["brand_new"]),
                                                                metadata=user.metadata)))


def _concurrent_adds(servers: list[ServerThread], calls: int = 5) -> tuple[list, int]:
    """`calls` concurrent RecordSubtaskResults, each adding 10,000 new targets to one task (round robin
    over `servers`); returns the outcomes and the task's sub-task count after them."""
    with grpc.insecure_channel(servers[0].address) as first:
        user = make_user(servers[0], first)
        task_id = create(user, targets_filter={"group_ids": ["g1"]}).task_id
    channels = [grpc.insecure_channel(s.address) for s in servers]
    try:
        stubs = [User(user.creds, ch).batches for ch in channels]

        def add(i: int):
            targets = [f"dev_{i}_{j}" for j in range(rules.MAX_RECORDED_RESULTS_PER_CALL)]
            try:
                stubs[i % len(stubs)].RecordSubtaskResults(_results(user, task_id, targets), metadata=user.metadata,
                                                           timeout=120)
                return "OK"
            except grpc.RpcError as err:
                return rpc_failure(err)

        with concurrent.futures.ThreadPoolExecutor(calls) as pool:
            outcomes = list(pool.map(add, range(calls)))
        shown = stubs[0].ShowBatchTask(bpb.ShowBatchTaskRequest(project_id=user.project_id, task_id=task_id),
                                       metadata=user.metadata)
        return outcomes, shown.batchtask.task_progress.total
    finally:
        for ch in channels:
            ch.close()


def test_concurrent_results_never_pass_30000_on_sqlite(server):
    outcomes, total = _concurrent_adds([server])
    assert outcomes.count("OK") == 3 and total == rules.MAX_BATCH_TARGETS, (outcomes, total)
    for f in outcomes:
        if f != "OK":
            _too_many(f)


def test_concurrent_results_never_pass_30000_across_postgres_replicas(tmp_path):
    import pg_support as ps
    db = ps.TestDatabase().create()
    try:
        ps.run_cli("migrate", "--database", db.url)
        replicas = [ServerThread(tmp_path / name, workers=0, database=db.url) for name in ("a", "b")]
        try:
            outcomes, total = _concurrent_adds(replicas)
        finally:
            for r in replicas:
                r.stop()
        assert outcomes.count("OK") == 3 and total == rules.MAX_BATCH_TARGETS, (outcomes, total)
        assert db.scalar("SELECT count(*) FROM subtasks") == rules.MAX_BATCH_TARGETS
        for f in outcomes:
            if f != "OK":
                _too_many(f)
    finally:
        db.drop()


# -- 3. pages by size ------------------------------------------------------------------------------

@given(st.lists(st.integers(1, 3000), max_size=60), st.integers(0, 5000), st.integers(1, 10_000))
def test_fit_keeps_the_longest_prefix_within_the_budget_and_at_least_one(sizes, used, budget):
    items = list(range(len(sizes)))
    kept = pages.fit(items, lambda i: sizes[i], used=used, budget=budget)
    assert kept == items[:len(kept)]
    if items:
        assert len(kept) >= 1
        assert len(kept) == 1 or used + sum(sizes[:len(kept)]) <= budget
        assert len(kept) == len(items) or used + sum(sizes[:len(kept) + 1]) > budget


def _largest_batch_task() -> tuple[bpb.BatchTask, int]:
    """The largest batch task the limits allow, rendered, and its size: 30,000 targets of 128
    characters, the longest name, and each JSON field at the most its early check lets through."""
    task = dataclasses.replace(_largest_listed(), targets=[f"{i:0128d}" for i in range(rules.MAX_BATCH_TARGETS)])
    message = render.batch_task(task)
    size = render.field_size(message)
    for limit in JSON_FIELDS.values():  # each Struct field: tag, a 3-byte length, the encoding's maximum
        size += 1 + 3 + rules.STRUCT_BYTES_PER_JSON_CHAR * limit
    return message, size


def _largest_listed():
    """ListBatchTasks renders tasks without targets: the rest at its maximum."""
    return BatchTask(
        task_id="f" * 24, project_id="p" * 64, instance_id="i" * 36, app_id="a" * 36, task_name="名" * 128,
        task_type="firmwareUpgrade", task_mode="GATEWAY", need_confirm=True, task_ext_info=None, targets=[],
        targets_filter=None, document=None,
        task_policy={"schedule_time": "20300101T000000Z", "retry_count": 5, "retry_interval": 1440},
        document_source="f" * 128, status="PartialSuccess", status_desc="all sub-tasks failed" * 4,
        create_time=0, progress=TaskProgress(*(2**31 - 1,) * 8))


def _largest_export():
    from iotda_export_server.domain.model import ExportTask
    return ExportTask(
        export_task_id="f" * 24, owner="o", project_id="p", instance_id="i", resource_type="BatchTask",
        batch_task_id="f" * 24, export_format="xls", app_type="APP", app_id="a" * 36, conditions_key="",
        status="Failed", status_desc="x" * 1000, progress=100, export_count=2**31 - 1, create_time=2**41,
        end_time=2**41, version=1, run_state="done", run_token=None, attempts=3, worker_id=None, lease_until=None,
        queued_at=None, file_generation=1, file_size=2**40, file_sha256="f" * 64)


def _largest_detail() -> int:
    big = "😀"  # 4 bytes in UTF-8
    detail = render.subtask(Subtask(id="f" * 24, target="x" * 128, status="FailWaitRetry",
                                    output=big * rules.MAX_OUTPUT_CHARS, error_code=big * rules.MAX_ERROR_FIELD_CHARS,
                                    error_msg=big * rules.MAX_ERROR_FIELD_CHARS))
    return render.field_size(detail)


CLIENT_DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024  # grpcio, grpc-js and grpcurl unless told otherwise


def test_the_largest_responses_fit_in_one_message():
    task, task_size = _largest_batch_task()
    listed = render.batch_task(_largest_listed(), with_targets=False)
    listed_size = render.field_size(listed) + sum(1 + 3 + rules.STRUCT_BYTES_PER_JSON_CHAR * limit
                                                  for limit in JSON_FIELDS.values())
    export_size = render.field_size(render.export_task(_largest_export()))
    detail = _largest_detail()
    envelope = 64  # page: count and a 24-character marker
    # A page: records up to the budget, or one record alone past it.
    show = max(rules.LIST_PAGE_BUDGET_BYTES + detail, task_size + detail) + envelope
    list_batches = max(rules.LIST_PAGE_BUDGET_BYTES, listed_size) + envelope
    list_exports = max(rules.LIST_PAGE_BUDGET_BYTES, export_size) + envelope
    print(f"\nlargest batch task {task_size / 1e6:.2f} MB ({listed_size / 1e3:.0f} KB without its targets),"
          f" sub-task detail {detail / 1e3:.0f} KB, export task {export_size} B; largest ShowBatchTask"
          f" {show / 1e6:.2f} MB, ListBatchTasks {list_batches / 1e6:.2f} MB, ListExportTasks"
          f" {list_exports / 1e6:.2f} MB; message limit {MAX_MESSAGE_BYTES / 1e6:.2f} MB")
    assert len(task.targets) == rules.MAX_BATCH_TARGETS and task_size > 4_000_000
    assert show <= MAX_MESSAGE_BYTES
    # Lists fit what any gRPC client accepts without configuration; ShowBatchTask too, unless the
    # task's own target list is near its maximum (30,000 of 128 characters: ~4 MB alone).
    assert list_batches <= CLIENT_DEFAULT_MAX_RECEIVE and list_exports <= CLIENT_DEFAULT_MAX_RECEIVE
    assert rules.LIST_PAGE_BUDGET_BYTES + detail + envelope <= CLIENT_DEFAULT_MAX_RECEIVE


def _encoded_items(response, field: str) -> int:
    return sum(render.field_size(m) for m in getattr(response, field))


@pytest.fixture(scope="module")
def big_project(server):
    """A project with 60 batch tasks each holding a document at the size limit (~180 KB encoded):
    50 of them would be about 9 MB, more than twice the page budget."""
    with grpc.insecure_channel(server.address) as channel:
        user = make_user(server, channel)
        document = numbers_document(rules.MAX_DOCUMENT_CHARS)
        ids = {create(user, document=document).task_id for _ in range(60)}
    return user.creds, ids


def _chain(list_page, what: str) -> list[str]:
    """Follows the marker until an empty page; every page within the budget (one record past it at most)."""
    seen, marker, pages_seen = [], "", 0
    while True:
        ids, page_marker, count, items_bytes, n = list_page(marker)
        if not ids:
            return seen
        pages_seen += 1
        assert n == 1 or items_bytes <= rules.LIST_PAGE_BUDGET_BYTES, (what, items_bytes)
        assert page_marker == ids[-1], what
        seen += ids
        marker = page_marker
        assert pages_seen < 100, "the marker does not move on"


def test_list_batch_tasks_pages_by_size_over_grpc(big_project, server, channel):
    creds, ids = big_project
    user = User(creds, channel)
    sizes = []

    def page(marker):
        r = user.batches.ListBatchTasks(bpb.ListBatchTasksRequest(
            project_id=user.project_id, task_type="createCommands", limit=50, marker=marker), metadata=user.metadata)
        assert r.page.count == len(ids)
        sizes.append(len(r.batchtasks))
        return [t.task_id for t in r.batchtasks], r.page.marker, r.page.count, _encoded_items(r, "batchtasks"), \
            len(r.batchtasks)

    seen = _chain(page, "ListBatchTasks")
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    print(f"\nListBatchTasks limit=50 over 60 tasks of ~180 KB: pages of {sizes[:-1]}")
    assert max(sizes) < 50 and len(sizes) >= 3


def test_list_batch_tasks_pages_by_size_over_http_and_the_sdk(big_project, server):
    from huaweicloudsdkiotda.v5 import ListBatchTasksRequest
    from test_http_gateway import Api
    from test_sdk import SDK, Sdk
    creds, ids = big_project
    api = Api(server, creds)

    def raw_page(marker):
        query = "task_type=createCommands&limit=50" + (f"&marker={marker}" if marker else "")
        doc = api.call("GET", api.path("/batchtasks"), query=query, auth="token").json()
        assert doc["page"]["count"] == len(ids)
        tasks = doc["batchtasks"]
        return [t["task_id"] for t in tasks], doc["page"].get("marker", ""), doc["page"]["count"], _json_size(tasks), \
            len(tasks)

    seen = _chain(raw_page, "HTTP ListBatchTasks")
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))

    sdk = Sdk(server, creds, SDK)

    def sdk_page(marker):
        r = sdk.list_batch_tasks(ListBatchTasksRequest(task_type="createCommands", limit=50, marker=marker or None))
        assert r.page.count == len(ids)
        tasks = r.batchtasks or []
        size = _json_size(json.loads(sdk.last.content)["batchtasks"] if tasks else [])  # the body the SDK parsed
        return [t.task_id for t in tasks], r.page.marker or "", r.page.count, size, len(tasks)

    seen = _chain(sdk_page, "SDK ListBatchTasks")
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))


def _json_size(tasks: list[dict]) -> int:
    """The encoded size of batch tasks received as JSON (their gRPC encoding)."""
    return sum(render.field_size(json_format.ParseDict(t, bpb.BatchTask(), ignore_unknown_fields=True))
               for t in tasks)


def test_show_batch_task_pages_its_details_by_size(server, channel):
    user = make_user(server, channel)
    # The task counts too: with a document at its limit (~180 KB) a page holds one detail fewer.
    task = create(user, targets_filter={"group_ids": ["g1"]}, document=numbers_document(rules.MAX_DOCUMENT_CHARS))
    output = "😀" * rules.MAX_OUTPUT_CHARS  # 131 KB a detail: 50 would be 6.5 MB
    targets = [f"dev_{i:03d}" for i in range(200)]
    for i in range(0, len(targets), 50):
        user.batches.RecordSubtaskResults(bpb.RecordSubtaskResultsRequest(
            project_id=user.project_id, task_id=task.task_id, results=[
                bpb.SubtaskResult(target=t, status="Success", output=output) for t in targets[i:i + 50]]),
            metadata=user.metadata)
    sizes = []

    def page(marker):
        r = user.batches.ShowBatchTask(bpb.ShowBatchTaskRequest(
            project_id=user.project_id, task_id=task.task_id, limit=50, marker=marker), metadata=user.metadata)
        assert r.page.count == len(targets) and r.batchtask.task_id == task.task_id
        sizes.append(len(r.task_details))
        used = render.field_size(r.batchtask) + _encoded_items(r, "task_details")
        return [d.target for d in r.task_details], r.page.marker, r.page.count, used, len(r.task_details)

    # The marker is the last sub-task's record id; map it back through the ids the store gave them.
    ids = {row[1]: row[0] for row in server.store.reader().subtask_rows(task.task_id, "", 1000)}
    seen, marker = [], ""
    while True:
        got, page_marker, count, used, n = page(marker)
        if not got:
            break
        assert n == 1 or used <= rules.LIST_PAGE_BUDGET_BYTES, used
        assert page_marker == ids[got[-1]]
        seen += got
        marker = page_marker
    assert sorted(seen) == targets and len(seen) == len(set(seen))
    print(f"\nShowBatchTask limit=50 over 200 details of 131 KB: pages of {sizes[:-1]}")
    assert max(sizes) < 50


def test_a_record_larger_than_the_budget_still_gets_a_page_of_its_own(server, channel):
    """Data from before the limits (a document larger than the budget): it is alone on its page, the
    chain goes on."""
    user = make_user(server, channel)
    normal = [create(user).task_id for _ in range(3)]
    big = seed_batch_task(server.store, user.project_id, "", 1, seed=11)
    with server.store.transaction() as tx:
        tx.conn.execute("UPDATE batch_tasks SET task_type = 'createCommands', document = ? WHERE task_id = ?",
                     (json.dumps({"a": "x" * (rules.LIST_PAGE_BUDGET_BYTES + 100_000)}), big))
    pages_seen, marker = [], ""
    while True:
        r = user.batches.ListBatchTasks(bpb.ListBatchTasksRequest(
            project_id=user.project_id, task_type="createCommands", limit=50, marker=marker), metadata=user.metadata)
        if not r.batchtasks:
            break
        pages_seen.append([t.task_id for t in r.batchtasks])
        marker = r.page.marker
    assert sorted(sum(pages_seen, [])) == sorted([*normal, big])
    assert [big] in pages_seen


def test_list_export_tasks_chains_through_every_task(server, channel, seed):
    user = make_user(server, channel)
    task_ids = [seed(user, 3) for _ in range(4)]
    made = {user.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=user.project_id, resource_type="BatchTask", resource_condition=epb.ResourceCondition(task_id=t)),
        metadata=user.metadata).export_task.export_task_id for t in task_ids}
    seen, marker = [], ""
    while True:
        r = user.exports.ListExportTasks(epb.ListExportTasksRequest(project_id=user.project_id, limit=3,
                                                                    marker=marker), metadata=user.metadata)
        if not r.export_tasks:
            break
        assert r.page.count == 4 and r.page.marker == r.export_tasks[-1].export_task_id
        seen += [t.export_task_id for t in r.export_tasks]
        marker = r.page.marker
    assert sorted(seen) == sorted(made)


# -- 4. per-user caps on streams -------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.booleans()), max_size=60), st.integers(1, 5))
def test_the_limiter_never_admits_more_than_its_limit(ops, limit):
    limiter = ConcurrencyLimiter(limit, quota_id="q", what="things", error_code="IOTDA.000000")
    held: dict[str, list] = {"a": [], "b": []}
    for owner, take in ops:
        if take:
            try:
                held[owner].append(limiter.acquire(owner))
                assert len(held[owner]) <= limit
            except QuotaExceeded as e:
                assert len(held[owner]) == limit and e.limit == limit and e.subject == f"user:{owner}"
        elif held[owner]:
            slot = held[owner].pop(0)
            slot.release()
            slot.release()  # a second release gives back nothing more
        assert limiter.held(owner) == len(held[owner])


def _cap_refusal(f, error_code: str, limit: int) -> None:
    assert f.code == grpc.StatusCode.RESOURCE_EXHAUSTED, f
    assert f.error_code == error_code and f.error_info.reason == "QUOTA_EXCEEDED", f
    assert f.quota_failure is not None and f.quota_failure.violations[0].subject.startswith("user:"), f
    assert f.error_info.metadata["limit"] == str(limit)


def test_watch_streams_are_capped_per_user(idle_server, idle_channel):
    limit = rules.MAX_WATCH_STREAMS_PER_USER
    user, other = make_user(idle_server, idle_channel), make_user(idle_server, idle_channel)

    def export_of(u):
        return u.exports.CreateExportTask(epb.CreateExportTaskRequest(
            project_id=u.project_id, resource_type="BatchTask", resource_condition=epb.ResourceCondition(
                task_id=seed_batch_task(idle_server.store, u.project_id, "", 5))), metadata=u.metadata).export_task
    export, others = export_of(user), export_of(other)  # no worker: they stay Processing

    async def scenario():
        async with grpc.aio.insecure_channel(idle_server.address) as ch:
            stub = epb_grpc.ExportTaskServiceStub(ch)

            def watch(u, e, **kw):
                return stub.WatchProgress(epb.WatchProgressRequest(project_id=u.project_id,
                                                                   export_task_id=e.export_task_id),
                                          metadata=u.metadata, **kw)

            async def refusal(call) -> grpc.aio.AioRpcError:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call.read()
                return e.value

            # Refused calls hold nothing: a missing task, then the limit of streams.
            for _ in range(3):
                missing = epb.ExportTask(export_task_id="0" * 24)
                assert (await refusal(watch(user, missing))).code() == grpc.StatusCode.NOT_FOUND
            streams = [watch(user, export) for _ in range(limit)]
            firsts = await asyncio.gather(*(s.read() for s in streams))
            assert all(f.export_task.status == "Processing" for f in firsts)
            err = await refusal(watch(user, export))
            f = rpc_failure(err)
            _cap_refusal(f, errors.Codes.WATCH_STREAMS_LIMIT, limit)
            assert "100 WatchProgress streams" in f.message
            other_stream = watch(other, others)  # another user is not affected
            assert (await other_stream.read()).export_task.status == "Processing"
            # A cancelled stream gives its slot back (once the server has seen the cancel).
            streams.pop().cancel()
            deadline = time.monotonic() + 20
            while True:
                call = watch(user, export)
                try:
                    await call.read()
                    streams.append(call)
                    break
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() < deadline, "the cancelled stream's slot did not come back"
                    await asyncio.sleep(0.05)
            assert rpc_failure(await refusal(watch(user, export))).code == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Streams that end (the task finished) give theirs back: all 100 end on the cancel.
            user.exports.CancelExportTask(epb.CancelExportTaskRequest(
                project_id=user.project_id, export_task_id=export.export_task_id), metadata=user.metadata)
            for s in streams:
                last = None
                while (event := await s.read()) != grpc.aio.EOF:
                    last = event
                assert last.export_task.status == "Failed"
            fresh = export_of(user)
            again = [watch(user, fresh) for _ in range(limit)]
            assert len(await asyncio.gather(*(s.read() for s in again))) == limit
            for s in again:
                s.cancel()
            other_stream.cancel()

    asyncio.run(scenario())


def test_downloads_are_capped_per_user(server, channel):
    limit = rules.MAX_DOWNLOADS_PER_USER
    assert limit == 2  # the scenario below: one download and one free resume hold both slots
    user = make_user(server, channel)
    task_id = seed_batch_task(server.store, user.project_id, "", 30_000, seed=12)
    export = user.exports.CreateExportTask(epb.CreateExportTaskRequest(
        project_id=user.project_id, resource_type="BatchTask", resource_condition=epb.ResourceCondition(
            task_id=task_id)), metadata=user.metadata).export_task
    wait_for(lambda: user.exports.GetExportTask(epb.GetExportTaskRequest(
        project_id=user.project_id, export_task_id=export.export_task_id),
        metadata=user.metadata).export_task.status == "Success", timeout=120, what="the export")
    # A client that reads one message and stops: HTTP/2 flow control (a fixed 64 KiB window without
    # BDP probing) keeps the server's stream open, holding its slot.
    slow = grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)])
    stub = epb_grpc.ExportTaskServiceStub(slow)

    def download(offset: int):
        return stub.ShowExportTask(epb.ShowExportTaskRequest(
            project_id=user.project_id, export_task_id=export.export_task_id, offset=offset), metadata=user.metadata)
    try:
        first = download(0)
        head = next(first)
        assert head.total_size > 500_000, head.total_size  # far more than the window
        resume = download(1000)  # a free resume of the same file: the second slot
        assert next(resume).offset == 1000
        before = store_snapshot(server, user.project_id)
        f = refused(lambda: next(download(2000)))
        _cap_refusal(f, errors.Codes.DOWNLOADS_LIMIT, limit)
        assert store_snapshot(server, user.project_id) == before  # the refusal counted no resume
        first.cancel()

        def admitted():
            call = download(3000)
            try:
                return next(call).offset == 3000 and call
            except grpc.RpcError as err:
                assert rpc_failure(err).error_code == errors.Codes.DOWNLOADS_LIMIT, err
                return False
        third = wait_for(admitted, timeout=20, what="the cancelled download's slot")
        third.cancel()
        resume.cancel()
    finally:
        slow.close()
