"""The command line's group: params.yaml parsed once, and checked before click checks a
command's paths; every error a user can fix told in one line with an exit code (2 for
bad params, as click's own usage errors; 1 for the rest), never a traceback; and the
--cache/--no-cache options the caching stages share."""

import errno
from pathlib import Path

import click

from pipeline.errors import NotOurs, PipelineError, refused
from pipeline.params import Params, ParamsError, load_params


class BadParams(click.ClickException):
    exit_code = 2  # a usage error, like click's own for bad options


# The commands that read params.yaml. Their params are checked before click checks their
# paths, so a broken params.yaml is named (exit 2) whatever else is missing.
READS_PARAMS = frozenset({"ingest", "prepare", "train", "evaluate", "audit"})
HELP = frozenset({"-h", "--help"})


class Group(click.Group):
    def resolve_command(self, ctx, args):
        # Called with the command and its arguments still unparsed: params come first.
        name, command, rest = super().resolve_command(ctx, args)
        if name in READS_PARAMS and not HELP.intersection(rest):
            params_of(ctx)
        return name, command, rest

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NotOurs as error:
            raise BadParams(str(error)) from None
        except PipelineError as error:
            raise click.ClickException(str(error)) from None
        except OSError as error:  # the file system refused: one line, not a traceback
            if error.errno == errno.EPIPE:  # a reader of our output left: click's own case
                raise
            raise click.ClickException(refused(error)) from None


def params_of(ctx: click.Context) -> Params:
    """params.yaml (the group's --params), parsed once per run."""
    root = ctx.find_root()
    if "params" not in root.meta:
        try:
            root.meta["params"] = load_params(root.params["params_path"])
        except ParamsError as error:
            raise BadParams(str(error)) from None
    return root.meta["params"]


def cache_options(default: Path, envvar: str, what: str, without: str):
    """A stage's --cache PATH (`what` it keeps) and --no-cache (`without` it)."""

    def decorate(command):
        command = click.option("--no-cache", is_flag=True, help=f"{without}; neither read "
                               "nor write the cache.")(command)  # fmt: skip
        return click.option(
            "--cache",
            "cache_path",
            type=click.Path(dir_okay=False, path_type=Path),
            default=default,
            show_default=True,
            envvar=envvar,
            help=f"{what}; safe to delete. Env: {envvar}.",
        )(command)

    return decorate
