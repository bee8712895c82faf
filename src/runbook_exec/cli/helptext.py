"""How `--help` reads: Typer shows each value's Python type (`<bool>`, `<int range>`,
`<path>`) and wraps a required argument in braces (`{RUNBOOK}`). Help reads better with
nothing after a flag, a plain name after an option (N for a number, else the option's name
in capitals), and the usual `RUNBOOK` / `[RUN_ID]` in the usage line. One place, applied
once when the CLI is built."""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption


def plain_metavars() -> None:
    def option_type(self: TyperOption, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag or self.count:
            return None
        if self.type_descriptor.annotation in (int, float):
            return "N"
        return (self.name or "value").upper()

    def argument_type(self: TyperArgument, ctx: Any) -> str | None:
        return None  # the name column says it already

    def usage_name(self: TyperArgument) -> str:
        name = self.display_name_raw
        return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")

    TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    TyperArgument.display_type_rich = argument_type  # type: ignore[method-assign,assignment]
    TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]
