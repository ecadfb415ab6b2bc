"""``python -m monolith.serving --model DIR [--host H] [--port P]``: serve an export over HTTP."""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

import torch
import uvicorn

from monolith.serving.model import ServingModel
from monolith.serving.server import create_app


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
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    torch.set_num_threads(args.torch_threads)
    model = ServingModel.load(args.model)
    logging.getLogger("monolith.serving").info("serving %s (version %d) on %s:%d", model.path, model.version,
                                               args.host, args.port)
    uvicorn.run(create_app(model), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
