"""Command line: ``activity-exporter`` / ``python -m exporter``.

Configuration errors print one line naming the key and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile

from exporter import __version__
from exporter import config as config_mod
from exporter.config import ConfigError
from exporter.ops_cli import add_commands

log = logging.getLogger("exporter")

#: flag name -> config key, for the core settings that flags can override.
CORE_FLAGS = {
    "activity_db": "--activity-db",
    "calibre_library": "--calibre-library",
    "listen": "--listen",
    "refresh_interval": "--refresh-interval",
    "state": "--state",
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (see config.example.yml)")
    parser.add_argument("--activity-db", metavar="URL_OR_PATH", help="activity store (SQLite path or SQLAlchemy URL)")
    parser.add_argument("--calibre-library", metavar="DIR_OR_METADATA_DB", help="Calibre library (read-only)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (default :9712)")
    parser.add_argument("--refresh-interval", metavar="SECONDS", help="seconds between refreshes (default 15)")
    parser.add_argument("--state", metavar="PATH", help="checkpoint file, so restarts resume")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activity-exporter",
        description="Usage analytics for Flask apps (Calibre-Web, CWA) as a Prometheus exporter.")
    parser.add_argument("--version", action="version", version=f"activity-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve /metrics, /healthz and the report API")
    _common(serve)
    serve.add_argument("--demo", action="store_true", help="serve generated demo data and keep adding live events")
    serve.add_argument("--demo-dir", metavar="DIR", help="where demo data lives (default: a temporary folder)")
    serve.set_defaults(handler=cmd_serve)

    demo = sub.add_parser("demo", help="write a realistic demo activity database and Calibre library")
    _common(demo)
    demo.add_argument("--out", required=True, metavar="DIR", help="folder for cwa.db and the library")
    demo.add_argument("--days", type=int, default=30, help="days of history (default 30)")
    demo.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    demo.set_defaults(handler=cmd_demo)

    check = sub.add_parser("check-config", help="validate the configuration and print it")
    _common(check)
    check.set_defaults(handler=cmd_check_config)

    before = set(sub.choices)
    add_commands(sub)  # report, backfill, prune, anonymize
    for name in set(sub.choices) - before:
        _common(sub.choices[name])
    return parser


def load_config(args) -> config_mod.Config:
    overrides = {key: getattr(args, key, None) for key in CORE_FLAGS}
    return config_mod.load(getattr(args, "config", None), overrides)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.handler is cmd_serve and args.demo:
            args.demo_dir = _prepare_demo(args)
        config = load_config(args)
    except ConfigError as e:
        print(f"activity-exporter: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args, config) or 0
    except ConfigError as e:
        print(f"activity-exporter: {e}", file=sys.stderr)
        return 2


def cmd_check_config(args, config) -> int:
    for key in config_mod.SPEC:
        print(f"{key.name}: {getattr(config, key.name)!r}")
    print("config OK")
    return 0


def cmd_demo(args, config) -> int:
    from exporter import demo

    paths = demo.generate(args.out, days=args.days, seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _prepare_demo(args) -> str:
    """For ``serve --demo``: generate demo data once and point the core flags at it."""
    from exporter import demo

    directory = args.demo_dir or os.path.join(tempfile.gettempdir(), "activity-exporter-demo")
    paths = demo.generate(directory, days=30, seed=42, reuse=True)
    args.activity_db = args.activity_db or paths["activity_db"]
    args.calibre_library = args.calibre_library or paths["calibre_library"]
    return directory


def cmd_serve(args, config) -> int:
    from exporter.refresher import Refresher
    from exporter.web import create_app, serve

    from exporter import webauth

    web_config = webauth.load_web_config(config.web_config)  # raises ConfigError naming web_config
    if config.metrics_auth and not web_config.users:
        raise ConfigError("metrics_auth", "needs basic_auth_users in web_config")
    ssl_adapter = webauth.ssl_adapter(web_config)
    refresher = Refresher(config)
    refresher.start()  # the first refresh runs in the background: a long cold ingest must not delay serving
    live = None
    if getattr(args, "demo", False):
        from exporter import demo

        live = demo.LiveEvents(config.activity_db)
        live.start()
    app = create_app(config, refresher, web_config=web_config)

    def shutdown(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    try:
        serve(app, config, ssl_adapter=ssl_adapter)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
        refresher.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
