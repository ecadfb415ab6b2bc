"""The ``monolith`` command: train, evaluate, predict, dump or export a model given as ``module:Class``.

Usage::

    monolith train    --model my_models:CtrModel --model-dir /tmp/ctr --max-steps 1000 \\
                      --param train.per_replica_batch_size=256 --param dense_weight_decay=1e-5
    monolith evaluate --model my_models:CtrModel --model-dir /tmp/ctr
    monolith predict  --model my_models:CtrModel --model-dir /tmp/ctr --output-path /tmp/ctr/predictions
    monolith dump     --model my_models:CtrModel --model-dir /tmp/ctr          # -> /tmp/ctr/model_dump.json
    monolith export   --model my_models:CtrModel --model-dir /tmp/ctr          # -> /tmp/ctr/exported_models/<step>
    monolith serve    --export-dir /tmp/ctr/exported_models --port 8500
    torchrun --nproc_per_node=2 -m monolith train --model my_models:CtrModel --model-dir /tmp/ctr

``python -m monolith ...`` is the same command. The model is built as ``Class.params()`` with the
``--config`` overrides, then the ``--param`` ones, then ``instantiate()``. ``module`` is an importable
module (the current directory is searched first) or a ``.py`` file. Each command prints one JSON
line of results on stdout (under torchrun: rank 0 only, except ``predict``, which every rank runs on
its own data); the Estimator's progress goes to stderr. A ``model_dir`` holding checkpoints is
resumed from its latest one; a finished one (its input read to the end) is left as it is, unless
``--max-steps`` (higher), ``--steps`` or ``--epochs`` ask for more. SIGTERM or SIGINT stop ``train``
after the current step with a checkpoint (and exit status 0); a second signal stops it at once.

torch and the rest of the package are imported once the arguments are read, by the command that
needs them: ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import importlib
import importlib.util
import inspect
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from monolith.params import InstantiableParams, Params

if TYPE_CHECKING:
    from monolith.estimator import Estimator
    from monolith.model import MonolithBaseModel
    from monolith.run_config import RunConfig

__all__ = ["CliError", "apply_overrides", "build_params", "load_model_class", "main", "parse_value"]


class CliError(Exception):
    """A mistake in the command line; printed as ``monolith: error: ...`` with exit status 2."""


# ---------------------------------------------------------------------------------------- the model
def load_model_class(spec: str) -> type[MonolithBaseModel]:
    """The class named by ``module:Class`` (``Class`` may be dotted; ``module`` may be a ``.py`` file)."""
    from monolith.model import MonolithBaseModel

    module_name, sep, class_name = spec.rpartition(":")
    if not sep or not module_name or not class_name:
        raise CliError(f"--model must be module:Class (e.g. my_models:CtrModel), got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        module = _module_from_file(module_name)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # Only a missing module of the path itself is the user's typo; a missing import inside it is not.
            if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
                raise
            raise CliError(f"--model {spec}: cannot import module '{module_name}' ({e}); "
                           f"sys.path starts with {sys.path[:3]}") from None
    try:
        cls: Any = functools.reduce(getattr, class_name.split("."), module)
    except AttributeError:
        raise CliError(f"--model {spec}: module '{module_name}' has no attribute '{class_name}'") from None
    if not (isinstance(cls, type) and issubclass(cls, MonolithBaseModel)):
        what = f"class {cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else type(cls).__name__
        raise CliError(f"--model {spec}: not a MonolithBaseModel subclass (it is a {what}); "
                       f"subclass monolith.model.MonolithModel")
    if inspect.isabstract(cls):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        raise CliError(f"--model {spec}: {class_name} is abstract; it must define {', '.join(missing)}")
    return cls


def _module_from_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise CliError(f"--model: no such file '{path}'")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so the model class pickles and dumps by name
    spec.loader.exec_module(module)
    return module


def parse_value(text: str) -> Any:
    """A Python literal (``256``, ``1e-3``, ``[64, 32]``, ``None``, ``'x'``), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def apply_overrides(p: Params, overrides: Mapping[str, Any], source: str) -> None:
    """Sets each dotted ``name`` of ``overrides`` on ``p``; a dict value for a group sets inside it.

    A value must be of the type of the param's default (a number for a float, any list for a list or
    tuple); a param whose default is None or an object takes any value.
    """
    for name, value in overrides.items():
        if name == "cls" or name.endswith(".cls"):
            raise CliError(f"{source} {name}: the model class is given with --model")
        try:
            current = p.get(name)
        except AttributeError as e:
            raise CliError(f"{source} {name}: {e} (model params: {_param_names(p)})") from None
        if isinstance(current, Params) and isinstance(value, Mapping):
            apply_overrides(p, {f"{name}.{k}": v for k, v in value.items()}, source)
        elif isinstance(current, Params):
            raise CliError(f"{source} {name}: '{name}' is a group of params; set one of its names, "
                           f"e.g. {name}.{next(iter(dict(current.iter_params())), 'name')}")
        else:
            p.set(**{name: _of_type(current, value, f"{source} {name}")})


