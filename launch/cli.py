"""The ``syncrl`` command (also ``python -m launch``)."""

from __future__ import annotations

import argparse
import sys

from launch.config import ConfigError, dump_config, load_config


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None, help="a YAML recipe path or a name in launch/recipes")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a field, e.g. --set sync.interval=4 (repeatable; the value is YAML)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncrl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", help="inspect configurations")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    _add_recipe_args(config_commands.add_parser("show", help="print the resolved configuration of a recipe"))

    prepare = commands.add_parser("prepare-model", help="build or convert a model into a Hugging Face folder")
    prepare.add_argument("name", choices=["tiny-llama", "tiny-qwen2"])
    prepare.add_argument("out_dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            print(dump_config(load_config(args.recipe, args.overrides)), end="")
        elif args.command == "prepare-model":
            from launch.models import TINY_MODELS, build_tiny_model

            arch, tied = TINY_MODELS[args.name]
            print(build_tiny_model(args.out_dir, arch, tied))
    except ConfigError as err:
        print(f"syncrl: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
