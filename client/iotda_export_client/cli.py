"""The `iotda-export` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys


def _serve(args: argparse.Namespace) -> int:
    from iotda_export_server.app import CREDENTIALS_FILE, ExportServer, ServerConfig

    logging.basicConfig(level=os.environ.get("IOTDA_EXPORT_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServerConfig(data_dir=args.data_dir, grpc_addr=args.grpc_addr,
                          workers=args.workers if args.workers is not None else (os.cpu_count() or 1))

    async def main() -> None:
        server = ExportServer(config)
        port = await server.start()
        host = args.grpc_addr.rsplit(":", 1)[0]
        print(f"iotda-export listening on {host}:{port} (gRPC)", flush=True)
        if server.bootstrap_credentials:
            creds = os.path.join(args.data_dir, CREDENTIALS_FILE)
            print(f"created administrator '{server.bootstrap_credentials['user']}' in project "
                  f"{server.bootstrap_credentials['project_id']}; credentials (token, ak, sk) in {creds} (mode 0600)."
                  f" Use them with: iotda-export --credentials {creds} export list", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("iotda-export stopping", flush=True)
        await server.stop()

    asyncio.run(main())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotda-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service (gRPC) on the embedded default: SQLite and local files")
    serve.add_argument("--data-dir", default=os.environ.get("IOTDA_EXPORT_DATA_DIR", "./data"))
    serve.add_argument("--grpc-addr", default=os.environ.get("IOTDA_EXPORT_GRPC_ADDR", "127.0.0.1:50051"),
                       help="HOST:PORT; port 0 picks a free port (printed)")
    serve.add_argument("--workers", type=int, default=None, help="export worker processes (default: cores)")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