def _of_type(current: Any, value: Any, what: str) -> Any:
    """``value`` as a value of ``current``'s type (an integral float for an int, an int for a float,
    a list for a tuple); a one-line CliError naming ``what`` when it is none."""
    if value is None or current is None:
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(current, bool):
        expected, ok = "a bool (True or False)", isinstance(value, bool)
    elif isinstance(current, int):
        expected, ok = "an int", number and float(value).is_integer()
        value = int(value) if ok else value
    elif isinstance(current, float):
        expected, ok = "a number", number
        value = float(value) if ok else value
    elif isinstance(current, str):
        expected, ok = "a string", isinstance(value, str)
    elif isinstance(current, (list, tuple)):
        expected, ok = "a list", isinstance(value, (list, tuple))
        value = type(current)(value) if ok else value
    elif isinstance(current, Mapping):
        expected, ok = "a dict", isinstance(value, Mapping)
    else:
        return value  # an object (optimizer, function, ...): the model checks what it is given
    if not ok:
        raise CliError(f"{what}: expected {expected}, got {value!r} ({type(value).__name__})")
    return value


def _param_names(p: Params, prefix: str = "") -> str:
    names = []
    for name, value in p.iter_params():
        if name == "cls":
            continue
        names.append(f"{prefix}{name}.*" if isinstance(value, Params) else f"{prefix}{name}")
    return ", ".join(names)


