"""Command-line plumbing shared by the scripts: flags generated from the config dataclasses (their help, types and
defaults are the fields'), flags -> RunConfig, and one-line errors instead of tracebacks."""
from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import typing
from dataclasses import fields
from pathlib import Path

from ..config import NOISE_ANCHORS, PROTOCOLS, SECTIONS, RunConfig, load_config, validate, with_values
from ..methods import method_names
from ..resume import Interrupted
from ..utils import UsageError, UserError

MODEL_TRAIN = ("model", "train", "mixed_precision", "sync_bn", "threads", "data_dir")  # the flags of baseline training
UNLEARN = (*MODEL_TRAIN, "sa", "eval_samples", "protocol", "quick", "figures")  # ... and of unlearning


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line on stderr (exit 2)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _rank() -> str:
    """``[rank N] `` under torchrun / accelerate launch with several processes, else empty."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    return f"[rank {os.environ['RANK']}] " if several else ""


def _sigterm(signum, frame):
    raise Interrupted("interrupted by SIGTERM", signum)


def command(main):
    """Make ``main`` a console entry point: calling it runs ``run_main(main)``."""
    @functools.wraps(main)
    def entry():
        run_main(main)

    return entry


def run_main(fn) -> None:
    """Call ``fn()``; a ``UserError`` becomes ``error: <message>`` on stderr and its exit code. Outside the
    training loops (which save a resumable state first) SIGINT and SIGTERM stop the run with one line too."""
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        fn()
    except UserError as e:
        sys.stderr.write(f"error: {_rank()}{e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write(f"error: {_rank()}interrupted\n")
        sys.exit(130)


# ---- flags from the config fields ----------------------------------------------------------------------------

def flagged_fields(cls, prefix: str = ""):
    """``(key, field, default, type hint)`` of every field of the dataclass ``cls`` that has a flag."""
    hints, obj = typing.get_type_hints(cls), cls()
    for f in fields(cls):
        if "help" in f.metadata and f.metadata.get("flag") != "":
            yield prefix + f.name, f, getattr(obj, f.name), hints[f.name]


def config_fields(groups=UNLEARN):
    """``flagged_fields`` of the RunConfig sections and top-level fields named in ``groups``; keys are
    ``section.name`` or ``name``."""
    top = {item[0]: item for item in flagged_fields(RunConfig)}
    for group in groups:
        yield from flagged_fields(SECTIONS[group], group + ".") if group in SECTIONS else [top[group]]


def flag_names(f) -> list[str]:
    flag = f.metadata.get("flag")
    if flag:
        return [flag] if isinstance(flag, str) else list(flag)
    return ["--" + f.name.replace("_", "-")]


def shown_default(f, default) -> str:
    shown = f.metadata.get("shown")
    if shown is not None:
        return shown
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return " ".join(map(str, default))
    return f"{default:g}" if isinstance(default, float) else str(default)


def add_flags(p: argparse.ArgumentParser, items, choices: dict | None = None) -> None:
    """One flag per ``(key, field, default, hint)``, its help the field's with the default; the flag's own default
    is None, so an unset flag keeps the YAML's or the field's value. ``choices``: ``{key: allowed values}``."""
    for key, f, default, hint in items:
        kw = {"dest": key.replace(".", "__"), "default": None,
              "help": f"{f.metadata['help']} (default {shown_default(f, default)})", **f.metadata["argparse"]}
        if hint is bool:
            kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
        else:
            kw.setdefault("type", typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint)
            kw.setdefault("metavar", f.name.split(".")[-1].upper())
        if key in (choices or {}):
            kw["choices"] = choices[key]
            kw.pop("metavar", None)
        p.add_argument(*flag_names(f), **kw)


def add_config_args(p: argparse.ArgumentParser, groups=UNLEARN) -> None:
    """The flags of the RunConfig fields in ``groups`` (``--method`` choices: the registered methods)."""
    add_flags(p, config_fields(groups), {"sa.method": method_names(), "protocol": list(PROTOCOLS),
                                         "sa.noise_anchor": list(NOISE_ANCHORS)})


RUN_FLAGS = {  # the flags around a run's config (not config fields): flag -> (metavar, help); docs/flags.md's
    # first table is generated from these (run_flags_markdown)
    "--config": ("FILE", "YAML config (sections model/train/sa); flags override it"),
    "--run-dir": ("DIR", "output folder (default runs/<arch>-[<method>-]forget<classes>-<time>); a finished run is "
                         "never overwritten"),
    "--resume": ("DIR", "continue the interrupted run in DIR with its config.yaml"),
    "--checkpoint": ("FILE", "unlearn this sa_dist .safetensors instead of the cached baseline; the classes an "
                             "unlearned checkpoint (or a cached retrain model) has forgotten are added to the request "
                             "and stay forgotten"),
}


def _add_run_flag(p: argparse.ArgumentParser, flag: str) -> None:
    metavar, help_ = RUN_FLAGS[flag]
    p.add_argument(flag, metavar=metavar, help=help_)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags around a run's config: a YAML file, the run directory, resuming."""
    for flag in ("--config", "--run-dir", "--resume"):
        _add_run_flag(p, flag)


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    """``--checkpoint FILE`` of the unlearning scripts (``scripts/unlearn.py``, ``scripts/sweep.py``)."""
    _add_run_flag(p, "--checkpoint")


