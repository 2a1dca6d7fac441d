"""How one user command runs: the options every command shares, an API session for its
body, and every failure turned into one line on stderr with a meaningful exit status.

A user command is an `async def` taking a `Cli` first and its own typer parameters after;
`@command(group, "name")` adds `--json`, `--url` and `--token` to it, runs it, and maps
errors — so no command handles connection errors, and no traceback reaches the user.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from nebula_core.cli.client import Api, ApiError, ConfigError, Unreachable, resolve
from nebula_core.cli.output import Output

EXIT_OK = 0
#: The API refused (the reason is printed), or what was waited for ended in error or timed out.
EXIT_FAILED = 1
#: The command could not be carried out as given: a wrong command line (typer's own
#: status), a configuration that names no usable API or token, or an API that does not answer.
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit status: 0 when done; 1 when the API refused (the reason is printed), or the instance ended "
    "in error or --wait timed out; 2 when the command line or the configuration is wrong, or the API "
    "cannot be reached.\n\n"
    "Connection: --url, else NEBULA_URL, else url in ~/.config/nebula/config.toml, else http://127.0.0.1:8774. "
    "Token: --token, else NEBULA_TOKEN, else token in that file, else the admin-token file that "
    "`nebula up` writes ($NEBULA_STATE_DIR, else your state directory or /var/lib/nebula), if you may read it."
)

ERROR_PREFIX = "nebula: error: "

_CONNECTION = "Connection"
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="The API, e.g. http://127.0.0.1:8774 (else NEBULA_URL, the config file).",
        rich_help_panel=_CONNECTION,
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="API token (else NEBULA_TOKEN, the config file, nebula up's admin-token).",
        rich_help_panel=_CONNECTION,
        show_default=False,
    ),
]


class Failed(Exception):
    """A command's own failure: the message is what the user reads."""


@dataclass
class Cli:
    """What a command body works with: the API and the printer."""

    api: Api
    out: Output


def one_line(message: str) -> str:
    return re.sub(r"\s*\n\s*", " ", message).strip()


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print `message` as the one error line; return the `typer.Exit` to raise."""
    typer.echo(ERROR_PREFIX + one_line(message), err=True)
    return typer.Exit(code)


def execute(body: Callable[[Cli], Awaitable[None]], *, as_json: bool, url: str | None, token: str | None) -> None:
    """Run one command body against the API; failures become one line and a non-zero exit."""
    out = Output(as_json)
    try:
        target = resolve(url, token)
    except ConfigError as err:
        raise fail(str(err), EXIT_USAGE) from None

    async def main() -> None:
        async with Api(target) as api:
            await body(Cli(api, out))

    try:
        asyncio.run(main())
    except Unreachable as err:
        raise fail(str(err), EXIT_USAGE) from None
    except ApiError as err:
        # A refused token is most often the wrong one: say which one was sent.
        hint = f"; the token came from {target.token_from}" if err.status == 401 else ""
        raise fail(str(err) + hint) from None
    except Failed as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (typer.TyperException, typer.Exit, typer.Abort):
        raise  # usage errors and exits: typer reports them itself
    except Exception as err:
        if os.environ.get("NEBULA_DEBUG"):
            raise
        raise fail(f"unexpected {type(err).__name__}: {err} (NEBULA_DEBUG=1 shows the traceback)") from None


def command(group: typer.Typer, name: str, **options: Any) -> Callable[[Callable[..., Awaitable[None]]], Any]:
    """Register `async def body(cli: Cli, …own typer parameters…)` as `nebula <group> <name>`."""

    def register(body: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        own = list(inspect.signature(body, eval_str=True).parameters.values())[1:]
        shared = [
            inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOption),
            inspect.Parameter("url", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=UrlOption),
            inspect.Parameter("token", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=TokenOption),
        ]

        def run(*, as_json: bool = False, url: str | None = None, token: str | None = None, **params: Any) -> None:
            execute(lambda cli: body(cli, **params), as_json=as_json, url=url, token=token)

        run.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
        run.__name__, run.__doc__ = body.__name__, body.__doc__
        group.command(name, epilog=EXIT_CODES_HELP, **options)(run)
        return body

    return register


def group(name: str, help: str, *, runs_alone: bool = False) -> typer.Typer:
    """A command group (`nebula <name> …`) whose help ends with the exit statuses.
    `runs_alone`: the group's callback does something of its own without a subcommand."""
    return typer.Typer(
        name=name,
        help=help,
        epilog=EXIT_CODES_HELP,
        no_args_is_help=not runs_alone,
        invoke_without_command=runs_alone,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


# --- shared parameters -------------------------------------------------------------------


def parse_tags(values: list[str] | None, *, filters: bool = False) -> dict[str, str]:
    """`--tag k=v` (repeatable) as a dict; with `filters`, a bare `k` means "has tag k"."""
    tags: dict[str, str] = {}
    for value in values or []:
        key, sep, tag_value = value.partition("=")
        if not key or (not sep and not filters):
            form = "key or key=value" if filters else "key=value"
            raise typer.BadParameter(f"{value!r} is not {form}", param_hint="--tag")
        tags[key] = tag_value
    return tags


def tag_query(values: list[str] | None) -> list[tuple[str, str]]:
    """`--tag` filters (`k` or `k=v`, repeatable) as the API's repeatable `tag` query parameter."""
    parse_tags(values, filters=True)
    return [("tag", value) for value in values or []]
