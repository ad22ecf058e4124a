"""The ``workembed`` command line.

Every command that has settings takes ``-c FILE`` (YAML), ``--profile NAME`` and repeated ``--set key=value``;
command-specific flags are shortcuts for ``--set``. Results go to stdout as JSON, progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import Field

from workembed.config import Config, ConfigError, load_config


class EmbedConfig(Config):
    """Settings of ``workembed embed``."""

    model: str = Field("minilm", description="'minilm' (packaged all-MiniLM-L6-v2) or a model directory.")
    max_length: int = Field(256, ge=8, description="Tokens per text; longer texts are truncated.")
    batch_size: int = Field(64, ge=1, description="Texts per forward pass.")
    normalize: bool = Field(True, description="L2-normalise pooled embeddings.")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The config options every configurable command shares."""
    parser.add_argument("-c", "--config", type=Path, help="YAML config file")
    parser.add_argument("--profile", help="named profile inside the config file (e.g. local, gpu)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (dotted key; repeatable)",
    )


def config_from_args(cls: type[Config], args: argparse.Namespace, shortcuts: dict[str, object] | None = None):
    """Load ``cls`` from the shared options; non-None shortcut flags become ``--set`` overrides first."""
    flags = [f"{key}={json.dumps(value)}" for key, value in (shortcuts or {}).items() if value is not None]
    return load_config(cls, args.config, [*flags, *args.overrides], args.profile)


# ------------------------------------------------------------------------------------------- commands


def cmd_esco_stats(args: argparse.Namespace) -> object:
    from workembed.taxonomy import EscoConfig, load_esco_config

    config = config_from_args(
        EscoConfig, args, {"location": args.esco, "translations": args.translations or None}
    )
    return load_esco_config(config).stats()


def cmd_embed(args: argparse.Namespace) -> object:
    from workembed.models import Encoder

    config = config_from_args(EmbedConfig, args, {"model": args.model})
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ConfigError("embed: give TEXT arguments or lines on standard input")
    encoder = Encoder(
        config.model, max_length=config.max_length, batch_size=config.batch_size, normalize=config.normalize
    )
    pooled = encoder.embed(texts)
    results = [
        {"text": text, "embedding": vector.tolist()} for text, vector in zip(texts, pooled, strict=True)
    ]
    if args.tokens:
        for result, tokens in zip(results, encoder.embed_tokens(texts), strict=True):
            result["tokens"] = [
                {"token": tok, "start": start, "end": end, "special": special, "vector": vec.tolist()}
                for tok, (start, end), special, vec in zip(
                    tokens.tokens, tokens.offsets, tokens.special, tokens.vectors, strict=True
                )
            ]
    return {"model": config.model, "dim": encoder.dim, "results": results}


def cmd_run(args: argparse.Namespace) -> object:
    from workembed import stages

    return stages.run(args.stage, args)


def cmd_services(args: argparse.Namespace) -> object:
    from workembed import services

    config = config_from_args(services.ServicesConfig, args)
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    if args.action == "up":
        urls = services.up(config, log=log)
        log(f"environment for clients: source {Path(config.state_dir) / 'env'}")
        return urls
    if args.action == "down":
        return {"stopped": services.down(config, log=log)}
    return services.status(config)


# --------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workembed", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    esco = commands.add_parser("esco", help="inspect the ESCO taxonomy")
    esco_commands = esco.add_subparsers(dest="esco_command", required=True, metavar="ESCO_COMMAND")
    stats = esco_commands.add_parser(
        "stats", help="counts of skills, occupations, relations, hierarchy, labels"
    )
    stats.add_argument("--esco", help="ESCO export (zip/folder, local or s3://) or 'builtin'")
    stats.add_argument(
        "--translations", nargs="*", help="language-specific exports to attach (e.g. v1.1.1-fr)"
    )
    add_config_args(stats)
    stats.set_defaults(handler=cmd_esco_stats)

    embed = commands.add_parser("embed", help="embed texts with an encoder (JSON out)")
    embed.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed (default: lines of stdin)")
    embed.add_argument("--model", help="'minilm' or a model directory")
    embed.add_argument("--tokens", action="store_true", help="also return token-level embeddings")
    add_config_args(embed)
    embed.set_defaults(handler=cmd_embed)

    from workembed.stages import STAGES

    run = commands.add_parser("run", help="run a pipeline stage: " + ", ".join(STAGES))
    run.add_argument(
        "stage", choices=sorted(STAGES), help="; ".join(f"{s.name}: {s.help}" for s in STAGES.values())
    )
    add_config_args(run)
    run.set_defaults(handler=cmd_run)

    svc = commands.add_parser("services", help="local Ray head, MLflow server and S3 server on 127.0.0.1")
    svc.add_argument("action", choices=["up", "down", "status"])
    add_config_args(svc)
    svc.set_defaults(handler=cmd_services)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], object] = args.handler
    try:
        result = handler(args)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"workembed: error: {err}", file=sys.stderr)
        return 2
    try:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