def run_flags_markdown() -> str:
    """The first table of docs/flags.md: the flags that are not config fields, with their help."""
    rows = ["| flag | what |", "| --- | --- |"]
    for flag, (metavar, help_) in RUN_FLAGS.items():
        rows.append(f"| `{flag} {metavar}` | " + help_.replace("|", "\\|") + " |")
    return "\n".join(rows) + "\n"


def given_values(args: argparse.Namespace, items) -> dict:
    """``{key: value}`` of the flags among ``items`` that were given on the command line."""
    keys = {item[0] for item in items}
    return {dest.replace("__", "."): v for dest, v in vars(args).items()
            if v is not None and dest.replace("__", ".") in keys}


def dataclass_from_args(cls, args: argparse.Namespace):
    """An instance of the dataclass ``cls``: its defaults, overridden by the flags of ``add_flags`` that were given."""
    return cls(**given_values(args, flagged_fields(cls)))


def flags_markdown() -> str:
    """The table of docs/flags.md: every config flag of scripts/unlearn.py with its help and default."""
    rows = ["| flag | config field | what | default |", "| --- | --- | --- | --- |"]
    for key, f, default, _ in config_fields(UNLEARN):
        names = ", ".join(f"`{n}`" for n in flag_names(f))
        cells = (names, f"`{key}`", f.metadata["help"], shown_default(f, default))
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Dataclass defaults <- ``--config`` YAML <- ``accelerate launch``'s mixed precision (if not "no") <- flags;
    validated. ``--resume DIR``: DIR's config.yaml alone."""
    if getattr(args, "resume", None):
        return resume_config(args)
    cfg = load_config(args.config) if getattr(args, "config", None) else RunConfig()
    values = {}
    launcher_mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()  # set by accelerate launch
    if launcher_mp != "no":
        values["mixed_precision"] = launcher_mp
    values.update(given_values(args, config_fields()))
    if values.get("model.arch", cfg.model.arch) != cfg.model.arch and "model.width" not in values:
        values["model.width"] = 0  # the new arch's default width
    return validate(with_values(cfg, values))


def resume_config(args: argparse.Namespace) -> RunConfig:
    """The config of the interrupted run ``--resume DIR``; other config flags are refused (it must not change)."""
    given = [flag_names(f)[0] for k, f, _, _ in config_fields() if k in given_values(args, config_fields())]
    given += [f"--{name.replace('_', '-')}" for name in ("config", "run_dir") if getattr(args, name, None)]
    if given:
        raise UsageError(f"--resume continues a run with its own config.yaml; drop {', '.join(given)}")
    path = Path(args.resume) / "config.yaml"
    if not path.is_file():
        raise UsageError(f"--resume {args.resume}: no config.yaml there (not a sa_dist run directory)")
    if (Path(args.resume) / "results.json").exists():
        raise UsageError(f"--resume {args.resume}: that run already finished (results.json)")
    return validate(load_config(path))