def _read_config(text: str | None) -> dict[str, Any]:
    """``--config``: a JSON object, inline or in a file."""
    if text is None:
        return {}
    source = text
    if not text.lstrip().startswith("{"):
        try:
            with open(text, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise CliError(f"--config: neither a JSON object nor a readable file: {e}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"--config {source}: not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CliError(f"--config {source}: must be a JSON object, got {type(config).__name__}")
    return config


def build_params(cls: type[MonolithBaseModel], config: Mapping[str, Any],
                 params: Sequence[str]) -> InstantiableParams:
    """``cls.params()`` with the ``--config`` overrides, then the ``--param NAME=VALUE`` ones."""
    p = cls.params()
    apply_overrides(p, config, "--config")
    overrides = {}
    for item in params:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise CliError(f"--param must be name=value (e.g. train.per_replica_batch_size=256), got {item!r}")
        overrides[name] = _param_value(p, name, text)
    apply_overrides(p, overrides, "--param")
    return p


def _param_value(p: Params, name: str, text: str) -> Any:
    """``--param``'s VALUE: its literal, except that a string param takes the text itself (name=123)."""
    value = parse_value(text)
    try:
        current = p.get(name)
    except AttributeError:
        return value  # apply_overrides names the unknown param
    return text if isinstance(current, str) and value is not None and not isinstance(value, str) else value


def _run_config(args: argparse.Namespace, fields: Mapping[str, Any]) -> RunConfig:
    from monolith.run_config import RunConfig

    known = sorted(f.name for f in dataclasses.fields(RunConfig))
    for name in fields:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise CliError(f"--config run_config: unknown field {name!r}; {hint}RunConfig has {known}")
    fields = dict(fields)
    if args.model_dir is not None:
        fields["model_dir"] = args.model_dir
    if args.seed is not None:
        fields["seed"] = args.seed
    try:
        config = RunConfig(**fields)
    except ValueError as e:
        raise CliError(f"--config run_config: {e}") from None
    if os.path.exists(config.model_dir) and not os.path.isdir(config.model_dir):
        raise CliError(f"--model-dir {config.model_dir}: exists and is not a directory")
    return config


# ---------------------------------------------------------------------------------------- commands
def _train(estimator: Estimator, args: argparse.Namespace) -> dict[str, Any]:
    from monolith.checkpoint import CheckpointManager

    input_fn, hooks = None, []
    if args.stream is not None:
        from monolith.streaming import KafkaSource, decode_examples

        model = estimator.model
        rank = estimator.dist.rank if estimator.dist is not None else 0
        try:
            source = KafkaSource.from_url(args.stream, model.batch_size or 256,
                                          parse_fn=getattr(model, "parse_stream", decode_examples),
                                          rank=rank, world_size=estimator.dist.world_size if estimator.dist else 1,
                                          group_id=args.stream_group or model.p.name,
                                          idle_timeout_s=args.stream_idle_timeout)
        except ValueError as e:
            raise CliError(f"--stream: {e}") from None
        input_fn = lambda mode: source  # noqa: E731 - the stream replaces input_fn(TRAIN)
    if args.serving_url is not None:
        from monolith.streaming import ParameterSync

        from monolith.serving.auth import read_token

        try:
            token = read_token(args.serving_token_file)
        except ValueError as e:
            raise CliError(str(e)) from None
        hooks.append(ParameterSync(args.serving_url, interval_s=args.sync_interval,
                                   evict_interval_s=args.evict_interval, token=token))
    metrics = estimator.train(max_steps=args.max_steps, steps=args.steps, input_fn=input_fn, hooks=hooks,
                              epochs=args.epochs)
    latest = CheckpointManager(estimator.config.model_dir).latest()
    return {"metrics": metrics, "checkpoint": None if latest is None else os.path.abspath(latest)}


def _require_checkpoint(estimator: Estimator, command: str) -> None:
    from monolith.checkpoint import CheckpointManager

    model_dir = estimator.config.model_dir
    if CheckpointManager(model_dir).latest() is None:
        raise CliError(f"{command}: no checkpoint in {os.path.abspath(model_dir)}; train first")


def _evaluate(estimator: Estimator, args: argparse.Namespace) -> dict[str, Any]:
    _require_checkpoint(estimator, "evaluate")
    return {"metrics": estimator.evaluate(steps=args.steps)}


def _predict(estimator: Estimator, args: argparse.Namespace) -> dict[str, Any]:
    _require_checkpoint(estimator, "predict")
    count = sum(1 for _ in estimator.predict(steps=args.steps))
    path = os.path.abspath(estimator.model.p.output_path)
    return {"predictions": count, "output_path": path,
            "file": os.path.join(path, f"part-{estimator.config.index:05d}")}


def _dump(estimator: Estimator, args: argparse.Namespace) -> dict[str, Any]:
    from monolith.mode_keys import ModeKeys

    model = estimator.model
    source = model.create_input_fn(ModeKeys.TRAIN)(ModeKeys.TRAIN)
    batch = next(iter(source), None)
    if batch is None:
        raise CliError("dump: input_fn(TRAIN) produced no batch for the build pass")
    receiver = model.create_serving_input_receiver_fn()()
    if receiver is not None and not isinstance(getattr(receiver, "features", receiver), Mapping):
        receiver = None  # only a features mapping describes serving inputs
    path = args.dump_path or os.path.join(estimator.config.model_dir, "model_dump.json")
    try:
        dump = estimator.model_dump(batch, receiver, input_source=source)
    except ValueError as e:
        raise CliError(f"dump: {e}") from None
    if estimator.dist is None or estimator.dist.rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        dump.dump(path)
    return {"dump": os.path.abspath(path), "features": [f.name for f in dump.features],
            "tables": sorted(dump.table_configs)}


def _export(estimator: Estimator, args: argparse.Namespace) -> dict[str, Any]:
    from monolith.export import ExportSignature

    _require_checkpoint(estimator, "export")
    model_dir = estimator.config.model_dir
    export_dir = args.export_dir or os.path.join(model_dir, estimator.model.p.serving.export_dir_base)
    try:
        path = estimator.export_saved_model(export_dir)
    except TypeError as e:  # no serving_input_receiver_fn: the model has nothing to serve
        raise CliError(f"export: {e}") from None
    signature = ExportSignature.load(path)
    return {"export": os.path.abspath(path), "program": signature.program, "outputs": signature.outputs,
            "tables": sorted(signature.tables)}


_RUN = {"train": _train, "evaluate": _evaluate, "predict": _predict, "dump": _dump, "export": _export}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, metavar="MODULE:CLASS",
                        help="the model class, e.g. monolith.demo:DeepFM or path/to/file.py:MyModel")
    common.add_argument("--model-dir", default=None,
                        help="checkpoints and summaries (default: RunConfig's, ./model_dir)")
    common.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="set a model param, dotted for groups (train.per_replica_batch_size=256); VALUE is "
                             "a Python literal when it parses as one, else a string; repeatable")
    common.add_argument("--config", default=None, metavar="JSON",
                        help="JSON object (inline or a file) of param overrides, names dotted or nested as groups; "
                             "its 'run_config' object sets RunConfig fields; --param wins over it")
    common.add_argument("--seed", type=int, default=None,
                        help="RunConfig.seed (default: 0): seeds Python, numpy and torch before the model is built")
    common.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; 1 is often fastest for these small ops)")
    common.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")

    parser = argparse.ArgumentParser(
        prog="monolith",
        description="Train, evaluate, predict, dump or export a Monolith model given as module:Class; "
                    "`monolith serve --export-dir DIR --port P` serves an export. "
                    "`monolith COMMAND --help` lists a command's options.",
        epilog="Under torchrun (torchrun --nproc_per_node=N -m monolith train ...) the ranks train synchronously.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", parents=[common], help="train (resuming from MODEL_DIR's latest checkpoint)")
    train.add_argument("--max-steps", type=int, default=None,
                       help="stop at this global step (default: the train.max_steps param, else the end of input_fn)")
    train.add_argument("--steps", type=int, default=None, help="this many more steps")
    train.add_argument("--epochs", type=int, default=None,
                       help="read input_fn this many times (the first pass continues where the checkpoint left it); "
                            "a run that read all of its input is finished, and trains again only with --epochs, "
                            "--steps or a higher --max-steps")
    train.add_argument("--stream", default=None, metavar="kafka://HOST:PORT/TOPIC",
                       help="read training examples from this Kafka topic (rank r of N reads the partitions p with "
                            "p %% N == r), parsed by the model's parse_stream(messages) if it has one, else as JSON "
                            "examples (monolith.streaming.encode_example); offsets are kept with each checkpoint")
    train.add_argument("--stream-group", default=None, help="--stream: consumer group (default: the model name)")
    train.add_argument("--stream-idle-timeout", type=float, default=None,
                       help="--stream: stop after this many seconds without a message (default: never)")
    train.add_argument("--serving-url", default=None, metavar="http://HOST:PORT",
                       help="push changed embedding rows and dense weights to this serving process")
    train.add_argument("--serving-token-file", default=None, metavar="PATH",
                       help="--serving-url: file holding the token serving requires for updates, sent as "
                            "'Authorization: Bearer <token>' (default: $MONOLITH_SERVING_TOKEN)")
    train.add_argument("--sync-interval", type=float, default=10.0,
                       help="--serving-url: seconds between parameter pushes (default 10)")
    train.add_argument("--evict-interval", type=float, default=None,
                       help="--serving-url: seconds between expiry sweeps whose evictions reach serving")
    for name, what in (("evaluate", "evaluate the latest checkpoint (per-head AUC / MSE, loss per example)"),
                       ("predict", "write predictions of the latest checkpoint, one part-NNNNN file per rank")):
        command = commands.add_parser(name, parents=[common], help=what)
        command.add_argument("--steps", type=int, default=None, help="at most this many batches")
        command.add_argument("--output-path", default=None,
                             help="directory of the prediction files (the output_path param)"
                                  + ("; default MODEL_DIR/predictions" if name == "predict" else ""))
    dump = commands.add_parser("dump", parents=[common], help="write the model dump (features, slices, tables, ...)")
    dump.add_argument("--dump-path", default=None, help="the JSON file (default: MODEL_DIR/model_dump.json)")
    export = commands.add_parser("export", parents=[common], help="export the latest checkpoint for serving")
    export.add_argument("--export-dir", default=None,
                        help="where the export goes, as <global_step>/ (default: MODEL_DIR/ joined with the "
                             "serving.export_dir_base param, exported_models)")
    # Listed for the help only: main() hands `serve` to monolith.serving before this parser runs.
    commands.add_parser("serve", help="serve an export over HTTP (monolith serve --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        # `monolith serve --export-dir DIR --port P` has its own parser (also `python -m monolith.serving`).
        from monolith.serving.__main__ import main as serve

        serve(argv[1:])
        return 0
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # Imported only now: --help and argument errors never wait for torch.
    import torch

    from monolith.estimator import Estimator, seed_everything

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the console script does not search the current directory
    try:
        cls = load_model_class(args.model)
        config = _read_config(args.config)
        run_fields = config.pop("run_config", {})
        if not isinstance(run_fields, Mapping):
            raise CliError("--config run_config: must be a JSON object of RunConfig fields")
        p = build_params(cls, config, args.param)
        run_config = _run_config(args, run_fields)
        if getattr(args, "output_path", None) is not None:
            p.output_path = args.output_path
        elif args.command == "predict" and p.output_path is None:
            p.output_path = os.path.join(run_config.model_dir, "predictions")
        seed_everything(run_config.seed)  # layers built in the model's __init__ draw from these generators
        try:
            model = p.instantiate()
        except (TypeError, ValueError) as e:
            if args.verbose:
                raise
            raise CliError(f"--model {args.model}: building the model from its params failed: "
                           f"{type(e).__name__}: {e} (a --param or --config value of the wrong type? "
                           f"-v shows the traceback)") from None
        estimator = Estimator(model, run_config)
        result = _RUN[args.command](estimator, args)
    except CliError as e:
        parser.exit(2, f"monolith: error: {e}\n")
    dist = estimator.dist
    if dist is None or dist.rank == 0 or args.command == "predict":
        line = {"command": args.command, "model": args.model, "model_dir": os.path.abspath(run_config.model_dir),
                "global_step": estimator.global_step, **result}
        if dist is not None:
            line["rank"] = dist.rank
        # One write per line: under torchrun the ranks' lines share stdout and must not interleave.
        sys.stdout.write(json.dumps(line, default=str) + "\n")
        sys.stdout.flush()
    if dist is not None and torch.distributed.is_initialized():
        dist.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
