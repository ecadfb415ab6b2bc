"""``monolith serve --export-dir DIR [--host H] [--port P] [--token-file F] [limits]`` (also
``python -m monolith.serving``): serves an export over HTTP.

The web stack, torch and the model are imported after the arguments are read, so that ``--help``
and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from monolith.serving.auth import TOKEN_ENV, is_loopback, read_token
from monolith.serving.limits import (BODY_TIMEOUT_S, MAX_BATCH_SIZE, MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_UPDATE_BYTES,
                                     MAX_URL_BYTES)

PROG = "monolith serve"
DESCRIPTION = (f"Serve an export over HTTP: POST /v1/predict, GET /v1/health and /v1/metrics, POST /v1/update "
               f"(the trainer's pushes). Updates need the token of --token-file or ${TOKEN_ENV} where one is "
               f"set; without one the server listens on loopback only.")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


class _Renamed(argparse.Action):
    """An option's old spelling: still sets the new option's value, with one line saying so on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``monolith serve``."""
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    export = p.add_mutually_exclusive_group(required=True)
    export.add_argument("--export-dir", metavar="DIR",
                        help="an export (EXPORT_DIR/<step>/), or a directory of exports whose newest step is "
                             "served, e.g. MODEL_DIR/exported_models as `monolith export` writes it")
    export.add_argument("--model", dest="export_dir", action=_Renamed, new="--export-dir")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8500, help="port to listen on (default 8500)")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="torch intra-op threads (default 1: requests already run in parallel, and idle "
                        "OpenMP threads spinning on shared cores slow small ops down)")
    p.add_argument("--torch-threads", dest="threads", type=_positive_int, action=_Renamed, new="--threads")
    p.add_argument("--max-body-bytes", type=_positive_int, default=MAX_BODY_BYTES,
                   help=f"largest /v1/predict body; larger ones get 413 (default {MAX_BODY_BYTES >> 20} MiB)")
    p.add_argument("--max-batch-size", type=_positive_int, default=MAX_BATCH_SIZE,
                   help=f"most examples in one prediction request; more get 413 (default {MAX_BATCH_SIZE})")
    p.add_argument("--max-update-bytes", type=_positive_int, default=MAX_UPDATE_BYTES,
                   help=f"largest /v1/update body; larger ones get 413 (default {MAX_UPDATE_BYTES >> 30} GiB)")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help=f"file holding the token /v1/update requires as 'Authorization: Bearer <token>' "
                        f"(default: ${TOKEN_ENV}; required beyond loopback)")
    p.add_argument("--max-header-bytes", type=_positive_int, default=MAX_HEADER_BYTES,
                   help=f"most bytes of header lines in a request; more get 431 (default {MAX_HEADER_BYTES})")
    p.add_argument("--body-timeout", type=_positive_float, default=BODY_TIMEOUT_S,
                   help=f"seconds a client may pause mid-body before it gets 408 (default {BODY_TIMEOUT_S:g})")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Loads the export and serves it with uvicorn until interrupted."""
    cli = parser()
    args = cli.parse_args(argv)
    try:
        token = read_token(args.token_file)
    except ValueError as error:
        cli.exit(2, f"{PROG}: error: {error}\n")
    if token is None and not is_loopback(args.host):
        cli.exit(2, f"{PROG}: error: --host {args.host} is reachable from other machines, which could "
                    f"then change what is served: set ${TOKEN_ENV} or --token-file\n")
    logging.basicConfig(level=args.log_level.upper())
    import torch
    import uvicorn

    from monolith.serving.model import ServingModel
    from monolith.serving.server import create_app

    torch.set_num_threads(args.threads)
    try:
        model = ServingModel.load(args.export_dir)
    except (FileNotFoundError, ValueError) as error:  # a wrong path or not an export: one line, no traceback
        cli.exit(2, f"{PROG}: error: --export-dir {args.export_dir}: {error}\n")
    logging.getLogger("monolith.serving").info("serving %s (version %d) on %s:%d", model.path, model.version,
                                               args.host, args.port)
    app = create_app(model, max_body_bytes=args.max_body_bytes, max_batch_size=args.max_batch_size,
                     max_update_bytes=args.max_update_bytes, token=token, max_header_bytes=args.max_header_bytes,
                     body_timeout_s=args.body_timeout)
    # h11 buffers at most this much of an unfinished request head (the app refuses more once parsed).
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                h11_max_incomplete_event_size=args.max_header_bytes + MAX_URL_BYTES)


if __name__ == "__main__":
    main()
