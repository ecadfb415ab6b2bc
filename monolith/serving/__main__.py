"""``python -m monolith.serving --model DIR [--host H] [--port P] [--token-file F] [limits]``: serve an
export over HTTP. Updates need the token of ``--token-file`` or ``$MONOLITH_SERVING_TOKEN`` where one
is set; without one the server listens on loopback only."""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

import torch
import uvicorn

from monolith.serving.auth import TOKEN_ENV, is_loopback, read_token
from monolith.serving.model import ServingModel
from monolith.serving.server import (BODY_TIMEOUT_S, MAX_BATCH_SIZE, MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_UPDATE_BYTES,
                                     MAX_URL_BYTES, create_app)


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


def main(argv: Sequence[str] | None = None) -> None:
    """Loads the export and serves it with uvicorn until interrupted."""
    parser = argparse.ArgumentParser(prog="monolith serve", description=__doc__)
    parser.add_argument("--model", required=True,
                        help="an export directory, or a directory of exports (the newest step is served)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8500, help="port to listen on (default 8500)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads (default 1: requests already run in parallel, and idle "
                             "OpenMP threads spinning on shared cores slow small ops down)")
    parser.add_argument("--max-body-bytes", type=_positive_int, default=MAX_BODY_BYTES,
                        help=f"largest /v1/predict body; larger ones get 413 (default {MAX_BODY_BYTES >> 20} MiB)")
    parser.add_argument("--max-batch-size", type=_positive_int, default=MAX_BATCH_SIZE,
                        help=f"most examples in one prediction request; more get 413 (default {MAX_BATCH_SIZE})")
    parser.add_argument("--max-update-bytes", type=_positive_int, default=MAX_UPDATE_BYTES,
                        help=f"largest /v1/update body; larger ones get 413 (default {MAX_UPDATE_BYTES >> 30} GiB)")
    parser.add_argument("--token-file", default=None, metavar="PATH",
                        help=f"file holding the token /v1/update requires as 'Authorization: Bearer <token>' "
                             f"(default: ${TOKEN_ENV}; required beyond loopback)")
    parser.add_argument("--max-header-bytes", type=_positive_int, default=MAX_HEADER_BYTES,
                        help=f"most bytes of header lines in a request; more get 431 (default {MAX_HEADER_BYTES})")
    parser.add_argument("--body-timeout", type=_positive_float, default=BODY_TIMEOUT_S,
                        help=f"seconds a client may pause mid-body before it gets 408 (default {BODY_TIMEOUT_S:g})")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    try:
        token = read_token(args.token_file)
    except ValueError as error:
        parser.exit(2, f"monolith serve: error: {error}\n")
    if token is None and not is_loopback(args.host):
        parser.exit(2, f"monolith serve: error: --host {args.host} is reachable from other machines, which could "
                       f"then change what is served: set ${TOKEN_ENV} or --token-file\n")
    logging.basicConfig(level=args.log_level.upper())
    torch.set_num_threads(args.torch_threads)
    try:
        model = ServingModel.load(args.model)
    except (FileNotFoundError, ValueError) as error:  # a wrong path or not an export: one line, no traceback
        parser.exit(2, f"monolith serve: error: --model {args.model}: {error}\n")
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
