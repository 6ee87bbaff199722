"""``deepserve engine fetch``: the init step that downloads an s3:// or hf:// model source.

Exit 0 when the directory holds the model, 2 with one line naming the source when it cannot
be fetched. Credentials come only from ``--credentials-dir`` (a mounted Secret's files).
"""

from __future__ import annotations

import argparse
import logging
import sys


def register_fetch(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``fetch`` to the ``engine`` command group."""
    fetch = sub.add_parser("fetch", help="download an s3:// or hf:// model source (the pod's init step)")
    fetch.add_argument("source", help="s3://<bucket>/<prefix> or hf://<org>/<name>[@<revision>]")
    fetch.add_argument("--dest", required=True, help="directory to fill (created complete or not at all)")
    fetch.add_argument("--revision", default=None, help="hf:// branch, tag or commit")
    fetch.add_argument("--credentials-dir", default=None,
                       help="directory of credential files (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                            "AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL, HF_TOKEN)")
    fetch.set_defaults(func=cmd_fetch)


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch the source into ``--dest``."""
    from deepserve.engine.fetch import FetchError, fetch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = fetch(args.source, args.dest, args.revision, args.credentials_dir)
    except (FetchError, OSError) as e:
        print(f"deepserve engine fetch: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0
