"""The ``twotower`` / ``two-tower`` command: parse flags, call the API, render with rich.

Run settings are the fields of ``TwoTowerConfig``: each is a ``--field-name``
flag and a key of ``--config FILE.toml`` (flags win). Choices of plugin-backed
settings are read from the registries. Every command that takes settings
validates all of them (``validation.py``) before it reads anything else.
SIGTERM stops a command as Ctrl-C does, cleaning up alike (exit 143, 130).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import errno
import json
import logging
import os
import signal
import sys
import threading
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from . import __version__, plugins, progress
from .config import TwoTowerConfig, read_toml
from .errors import TwoTowerError, TwoTowerWarning
from .progress import output_console
from .validation import REGISTRY_OF, check_settings, default_dataset, validate

console = output_console()
errors = progress.console  # one console on stderr for errors, notes and progress

# what `evaluate` may re-point in the saved config: where the data is, and the masking
EVALUATE_OVERRIDES = ("data_dir", "interactions", "items", "mask_seen")
EVALUATE_FIELDS = ("artifacts_dir", *EVALUATE_OVERRIDES)
RECOMMEND_FIELDS = ("artifacts_dir", "data_dir", "retriever")
EXPORT_FIELDS = ("artifacts_dir", "data_dir")


# --- flags from the config dataclass -----------------------------------------


def field_type(annotation: Any) -> type:
    """``int | None`` -> ``int``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, booleans), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def registry_choices(kind: str) -> list[str]:
    """The names a flag accepts: a name two plugins claim too, so that choosing it fails
    with the line naming both (``Registry.get``) rather than as an unknown choice."""
    registry = plugins.registry(kind)
    return [*registry.names(), *registry.clashes]


def quantization_choices() -> list[str]:
    """The schemes some format offers for ``export --quantize``."""
    from .export.bundle import offered_quantizations

    offered = offered_quantizations()
    return sorted({scheme for schemes in offered.values() for scheme in schemes})


def flag(name: str) -> str:
    """The command-line flag of setting ``name``: ``artifacts_dir`` is ``--artifacts-dir``."""
    return "--" + name.replace("_", "-")


