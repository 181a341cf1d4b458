"""The web app under `make run`: Werkzeug's development server, without its version.

`python -m app.dev.server --port 5000` serves `create_app()` on 127.0.0.1; its access
log goes through the `werkzeug` logger, which `create_app` redacts (no full token).
"""

from __future__ import annotations

import argparse
import signal
from types import FrameType

from werkzeug.serving import WSGIRequestHandler, make_server

from app import create_app


class QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, answering `Server: Onward` rather than naming its versions."""

    def version_string(self) -> str:
        return "Onward"


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(description="Serve Onward for development.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    app = create_app()
    server = make_server(
        args.host, args.port, app, threaded=True, request_handler=QuietRequestHandler
    )

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    print(f" * Serving Onward on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
