"""Field rules of the platform's pages. Each check names the field it refuses."""

from __future__ import annotations

import json
import re

from . import rules
from .errors import FieldViolation, InvalidArgument, LimitOutOfRange, invalid

# \Z, not $: "$" also matches before a trailing newline ("abc\n" would pass).
APP_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}\Z")
INSTANCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}\Z")
PROJECT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
BATCH_TASK_ID = re.compile(r"^[0-9a-f]{1,24}\Z")
RECORD_ID = re.compile(r"^[0-9a-f]{24}\Z")
# Export-task IDs in paths: the delete page allows up to 36 of [A-Za-z0-9_-]; ours are 24 hex.
EXPORT_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}\Z")
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
FILE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
TASK_NAME = re.compile(r"^[A-Za-z0-9_\u4e00-\u9fff]{1,128}\Z")


def require(value: str, field_name: str) -> str:
    if not value:
        raise invalid(field_name, "is mandatory")
    return value


def match(pattern: re.Pattern, value: str, field_name: str, description: str) -> str:
    if not pattern.match(value) or "\n" in value:
        raise invalid(field_name, description)
    return value


def project_id(value: str) -> str:
    return match(PROJECT_ID, require(value, "project_id"), "project_id", "must be 1-64 of [A-Za-z0-9_-]")


def instance_id(value: str) -> str:
    """The optional Instance-Id header; empty means the default instance."""
    if value == "":
        return ""
    return match(INSTANCE_ID, value, "Instance-Id", "must be 1-36 of [A-Za-z0-9_-]")


def export_task_id(value: str) -> str:
    return match(EXPORT_TASK_ID, require(value, "export_task_id"), "export_task_id",
                 "must be 1-36 of [A-Za-z0-9_-]")


def batch_task_id(value: str, field_name: str = "task_id") -> str:
    return match(BATCH_TASK_ID, require(value, field_name), field_name, "must be 1-24 lowercase hex characters")


def app_id(value: str, field_name: str = "app_id") -> str:
    return match(APP_ID, value, field_name, "must be 1-36 of [A-Za-z0-9_-]")


def paging(limit: int | None, offset: int | None, marker: str) -> tuple[int, int, str]:
    """The platform's paging: limit 1-50 (10), offset 0-500 (0), marker 24 hex (f×24)."""
    if limit is None:
        limit = rules.LIST_LIMIT_DEFAULT
    elif not rules.LIST_LIMIT_MIN <= limit <= rules.LIST_LIMIT_MAX:
        raise LimitOutOfRange(FieldViolation(
            "limit", f"must be {rules.LIST_LIMIT_MIN}-{rules.LIST_LIMIT_MAX}, got {limit}"))
    if offset is None:
        offset = 0
    elif not 0 <= offset <= rules.LIST_OFFSET_MAX:
        raise invalid("offset", f"must be 0-{rules.LIST_OFFSET_MAX}, got {offset}")
    if marker == "":
        marker = rules.MARKER_DEFAULT
    elif not RECORD_ID.match(marker):
        raise invalid("marker", "must be 24 lowercase hex characters")
    return limit, offset, marker


def json_object(value: dict, field_name: str, max_chars: int) -> str:
    """A JSON field of a request (a Struct): at most rules.MAX_JSON_DEPTH levels of objects and arrays and
    `max_chars` characters of compact JSON text. Returns that text."""
    depth, level = 0, [value]
    while level:  # breadth first, one level at a time: no recursion, whatever the input
        depth += 1
        if depth > rules.MAX_JSON_DEPTH:
            raise invalid(field_name, f"must nest objects and arrays at most {rules.MAX_JSON_DEPTH} levels deep")
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise invalid(field_name, "must not hold NaN or Infinity") from None
    if len(text) > max_chars:
        raise invalid(field_name, f"must be at most {max_chars} characters of JSON, got {len(text)}")
    return text


def collect(*checks) -> None:
    """Run several checks and report every violated field at once."""
    violations: list[FieldViolation] = []
    for check in checks:
        try:
            check()
        except InvalidArgument as e:
            violations.extend(e.violations)
    if violations:
        raise InvalidArgument(violations)