def add_config_flags(
    parser: argparse.ArgumentParser,
    only: Sequence[str] | None = None,
    saved: Sequence[str] = (),
    said: Mapping[str, str] | None = None,
    checked: str = "every key is checked",
) -> None:
    """One flag per setting of ``TwoTowerConfig`` (or of ``only``), with its default in the help.

    ``saved`` names the settings a command over fitted artifacts takes from
    the fit when the flag is not given: their help says so, not the default.
    ``said`` gives the default's words for a setting whose default is neither.
    ``checked`` says how much of a ``--config`` file the command checks.
    """
    hints = typing.get_type_hints(TwoTowerConfig)
    defaults = TwoTowerConfig()
    group = parser.add_argument_group("run settings (also keys of --config FILE.toml)")
    for field in dataclasses.fields(TwoTowerConfig):
        if only is not None and field.name not in only:
            continue
        help_text = field.metadata.get("help", "")
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS}
        flags = [flag(field.name)]
        if field.name == "extra":
            flags = ["--set"]
            kwargs.update(action="append", type=parse_assignment, metavar="KEY=VALUE")
        elif field_type(hints[field.name]) is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            if field.name == "download":
                flags.append("--download-movielens")  # the original README's spelling
        else:
            kwargs["type"] = field_type(hints[field.name])
            kwargs["metavar"] = field.name.upper()
            if field.name in REGISTRY_OF and getattr(parser, "reads_registries", True):
                names = registry_choices(REGISTRY_OF[field.name])
                kwargs["choices"] = names
                kwargs["metavar"] = "{" + ",".join(names) + "}"
        default = "the fit's own" if field.name in saved else getattr(defaults, field.name)
        default = (said or {}).get(field.name, default)
        if field.name != "extra" and "(default:" not in help_text:
            help_text += f" (default: {default})"
        group.add_argument(*flags, help=help_text, **kwargs)
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help=f"read run settings from TOML ({checked}; this command uses its own)",
    )


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave: ``--config FILE.toml`` (checked, naming the file), then flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(check_settings(read_toml(args.config), where=f"{args.config}: "))
    names = {f.name for f in dataclasses.fields(TwoTowerConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if "extra" in given:
        given["extra"] = {**values.get("extra", {}), **dict(given["extra"])}
    values.update(given)
    return values


def resolve_config(args: argparse.Namespace) -> TwoTowerConfig:
    """Defaults, then ``--config FILE.toml``, then flags; every setting validated.

    A run that names no dataset but gives a setting only one dataset reads
    (``--interactions FILE``) means that dataset.
    """
    values = given_settings(args)
    if "dataset" not in values and (dataset := default_dataset(values)):
        values["dataset"] = dataset
    # a --config file was checked as it was read, naming it: what fails here is a flag's
    # value, named by its setting alone as validate() names a bad combination
    config = TwoTowerConfig.from_dict(values, source=None)
    if not getattr(args, "config", None):
        return validate(config)
    try:
        return validate(config)
    except TwoTowerError as exc:  # settings that combine badly may come from the file
        raise TwoTowerError(f"{exc} (settings from {args.config} and the flags)") from None


# --- rendering -----------------------------------------------------------------


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def print_config(config: TwoTowerConfig) -> None:
    table = Table(title="resolved config", show_header=False, box=None, pad_edge=False)
    values = {**config.to_dict(), "artifacts_dir": config.resolved_artifacts_dir}
    cells = [f"[dim]{k}[/dim]={v}" for k, v in values.items()]
    for _ in range(3):
        table.add_column()
    for row in range(0, len(cells), 3):
        table.add_row(*cells[row : row + 3])
    errors.print(table)


def metrics_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title, min_width=len(title))  # a long title on one line
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = [k for k in next(iter(columns.values())) if "@" in k]
    for key in keys:
        table.add_row(key, *(f"{column.get(key, float('nan')):.4f}" for column in columns.values()))
    return table


def recommendations_table(title: str, items: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for name, justify in (("rank", "right"), ("item id", "left"), ("title", "left")):
        table.add_column(name, justify=justify)
    table.add_column("genres")
    table.add_column("score", justify="right")
    for item in items:
        genres = ", ".join(item.get("genres", []))
        row = (str(item["rank"]), item["item_id"], item["title"], genres, f"{item['score']:.4f}")
        table.add_row(*row)
    return table


# --- commands ------------------------------------------------------------------


def cmd_fit(args: argparse.Namespace) -> None:
    from .api import fit, load
    from .distributed import is_main_process

    config = resolve_config(args)
    printing = is_main_process()  # under torchrun, rank 0 alone prints (and writes)
    if not args.json and printing:
        print_config(config)
    result = fit(config, progress=not args.json and not args.no_progress)
    if not printing:
        return
    recommender = load(result.artifacts_dir)
    sample_user = recommender.user_ids[0]
    sample = [r.to_dict() for r in recommender.recommend(sample_user, k=10)]
    if args.json:
        print_json(
            {
                "artifacts_dir": str(result.artifacts_dir),
                "best_epoch": result.best_epoch,
                "seconds": round(result.seconds, 1),
                "valid": result.valid,
                "test": result.test,
                "popularity": result.popularity,
                "sample": {"user_id": sample_user, "items": sample},
            }
        )
        return
    columns = {
        "model valid": result.valid,
        "model test": result.test,
        "popularity test": result.popularity["test"],
    }
    title = (
        f"{config.user_encoder} + {config.loss}: best epoch {result.best_epoch}, "
        f"{result.seconds:.0f} s, {result.test['num_users']} users, "
        f"{result.test['num_items']} items, seen {'masked' if config.mask_seen else 'kept'}"
    )
    console.print(metrics_table(title, columns))
    console.print(recommendations_table(f"sample: top 10 for user {sample_user}", sample))
    console.print(f"artifacts: {result.artifacts_dir}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .api import evaluate

    folder = resolve_config(args).resolved_artifacts_dir
    given = given_settings(args)
    metrics = evaluate(folder, **{k: given[k] for k in EVALUATE_OVERRIDES if k in given})
    if args.json:
        print_json(metrics)
        return
    title = (
        f"test, {metrics['num_users']} users, {metrics['num_items']} items, "
        f"seen {'masked' if metrics['mask_seen'] else 'kept'}"
    )
    columns = {"model": metrics["model"], "popularity": metrics["popularity"]}
    console.print(metrics_table(title, columns))


def cmd_recommend(args: argparse.Namespace) -> None:
    config = resolve_config(args)
    retriever = given_settings(args).get("retriever")  # else the fit's own setting
    if args.bundle:
        from .serving import load_bundle

        also = [flag(name) for name in ("artifacts_dir", "data_dir") if name in vars(args)]
        if also:
            raise TwoTowerError(
                f"--bundle and {' and '.join(also)} both say which model to ask: give one"
            )
        recommender = load_bundle(args.bundle, retriever)
    else:
        from .api import load

        recommender = load(config.resolved_artifacts_dir, retriever)
    items = recommender.recommend(str(args.user_id), k=args.k, exclude_seen=args.exclude_seen)
    output = {"user_id": str(args.user_id), "items": [item.to_dict() for item in items]}
    if args.json:
        print_json(output)
    else:
        console.print(
            recommendations_table(f"top {len(items)} for user {args.user_id}", output["items"])
        )


def cmd_export(args: argparse.Namespace) -> None:
    from .export.bundle import export_bundle

    folder, manifest = export_bundle(
        resolve_config(args).resolved_artifacts_dir,
        out_dir=args.out,
        format=args.format,
        quantize=args.quantize,
    )
    parity = manifest["parity"]
    if args.json:
        described = {"bundle": str(folder), "format": args.format, "quantization": args.quantize}
        print_json({**described, "parity": parity})
        return
    table = Table(title=f"parity of the {args.format} bundle against PyTorch")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_row("histories checked", str(parity["histories_checked"]))
    table.add_row("history lengths", "{} to {}".format(*parity["history_lengths"]))
    for tower, diff in parity["max_abs_diff"].items():
        table.add_row(f"max abs diff, {tower.replace('_', ' ')}", f"{diff:.2e}")
    table.add_row("top-10 lists the same, in order", f"{parity['top10_agreement']:.2%}")
    table.add_row("top-10 items shared (overlap@10)", f"{parity['top10_overlap']:.2%}")
    table.add_row("cold user finite", str(parity["cold_user_finite"]))
    recall = parity["test_recall@10"]
    table.add_row(
        "test recall@10 torch / bundle", f"{recall['torch']:.4f} / {recall['bundle']:.4f}"
    )
    console.print(table)
    console.print(f"bundle: {folder}")


def cmd_serve(args: argparse.Namespace) -> None:
    # only the retriever setting is read (checked by loading the bundle): validating every
    # setting would load every registry, and with the encoders torch
    retriever = given_settings(args).get("retriever")  # else the fit's own setting
    try:
        from . import server
    except ImportError as exc:
        raise TwoTowerError(
            f"twotower serve needs the serve extra ({exc.name} is not installed): "
            "pip install 'twotower[serve]'"
        ) from None
    try:
        server.serve(
            args.bundle, args.host, args.port, args.workers, retriever, args.threads, args.json
        )
    except Terminated:  # raised again by uvicorn once it has drained: stopped as asked
        return


def port_number(text: str) -> int:
    """A TCP port: 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def png_file(text: str) -> Path:
    """A plot's file name: the plot is drawn as PNG, so it must say so."""
    if Path(text).suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"expected a file name ending in .png, got {text!r}")
    return Path(text)


def positive_int(text: str) -> int:
    """A count (repeats, threads, sizes): an integer of at least 1."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    try:
        values = [positive_int(part) for part in text.split(",") if part]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        )
    return values


def text_list(text: str) -> list[str]:
    """Comma-separated names, at least one, none twice (its runs would be pooled or
    repeated under one name)."""
    names = [part for part in text.split(",") if part]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{', '.join(twice)} given twice in {text!r}")
    return names


def name_list(kind: str) -> Callable[[str], list[str]]:
    """Names of registered components: an unknown one is a malformed command line (exit 2),
    as an unknown ``--user-encoder`` is."""

    def parse(text: str) -> list[str]:
        names = text_list(text)
        for name in names:
            try:
                plugins.registry(kind).get(name)
            except TwoTowerError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
        return names

    return parse


def seed(text: str) -> int:
    """A seed: an integer from 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a seed (an integer from 0), got {text!r}")
    return value


def seed_list(text: str) -> list[int]:
    """Comma-separated seeds: integers from 0, each once."""
    try:
        values = [seed(part) for part in text_list(text)]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated seeds from 0, each once, got {text!r}"
        )
    return values


TEMPORARY_ARTIFACTS = "every fit writes into a temporary folder, removed after its row"


def refuse_suite_settings(args: argparse.Namespace, names: Sequence[str], why: str) -> None:
    """A suite that sets ``names`` itself refuses them given (by flag or TOML): they would
    be recorded as the run's settings, but not used."""
    given = [flag(name) for name in names if name in given_settings(args)]
    if given:
        raise TwoTowerError(
            f"bench {args.suite} sets {', '.join(given)} itself ({why}): leave "
            f"{'it' if len(given) == 1 else 'them'} out"
        )


def result_files(args: argparse.Namespace) -> list[Path]:
    """The files a suite writes its results to, as given."""
    paths = (args.json_file, args.markdown_file, getattr(args, "plot", None))
    return [path for path in paths if path]


def check_result_files(args: argparse.Namespace) -> None:
    """Refuse result files that cannot be written now, not after the suite has run, and
    two results given one file (the last written would be all that is left)."""
    from .bench import report

    seen: dict[str, Path] = {}
    for path in result_files(args):
        report.check_writable(path)
        same = seen.setdefault(os.path.realpath(path), path)
        if same is not path:
            raise TwoTowerError(f"{same} and {path} are one file: give each result its own")


def write_results(args: argparse.Namespace, result: dict) -> None:
    """A suite's ``--json-file`` and ``--markdown-file``, each with the command that ran.

    A failure (the disk filled up, a folder appeared) is one error naming the file.
    """
    from .bench import report

    result["command"] = " ".join(["twotower", *sys.argv[1:]])
    if args.json_file:
        report.write_json(result, args.json_file)
    if args.markdown_file:
        report.write_markdown(result, args.suite, args.markdown_file)


def run_suite(args: argparse.Namespace, measure: Callable[[Callable[[str], None]], dict]) -> dict:
    """Run one bench suite under a spinner, then write, show and return what it measured."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    check_result_files(args)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=errors, transient=True) as progress:
        task = progress.add_task(f"bench {args.suite}")

        def notify(message: str) -> None:
            progress.update(task, description=f"bench {args.suite}: {message}")

        result = measure(notify)
    write_results(args, result)
    if args.json:
        print_json(result)
    else:
        console.print(report_table(args.suite, result))
    return result


def cmd_bench_serving(args: argparse.Namespace) -> None:
    from .bench import serving

    folder = resolve_config(args).resolved_artifacts_dir
    run_suite(
        args,
        lambda notify: serving.run(folder, args.exports_dir, args.repeats, args.threads, notify),
    )


def cmd_bench_scale(args: argparse.Namespace) -> None:
    from .bench import scale

    if min(args.sizes) <= scale.K:
        raise TwoTowerError(
            f"--sizes {min(args.sizes)}: a catalog must hold more than the {scale.K} items "
            "each query asks for, or every answer finds every item"
        )

    def measure(notify: Callable[[str], None]) -> dict:
        return scale.run(args.sizes, args.queries, args.repeats, args.threads, notify=notify)

    result = run_suite(args, measure)
    if args.plot:
        try:
            scale.plot(result, args.plot)
        except OSError as exc:
            raise TwoTowerError(f"cannot write {args.plot} ({exc.strerror or exc})") from None


def cmd_bench_train(args: argparse.Namespace) -> None:
    from .bench import train

    refuse_suite_settings(
        args, ("user_encoder", "loss", "seed"), "--encoders, --losses and --seeds name its runs"
    )
    refuse_suite_settings(args, ("artifacts_dir",), TEMPORARY_ARTIFACTS)
    config = resolve_config(args)
    encoders = args.encoders or plugins.user_encoders().names()
    losses = args.losses or plugins.losses().names()
    contenders = train.grid(config, encoders, losses)
    save = partial(write_results, args)  # after every fit: a stopped run keeps its results
    run_suite(args, lambda notify: train.run(contenders, args.seeds, notify, save))


def cmd_bench_accuracy(args: argparse.Namespace) -> None:
    from .bench import train

    refuse_suite_settings(args, ("seed",), "--seeds gives every run its seed")
    refuse_suite_settings(args, ("artifacts_dir",), TEMPORARY_ARTIFACTS)
    config = resolve_config(args)
    contenders = train.distinct_names([train.contender(spec, config) for spec in args.contenders])
    save = partial(write_results, args)  # after every fit: a stopped run keeps its results
    run_suite(args, lambda notify: train.run(contenders, args.seeds, notify, save))


def cmd_bench_scale_train(args: argparse.Namespace) -> None:
    from .bench import scale_train

    refuse_suite_settings(args, scale_train.SETS, "it trains --steps steps on its workloads")
    refuse_suite_settings(args, ("retriever",), "its index stage builds HNSW")
    config = resolve_config(args)
    config = config.replace(num_threads=config.num_threads or 1)  # per rank, recorded
    run_suite(
        args,
        lambda notify: scale_train.run(
            args.workloads, args.steps, args.ranks, config, args.workload_seed, notify
        ),
    )


def cmd_bench_serve(args: argparse.Namespace) -> None:
    from .bench import serve

    def measure(notify: Callable[[str], None]) -> dict:
        return serve.run(
            args.bundle, args.requests, args.concurrency, args.workers, args.retrievers, notify
        )

    run_suite(args, measure)


def report_table(suite: str, result: dict[str, Any]) -> Table:
    from .bench import report

    columns, rows = report.SUITES[suite](result)
    table = Table(title=f"bench {suite}")
    for header, _ in columns:
        table.add_column(header, justify="left" if header in report.TEXT_COLUMNS else "right")
    for row in rows:
        table.add_row(*(cell(row) for _, cell in columns))
    return table


def cmd_plugins(args: argparse.Namespace) -> None:
    infos, problems = plugins.plugin_table()
    shown = [info for info in infos if args.all or not info.builtin]
    if args.json:
        failed = [f"plugin {info.name!r} failed: {info.error}" for info in infos if info.error]
        listed = [dataclasses.asdict(info) for info in shown]
        print_json({"plugins": listed, "problems": failed + problems})
        return
    table = Table(title="twotower plugins")
    table.add_column("plugin (package version)", no_wrap=True)
    for column in ("registers", "status"):
        table.add_column(column)
    for info in shown:
        registers = "\n".join(
            f"{kind.replace('_', ' ')}: {escape(', '.join(names))}"
            for kind, names in info.registered.items()
            if names
        )
        status = f"[red]failed: {escape(info.error)}[/red]" if info.error else "ok"
        package = f"{escape(info.distribution or '-')} {escape(info.version)}"
        table.add_row(f"{escape(info.name)}\n[dim]{package}[/dim]", registers or "-", status)
    console.print(table)
    if not args.all:
        console.print("[dim]built-in plugins hidden; --all shows them[/dim]")
    for problem in problems:
        errors.print(f"[red]problem:[/red] {escape(problem)}", highlight=False)


# --- the parser ----------------------------------------------------------------


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line. With ``argv``, only the command it runs reads the plugin
    registries for its flags' choices: loading the encoders and losses imports torch, which
    ``serve`` never needs."""
    invoked = next((arg for arg in argv if not arg.startswith("-")), None) if argv else None
    parser = argparse.ArgumentParser(
        prog="twotower",
        description="Two-tower retrieval recommenders: fit, evaluate, recommend.",
    )
    parser.add_argument("--version", action="version", version=f"twotower {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable, help_text: str, aliases=()) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, aliases=aliases)
        sub.set_defaults(run=run, parser=sub)
        sub.reads_registries = invoked in (None, name, *aliases)
        return sub

    fit = command("fit", cmd_fit, "train a model, evaluate it, write its artifacts", ["train"])
    fit.epilog = (
        "Data-parallel: `torchrun --nproc-per-node N -m twotower fit ...` trains on N ranks "
        "(gloo on CPU, nccl with --device cuda); N ranks of batch B train as one process "
        "of batch N x B, and rank 0 writes the artifacts."
    )
    add_config_flags(fit)
    fit.add_argument("--json", action="store_true", help="print the results as JSON only")
    fit.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    evaluate = command("evaluate", cmd_evaluate, "re-evaluate saved artifacts on the test split")
    add_config_flags(
        evaluate,
        EVALUATE_FIELDS,
        saved=EVALUATE_OVERRIDES[1:],
        said={"data_dir": f"{TwoTowerConfig().data_dir} for the artifacts, the fit's own data"},
    )
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")

    recommend = command("recommend", cmd_recommend, "top-K items for a user")
    add_config_flags(recommend, RECOMMEND_FIELDS, saved=("retriever",))
    recommend.add_argument("--user-id", required=True, help="raw user id, as in the data")
    recommend.add_argument("--k", type=int, default=10, help="how many items (default: 10)")
    recommend.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave out items the user already has (default: on)",
    )
    recommend.add_argument("--json", action="store_true", help="print JSON")
    recommend.add_argument(
        "--bundle",
        type=Path,
        help="ask an exported bundle (no PyTorch) instead of the artifacts; a --config "
        "file's artifacts_dir and data_dir then go unread",
    )

    export = command("export", cmd_export, "export both towers into a serving bundle")
    add_config_flags(export, EXPORT_FIELDS)
    export.add_argument(
        "--format",
        default="onnx",
        choices=registry_choices("formats") if export.reads_registries else None,
        help="export format plugin (default: onnx)",
    )
    export.add_argument("--out", type=Path, help="bundle folder (default: exports/<name>/)")
    export.add_argument(
        "--quantize",
        choices=quantization_choices() if export.reads_registries else None,
        help="quantize the exported towers, for the formats that offer it (onnx: int8 "
        "scales activations per call, fastest; int8-static fixes their scales at export, "
        "so a user's vector is the same in any batch)",
    )
    export.add_argument("--json", action="store_true", help="print the parity report as JSON")

    serve = command("serve", cmd_serve, "answer recommendations over HTTP from a bundle")
    checked = "the type of every run setting is checked"
    add_config_flags(serve, ("retriever",), saved=("retriever",), checked=checked)
    serve.add_argument("--bundle", type=Path, required=True, help="the exported bundle to serve")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument("--port", type=port_number, default=8000, help="TCP port (default: 8000)")
    serve.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="server processes, each with its own copy of the bundle (default: 1)",
    )
    serve.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="user-tower threads per process (default: 1)",
    )
    serve.add_argument(
        "--json", action="store_true", help="print where it listens as one JSON line, once ready"
    )
    serve.epilog = (
        "Endpoints: exports/README.md, and /docs on the running server. POST /admin/reload "
        "or SIGHUP reloads the bundle folder; reloading needs loopback, or the token in "
        "$TWOTOWER_ADMIN_TOKEN when that is set at start."
    )

    bench = command(
        "bench", None, "benchmark suites: serving, scale, train, accuracy, scale-train, serve"
    )
    suites = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")

    def suite(name: str, run: Callable, help_text: str) -> argparse.ArgumentParser:
        sub = suites.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run, parser=sub)
        sub.reads_registries = bench.reads_registries
        sub.add_argument("--json", action="store_true", help="print the results as JSON")
        sub.add_argument("--json-file", type=Path, metavar="FILE", help="write them as JSON")
        sub.add_argument("--markdown-file", type=Path, metavar="FILE", help="write a Markdown file")
        return sub

    serving = suite(
        "serving", cmd_bench_serving, "every tower runtime x every retriever on the test users"
    )
    add_config_flags(serving, EXPORT_FIELDS)
    serving.add_argument(
        "--exports-dir",
        type=Path,
        default=Path("exports"),
        help="folder of the bench-<runtime> bundles it exports, reused while they are from "
        "these weights and library versions (default: exports)",
    )
    serving.add_argument(
        "--repeats",
        type=positive_int,
        default=200,
        help="timed repetitions per contender (default: 200)",
    )
    serving.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="threads for torch, BLAS, onnxruntime (default: 1)",
    )

    scale = suite("scale", cmd_bench_scale, "exact vs HNSW search on synthetic catalogs")
    scale.add_argument(
        "--sizes",
        type=int_list,
        default=[10_000, 100_000],
        help="catalog sizes (default: 10000,100000; add 1000000 for the full run)",
    )
    scale.add_argument(
        "--queries", type=positive_int, default=1000, help="queries per size (default: 1000)"
    )
    scale.add_argument(
        "--repeats",
        type=positive_int,
        default=200,
        help="timed repetitions per contender (default: 200)",
    )
    scale.add_argument(
        "--threads", type=positive_int, default=1, help="threads for the search (default: 1)"
    )
    scale.add_argument("--plot", type=png_file, metavar="FILE.png", help="recall vs queries/s PNG")

    training = suite("train", cmd_bench_train, "every user encoder x every loss, over seeds")
    add_config_flags(training)
    training.add_argument(
        "--encoders", type=name_list("user_encoders"), help="user encoders (default: all)"
    )
    training.add_argument("--losses", type=name_list("losses"), help="losses (default: all)")
    training.add_argument(
        "--seeds", type=seed_list, default=[0, 1, 2], help="seeds (default: 0,1,2)"
    )

    accuracy = suite("accuracy", cmd_bench_accuracy, "named configurations over seeds")
    add_config_flags(accuracy)
    accuracy.add_argument(
        "--contenders",
        type=text_list,
        default=["default"],
        metavar="LIST",
        help="comma-separated: default, FILE.toml, or key=value[+key=value] over the defaults",
    )
    accuracy.add_argument(
        "--seeds", type=seed_list, default=[0, 1, 2], help="seeds (default: 0,1,2)"
    )

    scale_train = suite(
        "scale-train",
        cmd_bench_scale_train,
        "a fit's stages (seconds, peak memory) on ML-1M/10M/25M-shaped synthetic data; "
        "training examples/s on 1 and more ranks",
    )
    add_config_flags(scale_train)
    scale_train.add_argument(
        "--workloads",
        type=text_list,
        default=["ml-1m", "ml-10m"],
        metavar="LIST",
        help="workload shapes: ml-1m, ml-10m, ml-25m (default: ml-1m,ml-10m)",
    )
    scale_train.add_argument(
        "--steps", type=positive_int, default=100, help="timed training steps (default: 100)"
    )
    scale_train.add_argument(
        "--ranks", type=int_list, default=[1, 2], help="ranks to train on (default: 1,2)"
    )
    scale_train.add_argument(
        "--workload-seed", type=seed, default=0, help="seed of the synthetic data (default: 0)"
    )

    served = suite(
        "serve", cmd_bench_serve, "`twotower serve` under HTTP load vs in-process recommend"
    )
    served.add_argument("--bundle", type=Path, required=True, help="the exported bundle to serve")
    served.add_argument(
        "--requests",
        type=positive_int,
        default=3000,
        help="timed requests per concurrency (default: 3000)",
    )
    served.add_argument(
        "--concurrency", type=int_list, default=[1, 8, 32], help="clients (default: 1,8,32)"
    )
    served.add_argument(
        "--workers", type=int_list, default=[1], help="server processes to try (default: 1)"
    )
    served.add_argument(
        "--retrievers",
        type=name_list("retrievers"),
        help="retrievers to serve with (default: the bundle's)",
    )

    listing = command("plugins", cmd_plugins, "list plugins and what each registers")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--all", action="store_true", help="include the built-in plugins")
    return parser


