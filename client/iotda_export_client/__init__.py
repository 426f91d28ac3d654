"""Python client of iotda-export (gRPC): `ExportClient` (sync), `AsyncExportClient` (asyncio), the
typed errors (`ExportApiError` and its subclasses, carrying the IOTDA code and the request id), and
`load_credentials`. How to use it: docs/how-to/python-client.md."""

from .client import (DEFAULT_ADDRESS, DEFAULT_CREDENTIALS_FILE, AlreadyExists, AsyncExportClient,
                     AsyncResponseStream, Credentials, CredentialsError, DownloadError, ExportApiError, ExportClient,
                     FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted,
                     ResponseStream, ServerUnreachable, ServiceUnavailable, Unauthenticated, check_address,
                     load_credentials)
from .client import __all__  # noqa: F401 - the same names
