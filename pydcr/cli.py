"""The ``pydcr`` command (also ``python -m pydcr``)."""

from __future__ import annotations

import argparse
import json
import sys


def _info(args: argparse.Namespace) -> int:
    import pydcr

    info = pydcr.build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(map(len, info))
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(f"sm_{v}" if key == "cuda_archs" else str(v) for v in value) or "-"
        print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pydcr", description="Deep Coupled ResNet for low-resolution faces")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="how pydcr was built and what it runs with")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
