"""``emotion-server``: settings from ``EMOTION_*``, flags on top, then uvicorn.

Uses ``uvicorn.Server`` directly rather than ``uvicorn.run`` only to add steps
to shutdown: streams get a 1001 "going away" close from the app, and the batcher
finishes or fails (503 ``shutting_down``) the work queued for the model, before uvicorn's
own connection shutdown (which would send 1012, and cancel requests into a plain 500) runs.
"""

from __future__ import annotations

import os

# Before torch loads its OpenMP runtime: idle OpenMP threads otherwise spin and, on a
# small or shared CPU, steal the cores from decoding and the event loop (docs/detection.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from server.app import create_app
from server.config import Settings
from server.connection_limits import AbortingWebSocketProtocol, bounded_head_protocol
from server.logs import install_redaction, route_warnings_to_log
from server.pipeline.detect.options import DETECTOR_CHOICES
from server.runtime import Runtime, load_analyzer

#: Extra room over the frame limit so the app, not uvicorn, rejects big frames (with a reason).
WS_SIZE_SLACK = 1024 * 1024


class GracefulServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        runtime: Runtime | None = getattr(getattr(app, "state", None), "runtime", None)
        for server in self.servers:  # stop accepting first; uvicorn's own shutdown repeats this harmlessly
            server.close()
        if runtime is not None:
            timeout = runtime.settings.shutdown_timeout_s
            await runtime.streams.close_all(1001, "server shutting down", timeout)
            if runtime.batcher is not None:
                # Before uvicorn's own wait, which cancels the requests still waiting for the model
                # when it runs out (a plain-text 500): they get 503 shutting_down from the batcher.
                await runtime.batcher.stop(timeout)
        await super().shutdown(sockets)


def build_server(app: FastAPI, settings: Settings, **overrides: Any) -> GracefulServer:
    """A uvicorn server for ``app`` configured from ``settings`` (used by tests and the benchmark too)."""
    options: dict[str, Any] = {
        "http": bounded_head_protocol(settings.header_timeout_s, settings.body_timeout_s),
        "ws": AbortingWebSocketProtocol,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "ws_max_size": settings.max_body_bytes + WS_SIZE_SLACK,
        "timeout_graceful_shutdown": max(settings.shutdown_timeout_s, 1.0),
        "proxy_headers": True,
        "server_header": False,
        "root_path": settings.root_path,
    }
    if settings.tls_enabled:
        options["ssl_certfile"] = str(settings.ssl_certfile)
        options["ssl_keyfile"] = str(settings.ssl_keyfile)
        if settings.ssl_keyfile_password is not None:
            options["ssl_keyfile_password"] = settings.ssl_keyfile_password.get_secret_value()
    options.update(overrides)
    install_redaction()
    return GracefulServer(uvicorn.Config(app, **options))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emotion-server",
        description="Facial-emotion detection server. Every flag also reads from EMOTION_<NAME> (flags win).",
    )
    p.add_argument("--host", help="bind address (EMOTION_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (EMOTION_PORT, default 8000)")
    p.add_argument(
        "--root-path", help="path prefix a proxy serves the server under and strips (EMOTION_ROOT_PATH)"
    )
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (EMOTION_DEVICE, default auto)")
    p.add_argument("--checkpoint", help="emotion checkpoint .safetensors (EMOTION_CHECKPOINT)")
    p.add_argument(
        "--detector",
        choices=DETECTOR_CHOICES,
        help="face detector (EMOTION_DETECTOR, default distilled: a distilled SSD finds faces, the res10 "
        "SSD checks the doubtful ones; ssd: the res10 SSD alone; auto: blazeface with OpenVINO, else ssd)",
    )
    p.add_argument("--detector-input-size", help="SSD input, WxH or one side (default 300x300)")
    p.add_argument("--score-threshold", type=float, help="default minimum detector score (default 0.5)")
    p.add_argument("--max-faces", type=int, help="default and maximum faces per image (default 10)")
    p.add_argument("--max-batch-size", type=int, help="images per model batch (default 16)")
    p.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill (default 2)")
    p.add_argument("--max-streams", type=int, help="concurrent WebSocket streams (default 16)")
    p.add_argument("--stream-max-fps", type=float, help="per-stream frame-rate cap (default 30)")
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--log-level", help="critical | error | warning | info | debug")
    p.add_argument("--ssl-certfile", help="PEM certificate chain: serve HTTPS/WSS (EMOTION_SSL_CERTFILE)")
    p.add_argument("--ssl-keyfile", help="PEM private key of --ssl-certfile (EMOTION_SSL_KEYFILE)")
    p.add_argument(
        "--warmup-only",
        action="store_true",
        help="load the models, run one warm-up batch (filling the detector cache) and exit; for image builds",
    )
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "warmup_only"}
    return Settings(**overrides)


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    return settings_from(get_parser().parse_args(argv))


def warmup_only(settings: Settings) -> int:
    start = time.perf_counter()
    analyzer = load_analyzer(settings.model_copy(update={"warmup": True}))
    took = time.perf_counter() - start
    print(f"emotion-server: models loaded and warmed up on {analyzer.device} in {took:.1f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        # include_input=False: inputs may be API keys, which must not reach logs.
        lines = [
            f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
            for e in exc.errors(include_input=False)
        ]
        print("emotion-server: invalid configuration\n" + "\n".join(lines), file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    route_warnings_to_log()
    if args.warmup_only:
        return warmup_only(settings)
    try:
        app = create_app(settings)
    except (OSError, ValueError) as exc:  # e.g. a checkpoint that is not one
        print(f"emotion-server: {exc}", file=sys.stderr)
        return 2
    build_server(app, settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
