"""Python client of iotda-export (gRPC): `ExportClient`, `ExportApiError`, `load_credentials`."""

import importlib

__all__ = [
    "DEFAULT_ADDRESS", "DEFAULT_CREDENTIALS_FILE", "Credentials", "CredentialsError", "DownloadError",
    "ExportApiError", "ExportClient", "ResponseStream", "ServerUnreachable", "TlsError", "TlsFileError",
    "TlsSettings", "load_credentials",
]


def __getattr__(name: str):
    # Loaded on first use, so that `iotda-export` can configure gRPC (its log level) before gRPC
    # is imported; `from iotda_export_client import ExportClient` works as usual.
    if name in __all__:
        return getattr(importlib.import_module(".client", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
