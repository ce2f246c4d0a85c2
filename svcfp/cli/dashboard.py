"""`svcfp dashboard`: the web dashboard of a stored run (or of a database a controller is
writing elsewhere), read-only, live as the database changes."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from controller.store.storage import redacted
from controller.web.settings import DEFAULT_LISTEN, TOKEN_ENV, WebSettings
from svcfp.cli.inputs import DB_HELP, add_db_timeout, database_location

log = logging.getLogger("controller.web")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `svcfp dashboard`."""
    parser = subparsers.add_parser(
        "dashboard",
        help="the web dashboard of a controller database (read-only)",
        description=__doc__,
    )
    parser.add_argument(
        "--db",
        type=database_location,
        default=Path("svcfp.db"),
        help=f"the controller's database: {DB_HELP} (default: svcfp.db)",
    )
    add_db_timeout(parser)
    parser.add_argument(
        "--http",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="where to serve it; beyond loopback it needs --http-token-file",
    )
    parser.add_argument(
        "--http-token-file", type=Path, help=f"file holding the access token (or set {TOKEN_ENV})"
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Entry point of `svcfp dashboard`."""
    settings = WebSettings.parse(args.http, args.http_token_file)
    # Imported here: the web stack is the `web` extra.
    from controller.web.run import serve_stored

    def announce(url: str) -> None:
        print(f"svcfp dashboard of {redacted(args.db)}: {url}  (Ctrl-C stops it)", flush=True)

    asyncio.run(serve_stored(args.db, settings, announce, args.db_timeout))
    return 0