def refuse_unknown(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> None:
    """The command's own usage and error (exit 2) for flags it lacks, with the flags
    spelled closest to each."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    close = {
        match
        for arg in unknown
        if arg.startswith("-")
        for match in difflib.get_close_matches(arg.split("=")[0], flags, n=2)
    }
    hint = f" (did you mean {' or '.join(sorted(close))}?)" if close else ""
    parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, ``docker stop``, torchrun stopping its ranks).

    A KeyboardInterrupt, so that whatever cleans up after Ctrl-C (staging
    folders, locks, the progress display) cleans up after SIGTERM too.
    """


# the stopping signals that arrived during the command: one that lands inside a library
# (torch half way through an import) can surface as that library's own error instead
received: set[int] = set()


def on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    """Raise ``Terminated`` where the program is; a second SIGTERM ends it at once."""
    received.add(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated


def on_sigint(signum: int, frame: types.FrameType | None) -> None:
    received.add(signal.SIGINT)
    raise KeyboardInterrupt


@contextlib.contextmanager
def stopping_signals() -> Iterator[None]:
    """During the block SIGTERM raises ``Terminated``, Ctrl-C ``KeyboardInterrupt``, and
    each is noted in ``received``; then the previous handlers are back.

    Only the main thread may set handlers; the tests call ``main`` in-process.
    ``serve`` still stops as uvicorn does: it takes SIGTERM while it serves,
    drains, and raises it again, into this handler, once it has shut down;
    ``cmd_serve`` then ends normally (exit 0, as with several workers).
    """
    received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, handler)  # None: one set outside Python
        for signum, handler in ((signal.SIGTERM, on_sigterm), (signal.SIGINT, on_sigint))
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """During the block a ``TwoTowerWarning`` prints as ``warning: ...``, one line like
    ``error:``; other warnings keep Python's format, with their source. Formatting, not
    showing, is replaced: a test's ``pytest.warns`` still records them."""
    python_format = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None) -> str:
        if issubclass(category, TwoTowerWarning):
            return f"warning: {' '.join(str(message).split())}\n"
        return python_format(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = python_format


def main(argv: Sequence[str] | None = None) -> int:
    log = logging.getLogger("twotower")
    if not log.handlers:
        log.addHandler(RichHandler(console=errors, show_time=False, show_path=False))
        log.setLevel(logging.INFO)
        log.propagate = False
    try:
        argv = sys.argv[1:] if argv is None else argv
        with one_line_warnings(), stopping_signals():
            args, unknown = build_parser(argv).parse_known_args(argv)
            if unknown:
                refuse_unknown(args.parser, unknown)
            args.run(args)
    except TwoTowerError as exc:
        return stopped() or print_error(str(exc))
    except KeyboardInterrupt as exc:  # Terminated too
        received.add(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
        return stopped()
    except BrokenPipeError:  # the reader went away (`twotower ... --json | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise
        return 0
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        # Path.exists() and friends raise it rather than answer: any path a user gives
        name = str(exc.filename)
        shown = name if len(name) <= 120 else f"{name[:60]}...{name[-57:]}"
        return print_error(f"a file name is too long: {shown}")
    return 0


def stopped() -> int:
    """Say which signal stopped the command and return its exit code; 0 when none did."""
    if signal.SIGTERM in received:
        errors.print("terminated")
        return 128 + signal.SIGTERM
    if signal.SIGINT in received:
        errors.print("interrupted")
        return 130
    return 0


def print_error(message: str) -> int:
    """Print ``error: message`` (text, not markup: "[a, b]" prints as written); exit code 1."""
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
