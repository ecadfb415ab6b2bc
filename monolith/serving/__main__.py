"""``python -m monolith.serving --model DIR [--host H] [--port P] [limits]``: serve an export over HTTP."""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

import torch
import uvicorn

from monolith.serving.model import ServingModel
from monolith.serving.server import MAX_BATCH_SIZE, MAX_BODY_BYTES, MAX_UPDATE_BYTES, create_app


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
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
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    torch.set_num_threads(args.torch_threads)
    try:
        model = ServingModel.load(args.model)
    except (FileNotFoundError, ValueError) as error:  # a wrong path or not an export: one line, no traceback
        parser.exit(2, f"monolith serve: error: --model {args.model}: {error}\n")
    logging.getLogger("monolith.serving").info("serving %s (version %d) on %s:%d", model.path, model.version,
                                               args.host, args.port)
    app = create_app(model, max_body_bytes=args.max_body_bytes, max_batch_size=args.max_batch_size,
                     max_update_bytes=args.max_update_bytes)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
