"""Entry point of the ``oneformore`` console script. Each verb lives in its own module and adds its
subparser through ``register(subparsers)``; the parser calls ``args.func(args)``."""

from __future__ import annotations

import argparse
import sys

from . import demo, evaluate, info, predict, train

VERBS = [train, evaluate, predict, demo, info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneformore", description="Visual industrial anomaly detection with diffusion models."
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        verb.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
