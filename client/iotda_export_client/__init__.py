"""Python client of iotda-export (gRPC): `ExportClient`, `ExportApiError`, `load_credentials`."""

from .client import (DEFAULT_ADDRESS, DEFAULT_CREDENTIALS_FILE, Credentials, CredentialsError, DownloadError,
                     ExportApiError, ExportClient, ResponseStream, ServerUnreachable, load_credentials)

__all__ = [
    "DEFAULT_ADDRESS", "DEFAULT_CREDENTIALS_FILE", "Credentials", "CredentialsError", "DownloadError",
    "ExportApiError", "ExportClient", "ResponseStream", "ServerUnreachable", "load_credentials",
]
