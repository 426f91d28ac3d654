"""Python client of iotda-export (gRPC): `ExportClient` (sync), `AsyncExportClient` (asyncio), the
typed errors (`ExportApiError` and its subclasses, carrying the IOTDA code and the request id),
`TlsSettings` and `load_credentials`. How to use it: docs/how-to/python-client.md."""

import importlib

__all__ = [
    "DEFAULT_ADDRESS", "DEFAULT_CREDENTIALS_FILE", "AlreadyExists", "AsyncExportClient", "AsyncResponseStream",
    "Credentials", "CredentialsError", "DownloadError", "ExportApiError", "ExportClient", "FailedPrecondition",
    "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted", "ResponseStream", "ServerUnreachable",
    "ServiceUnavailable", "TlsError", "TlsFileError", "TlsSettings", "Unauthenticated", "check_address",
    "load_credentials",
]


def __getattr__(name: str):
    # Loaded on first use, so that `iotda-export` can configure gRPC (its log level) before gRPC
    # is imported; `from iotda_export_client import ExportClient` works as usual.
    if name in __all__:
        return getattr(importlib.import_module(".client", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
