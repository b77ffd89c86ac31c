"""keyseed.console.admin_cli
~~~~~~~~~~~~~~~~~~~~~~~~~~~

``keyseed admin``: every function of the setup PC (103) from a terminal. Each subcommand is
one request to the server's admin API (or, for ``device-rekey``, to a device's local setup
endpoint) and prints a table for people, or with ``--json`` exactly the JSON that was answered,
for scripts. :func:`add_admin_parser` adds the command group to the ``keyseed`` parser and
binds each subcommand's handler ``(args, parser) -> exit code``.

Exit codes (:class:`~keyseed.console.client.ExitCode`): 0 ok, 1 the operation failed (a
confirmation the device did not answer, a rate limit), 2 usage or configuration (also a request
the server refused as invalid, 422), 3 the server or device is unreachable, 4 the token was
refused (401), 5 unknown device (404), 6 the device's state forbids it (409). Errors are one
line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..crypto.suites import SUITES
from .client import (
    DEFAULT_CONFIG,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    ENV_CONFIG,
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    ENV_URL,
    AdminClient,
    ConsoleError,
    DeviceClient,
    ExitCode,
    RequestFailed,
    UsageError,
    load_admin_settings,
    load_device_settings,
    plain_http_warning,
    policy_body,
)

ENV_SETUP_CODE = "KEYSEED_ADMIN_SETUP_CODE"
#: Line width when stdout is not a terminal (and COLUMNS is not set).
PIPE_WIDTH = 250

Handler = Callable[[argparse.Namespace, argparse.ArgumentParser], int]
AdminCommand = Callable[[AdminClient, argparse.Namespace, "Output"], int]
DeviceCommand = Callable[[DeviceClient, argparse.Namespace, "Output"], int]


class _Formatter(argparse.HelpFormatter):
    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Output:
    """Tables and lines for people, or the answered JSON for scripts."""

    def __init__(self, as_json: bool) -> None:
        #: Print JSON instead of tables.
        self.as_json = as_json
        # Markup off: device IDs and server details are data, never rich markup. Into a pipe,
        # rows stay whole lines (rich would wrap at 80 columns), so that grep finds them.
        piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
        self.console = Console(
            markup=False, highlight=False, emoji=False, width=PIPE_WIDTH if piped else None
        )

    def json(self, data: Any) -> None:
        print(json.dumps(data, indent=2))

    def line(self, *parts: str | tuple[str, str]) -> None:
        self.console.print(Text.assemble(*parts))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


# -- formatting -------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def device_state(view: dict[str, Any]) -> str:
    """One phrase for a device's state in the scheme."""
    if view.get("revoked"):
        state = "revoked"
    elif view.get("enrolled") and view.get("confirmed"):
        state = "enrolled"
    elif view.get("enrolled"):
        state = "awaiting approval (SAS)"
    elif view.get("window_open"):
        state = "awaiting enrolment"
    else:
        state = "registered, window closed"
    extras = []
    if view.get("pending_exchange"):
        extras.append("exchange in flight")
    if view.get("owed_206"):
        extras.append("206 owed")
    return " · ".join([state, *extras])


def _window(view: dict[str, Any]) -> str:
    if view.get("window_open"):
        code = " (code)" if view.get("code_required") else " (no code)"
        return f"open until {_when(view.get('window_expires_at'))}{code}"
    if view.get("window_expires_at") is not None:
        return "closed"
    return "-"


def _policy(policy: Any) -> str:
    if not isinstance(policy, dict):
        return "-"
    return (
        f"rekey at {policy.get('soft_messages')} msgs or {_age(policy.get('soft_age_s'))}; "
        f"stop at {policy.get('hard_messages')} msgs or {_age(policy.get('hard_age_s'))}"
    )


def _profile(profile: Any) -> str:
    if not isinstance(profile, dict):
        return "-"
    tls = "reduced over TLS" if profile.get("tls_reduced") else "full layer over TLS"
    return f"{profile.get('suite')}, {tls}; {_policy(profile.get('policy'))}"


def _app(app: Any) -> str:
    if not isinstance(app, dict) or app.get("state") is None:
        return "-"
    parts = [str(app.get("state"))]
    if app.get("recipe"):
        parts.append(str(app["recipe"]))
    if app.get("left_s") is not None:
        parts.append(f"{app['left_s']} s left")
    return " ".join(parts)


def device_table(views: list[dict[str, Any]]) -> Table:
    table = Table(title=None, header_style="bold", pad_edge=False, box=None)
    for name in ("device", "suite", "epoch", "state", "online", "key age", "order", "app"):
        table.add_column(name, no_wrap=name in ("device", "suite", "epoch"))
    for v in views:
        order = v.get("order_epoch")
        table.add_row(
            str(v.get("device_id")),
            str(v.get("suite")),
            str(v.get("epoch")),
            device_state(v),
            _yes(v.get("online")),
            _age(v.get("key_age_s")),
            "-" if order is None else f"epoch {order}",
            _app(v.get("app")),
        )
    return table


def device_detail(view: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    order = view.get("order_epoch")
    rows = [
        ("device", view.get("device_id")),
        ("state", device_state(view)),
        ("suite", view.get("suite")),
        ("epoch", view.get("epoch")),
        ("enrolled", _yes(view.get("enrolled"))),
        ("confirmed", _yes(view.get("confirmed"))),
        ("revoked", _yes(view.get("revoked"))),
        ("online", _yes(view.get("online"))),
        ("key age", _age(view.get("key_age_s"))),
        ("enrolment window", _window(view)),
        ("window failures", view.get("window_failures")),
        ("exchange in flight", _yes(view.get("pending_exchange"))),
        ("206 owed", _yes(view.get("owed_206"))),
        ("rekey order", "-" if order is None else f"epoch {order} (401, waiting)"),
        ("policy", _policy(view.get("policy"))),
    ]
    if view.get("policy_next"):
        rows.append(("next policy", _policy(view.get("policy_next"))))
    if view.get("suite_in_force") not in (None, view.get("suite")):
        rows.append(("next 203 suite", view.get("suite_in_force")))
    if "tls_reduced" in view:
        rows.append(("tls reduced", _yes(view.get("tls_reduced"))))
    if "profile" in view:
        rows.append(("profile", _profile(view.get("profile"))))
    if "app" in view:
        rows.append(("app", _app(view.get("app"))))
    rows.append(("version", view.get("version")))
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def audit_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold", pad_edge=False, box=None)
    for name in ("id", "time", "device", "event", "epoch", "cause", "detail"):
        table.add_column(name, no_wrap=name in ("id", "time", "device"))
    for r in rows:
        table.add_row(
            str(r.get("id")),
            _when(r.get("at")),
            str(r.get("device_id")),
            str(r.get("kind")),
            str(r.get("epoch")),
            str(r.get("cause") or "-"),
            str(r.get("detail") or ""),
        )
    return table


# -- subcommands ------------------------------------------------------------------------


def _cmd_register(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    code = args.setup_code if args.setup_code is not None else os.environ.get(ENV_SETUP_CODE)
    if code is not None and args.no_code:
        raise UsageError("give a setup code or --no-code, not both")
    if code is None and not args.no_code:
        raise UsageError(
            f"give the device's setup code (--setup-code CODE, or {ENV_SETUP_CODE} to keep it "
            "out of the process list), or --no-code to register without one (then approve the "
            "device by its SAS)"
        )
    policy = policy_body(
        soft_messages=args.policy_soft_messages,
        hard_messages=args.policy_hard_messages,
        soft_age_s=args.policy_soft_age_s,
        hard_age_s=args.policy_hard_age_s,
    )
    view = client.register(
        args.device_id,
        setup_code=code,
        allow_no_code=args.no_code,
        suite=args.suite,
        window_s=args.window,
        policy=policy,
        tls_reduced=args.tls_reduced,
    )
    if out.as_json:
        out.json(view)
        return ExitCode.OK
    out.line(
        ("201 → 202 ", "bold cyan"),
        f"registered {view.get('device_id')}: enrolment window {_window(view)}",
    )
    if args.no_code:
        out.line(
            "no setup code: once it has enrolled, compare the SAS it shows and run "
            f"`keyseed admin approve {view.get('device_id')} --sas NNNNNN`"
        )
    out.console.print(device_detail(view))
    return ExitCode.OK


def _cmd_profile(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    limits = {
        "soft_messages": args.policy_soft_messages,
        "hard_messages": args.policy_hard_messages,
        "soft_age_s": args.policy_soft_age_s,
        "hard_age_s": args.policy_hard_age_s,
    }
    policy = None
    if any(v is not None for v in limits.values()):
        # Limits not given keep the device's current ones.
        current = client.device(args.device_id).get("profile", {}).get("policy", {})
        policy = {k: current.get(k) if v is None else v for k, v in limits.items()}
    if args.suite is None and policy is None and args.tls_reduced is None:
        raise UsageError("give --suite, a --policy-* limit, --tls-reduced or --no-tls-reduced")
    view = client.profile(
        args.device_id, suite=args.suite, policy=policy, tls_reduced=args.tls_reduced
    )
    if out.as_json:
        out.json(view)
        return ExitCode.OK
    out.line(
        ("profile ", "bold cyan"),
        f"{view.get('device_id')}: {_profile(view.get('profile'))}; "
        "sent with the next 206 (run `keyseed admin rekey` to apply it now)",
    )
    out.console.print(device_detail(view))
    return ExitCode.OK


def _cmd_list(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    views = client.devices()
    if out.as_json:
        out.json(views)
        return ExitCode.OK
    if not views:
        out.line("no devices registered")
        return ExitCode.OK
    out.console.print(device_table(views))
    return ExitCode.OK


def _cmd_show(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    view = client.device(args.device_id)
    if out.as_json:
        out.json(view)
    else:
        out.console.print(device_detail(view))
    return ExitCode.OK


def _cmd_rekey(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    result = client.rekey(args.device_id)
    if out.as_json:
        out.json(result)
        return ExitCode.OK
    how = (
        "403 sent to the device now"
        if result.get("delivered")
        else "the device gets 403 at its next connection"
    )
    again = " (already ordered)" if result.get("already_ordered") else ""
    out.line(
        ("401 → 402 ", "bold cyan"),
        f"rekey ordered for {result.get('device_id')}: epoch {result.get('order_epoch')} "
        f"is to be replaced{again}; {how}",
    )
    return ExitCode.OK


def _cmd_confirm(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    result = client.confirm(args.device_id)
    if out.as_json:
        out.json(result)
    elif result.get("ok"):
        out.line(
            ("208 → 207 → 209 ", "bold cyan"),
            f"{result.get('device_id')} answered under epoch {result.get('epoch')} "
            f"in {result.get('rtt_ms')} ms",
        )
    if not result.get("ok"):
        print(
            f"keyseed admin confirm: {args.device_id} did not answer 207 "
            f"({result.get('detail') or 'failed'})",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    return ExitCode.OK


def _cmd_approve(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    view = client.approve(args.device_id, args.sas)
    if out.as_json:
        out.json(view)
    else:
        out.line(
            f"approved {view.get('device_id')}: the SAS matches its key of epoch "
            f"{view.get('epoch')}"
        )
        out.console.print(device_detail(view))
    return ExitCode.OK


def _cmd_revoke(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    view = client.revoke(args.device_id)
    if out.as_json:
        out.json(view)
    else:
        out.line(
            f"revoked {view.get('device_id')}: its keys, seed and one-time key are retired "
            "and its connection closed; it needs a new registration and keystore to return"
        )
    return ExitCode.OK


def _cmd_audit(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    rows = client.audit(device_id=args.device, limit=args.limit, before_id=args.before_id)
    if out.as_json:
        out.json(rows)
    elif not rows:
        out.line("no audit rows")
    else:
        out.console.print(audit_table(rows))
        if len(rows) == args.limit:
            out.line(f"older rows: --before-id {rows[-1].get('id')}")
    return ExitCode.OK


def _cmd_fingerprint(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    keys = client.keys()
    if args.suite is not None:
        keys = [k for k in keys if k.get("suite") == args.suite]
        if not keys:
            raise RequestFailed(f"the server has no {args.suite} key (suite not enabled)")
    if out.as_json:
        out.json(keys)
        return ExitCode.OK
    table = Table(header_style="bold", pad_edge=False, box=None)
    table.add_column("suite", no_wrap=True)
    table.add_column("fingerprint (a device's --pin)", no_wrap=True)
    if args.public_key:
        table.add_column("public key (a device's --server-key)", overflow="fold")
    for k in keys:
        row = [str(k.get("suite")), str(k.get("fingerprint"))]
        if args.public_key:
            row.append(str(k.get("public_key")))
        table.add_row(*row)
    out.console.print(table)
    return ExitCode.OK


def _cmd_cook(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    result = client.cook(args.device_id, args.recipe)
    if out.as_json:
        out.json(result)
        return ExitCode.OK
    how = (
        "sent to the oven now"
        if result.get("pushed")
        else "it waits for the oven's next status report"
    )
    out.line(f"cooking order for {result.get('device_id')}: {result.get('recipe')}; {how}")
    return ExitCode.OK


def pair_table(rows: list[dict[str, Any]]) -> Table:
    """Pairs: policy, state, mode, epoch, roles, who is online. Never key material."""
    table = Table(header_style="bold", pad_edge=False, box=None)
    for col in ("pair", "allowed", "state", "mode", "epoch", "initiator", "online", "updated"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        online = [
            d for d, up in ((r.get("a"), r.get("online_a")), (r.get("b"), r.get("online_b"))) if up
        ]
        table.add_row(
            f"{r.get('a')} <-> {r.get('b')}",
            _yes(r.get("allowed")),
            str(r.get("status")),
            str(r.get("mode") or "-"),
            str(r.get("epoch")),
            str(r.get("initiator") or "-"),
            ", ".join(str(d) for d in online) or "-",
            _when(r.get("updated_at")),
        )
    return table


def _cmd_pairs(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    rows = client.pairs()
    if out.as_json:
        out.json(rows)
    elif not rows:
        out.line("no pairs (allow one with `keyseed admin allow-pair A B`)")
    else:
        out.console.print(pair_table(rows))
    return ExitCode.OK


def _cmd_allow_pair(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    view = client.allow_pair(args.a, args.b)
    if out.as_json:
        out.json(view)
    else:
        out.line(
            f"allowed {view.get('a')} <-> {view.get('b')}: either may now ask the server "
            "for a pair key (relay or end-to-end)"
        )
    return ExitCode.OK


def _cmd_deny_pair(client: AdminClient, args: argparse.Namespace, out: Output) -> int:
    view = client.deny_pair(args.a, args.b)
    if out.as_json:
        out.json(view)
    else:
        closed = view.get("status") == "closed"
        out.line(
            f"denied {view.get('a')} <-> {view.get('b')}: "
            + ("their pair key is closed and both devices told" if closed else "no live pair key")
        )
    return ExitCode.OK


def _cmd_device_rekey(client: DeviceClient, args: argparse.Namespace, out: Output) -> int:
    result = client.rekey()
    if out.as_json:
        out.json(result)
        return ExitCode.OK
    online = "online: the exchange starts now" if result.get("online") else "offline: it rekeys"
    if not result.get("online"):
        online += " as soon as it connects"
    out.line(
        ("301 → 302 ", "bold cyan"),
        f"the device accepted the rekey of epoch {result.get('epoch')}; {online}",
    )
    return ExitCode.OK


# -- plumbing ---------------------------------------------------------------------------


def _fail(args: argparse.Namespace, exc: ConsoleError) -> int:
    print(f"keyseed admin {args.admin_command}: {exc}", file=sys.stderr)
    return int(exc.exit_code)


def _warn(args: argparse.Namespace, url: str) -> None:
    warning = plain_http_warning(url)
    if warning:
        print(f"keyseed admin {args.admin_command}: warning: {warning}", file=sys.stderr)


def _admin_handler(command: AdminCommand) -> Handler:
    def handler(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        try:
            settings = load_admin_settings(
                url=args.url, token=args.token, token_file=args.token_file, config=args.config
            )
            _warn(args, settings.url)
            with AdminClient(settings, timeout=args.timeout) as client:
                return command(client, args, Output(args.json))
        except ConsoleError as exc:
            return _fail(args, exc)

    return handler


def _device_handler(command: DeviceCommand) -> Handler:
    def handler(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        try:
            settings = load_device_settings(
                url=args.device_url,
                token=args.device_token,
                token_file=args.device_token_file,
                config=args.config,
            )
            _warn(args, settings.url)
            with DeviceClient(settings, timeout=args.timeout) as client:
                return command(client, args, Output(args.json))
        except ConsoleError as exc:
            return _fail(args, exc)

    return handler


def _output_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        help="print the JSON the server answered instead of a table",
    )
    common.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML config file (env {ENV_CONFIG}; default {DEFAULT_CONFIG} when it exists)",
    )
    common.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for an answer (default: {DEFAULT_TIMEOUT:g})",
    )
    return common


def _server_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, parents=[_output_options()])
    common.add_argument(
        "--url",
        metavar="URL",
        help=f"the server's admin listener (env {ENV_URL}; default: {DEFAULT_URL})",
    )
    common.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file holding the admin token, mode 0600 (env {ENV_TOKEN_FILE})",
    )
    common.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"the admin token itself (env {ENV_TOKEN}; prefer the file or the environment: "
        "flags show in the process list)",
    )
    return common


_DESCRIPTION = """The setup PC (103) from the terminal: register devices (201/202), change their
profile (suite, rekey policy, TLS reduction; sent in the next 206), order rekeys
by proxy (401/402) or directly at a device (301/302), confirm arrival (208/209), approve,
revoke, read the audit log and the server's key fingerprints, and order the microwave to cook.
The server URL and admin token come from flags, then the environment (KEYSEED_ADMIN_URL,
KEYSEED_ADMIN_TOKEN_FILE or KEYSEED_ADMIN_TOKEN), then a TOML file (--config,
KEYSEED_ADMIN_CONFIG or ~/.config/keyseed/admin.toml; keys url, token_file, token, device_url,
device_token_file). A token file must have mode 0600. Tables for people, --json for scripts.
Exit codes: 0 ok, 1 the operation failed, 2 usage or configuration, 3 unreachable, 4 token
refused, 5 unknown device, 6 not allowed in the device's state."""


def add_admin_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``admin`` and its subcommands; each binds ``handler`` and ``parser``."""
    admin = commands.add_parser(
        "admin",
        help="the setup PC: register, rekey, confirm, approve, revoke, audit",
        description=_DESCRIPTION,
        formatter_class=_Formatter,
    )
    admin.set_defaults(handler=None, parser=admin)
    sub = admin.add_subparsers(metavar="COMMAND", title="commands")
    server = [_server_options()]

    def add(
        name: str, handler: Handler, help_text: str, description: str, parents: list[Any]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=description,
            parents=parents,
            formatter_class=_Formatter,
        )
        p.set_defaults(handler=handler, parser=p, admin_command=name)
        return p

    def device_id(p: argparse.ArgumentParser) -> None:
        p.add_argument("device_id", metavar="DEVICE_ID", help="the device ID")

    p = add(
        "register",
        _admin_handler(_cmd_register),
        "201/202: register a device and open its enrolment window",
        "201/202: register a device and open its enrolment window. The device enrols "
        "(203-206) inside the window with the setup code printed on it; without a code "
        "(--no-code) it stays unconfirmed until you approve it by its SAS. A revoked device "
        "may be registered again.",
        server,
    )
    device_id(p)
    p.add_argument(
        "--setup-code",
        metavar="CODE",
        help=f"the code printed on the device, 8-32 digits (env {ENV_SETUP_CODE})",
    )
    p.add_argument(
        "--no-code",
        action="store_true",
        help="register without a setup code (approve by SAS afterwards)",
    )
    p.add_argument("--suite", choices=list(SUITES), help="PKE suite (default: hpke-x25519)")
    p.add_argument(
        "--tls-reduced",
        action="store_true",
        help="profile: over wss:// (and if the device agrees) application data travels "
        "authenticated-only by keyseed, encrypted by TLS",
    )
    p.add_argument(
        "--window",
        type=_positive_float,
        metavar="S",
        help="enrolment window in seconds (default: 600)",
    )
    for flag, what in (
        ("soft-messages", "messages under one key before the device rekeys by itself"),
        ("hard-messages", "messages under one key after which it carries no application data"),
        ("soft-age-s", "key age in seconds before the device rekeys by itself"),
        ("hard-age-s", "key age in seconds after which it carries no application data"),
    ):
        p.add_argument(
            f"--policy-{flag}",
            type=_positive_int,
            metavar="N",
            help=f"rekey policy: {what} (any limit given: the others default to keyseed's; "
            "none given: the server's default policy)",
        )

    p = add(
        "profile",
        _admin_handler(_cmd_profile),
        "change a device's profile: suite, rekey policy, TLS setting",
        "Change a device's profile; what is not given stays. The change reaches the device "
        "in the 206 of its next exchange (order one with `keyseed admin rekey`); a new suite "
        "is used from the exchange after that. Policy limits not given keep their values.",
        server,
    )
    device_id(p)
    p.add_argument("--suite", choices=list(SUITES), help="PKE suite")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls-reduced",
        dest="tls_reduced",
        action="store_const",
        const=True,
        help="over wss:// (and if the device agrees) application data travels "
        "authenticated-only by keyseed, encrypted by TLS",
    )
    tls.add_argument(
        "--no-tls-reduced",
        dest="tls_reduced",
        action="store_const",
        const=False,
        help="the full keyseed layer on every connection (the default)",
    )
    for flag, what in (
        ("soft-messages", "messages under one key before the device rekeys by itself"),
        ("hard-messages", "messages under one key after which it carries no application data"),
        ("soft-age-s", "key age in seconds before the device rekeys by itself"),
        ("hard-age-s", "key age in seconds after which it carries no application data"),
    ):
        p.add_argument(f"--policy-{flag}", type=_positive_int, metavar="N", help=what)

    add(
        "list",
        _admin_handler(_cmd_list),
        "every device and its state",
        "Every registered device: suite, epoch, state, online, key age, rekey order, app.",
        server,
    )
    device_id(
        add(
            "show",
            _admin_handler(_cmd_show),
            "one device in detail",
            "One device: state, epoch, key age, window, pending exchange, owed 206, rekey "
            "order, policy, app. Never key material.",
            server,
        )
    )
    device_id(
        add(
            "rekey",
            _admin_handler(_cmd_rekey),
            "401/402: order a rekey by proxy (the server sends 403)",
            "401/402: order a rekey by proxy. The order is stored first; the server sends 403 "
            "at once if the device is connected, else at its next connection.",
            server,
        )
    )
    p = add(
        "device-rekey",
        _device_handler(_cmd_device_rekey),
        "301/302: order a rekey directly at a device's setup endpoint",
        "301/302: order a rekey at the device's local setup endpoint (keyseed device "
        "--listen), with the device-local token from KEYSTORE.token beside its keystore.",
        [_output_options()],
    )
    p.add_argument(
        "--device-url",
        metavar="URL",
        help="the device's setup endpoint, http://HOST:PORT (env KEYSEED_ADMIN_DEVICE_URL)",
    )
    p.add_argument(
        "--device-token-file",
        metavar="FILE",
        help="the device-local token file KEYSTORE.token, mode 0600 "
        "(env KEYSEED_ADMIN_DEVICE_TOKEN_FILE)",
    )
    p.add_argument(
        "--device-token",
        metavar="TOKEN",
        help="the device-local token itself (env KEYSEED_ADMIN_DEVICE_TOKEN)",
    )
    device_id(
        add(
            "confirm",
            _admin_handler(_cmd_confirm),
            "208/209: check the device answers under its current key",
            "208/209: the server runs a 207 round trip with the device under its current key. "
            "Exit code 1 when the device does not answer (offline, timeout).",
            server,
        )
    )
    p = add(
        "approve",
        _admin_handler(_cmd_approve),
        "confirm a device enrolled without a code, by its SAS",
        "Confirm a device registered with --no-code, after comparing the 6-digit SAS it "
        "shows. A wrong SAS exits 6 (sas_mismatch).",
        server,
    )
    device_id(p)
    p.add_argument("--sas", required=True, metavar="NNNNNN", help="the SAS the device shows")
    device_id(
        add(
            "revoke",
            _admin_handler(_cmd_revoke),
            "retire a device's keys and seeds, close its connection",
            "Revoke a device: retire every key, seed and one-time key; its live connection "
            "is closed and it is refused from then on.",
            server,
        )
    )
    p = add(
        "audit",
        _admin_handler(_cmd_audit),
        "the audit log, newest first",
        "The audit log, newest first: registrations, exchanges (204 OK/NG and their cause), "
        "orders, confirmations, approvals, revocations.",
        server,
    )
    p.add_argument("--device", metavar="DEVICE_ID", help="only this device's rows")
    p.add_argument("--limit", type=_positive_int, default=50, metavar="N", help="rows (50)")
    p.add_argument("--before-id", type=_positive_int, metavar="ID", help="rows older than ID")
    p = add(
        "fingerprint",
        _admin_handler(_cmd_fingerprint),
        "the server keys' fingerprints (what a device pins)",
        "The fingerprint of each long-term server key, which a device pins (keyseed device "
        "--pin), and with --public-key the key itself (keyseed device --server-key).",
        server,
    )
    p.add_argument("--suite", choices=list(SUITES), help="only this suite")
    p.add_argument("--public-key", action="store_true", help="also print the public keys")
    p = add(
        "cook",
        _admin_handler(_cmd_cook),
        "microwave demo: order an oven to cook a recipe",
        "Order the oven to cook a recipe: pushed to it at once when it is online, else "
        "handed over with the reply to its next status report.",
        server,
    )
    device_id(p)
    p.add_argument("recipe", metavar="RECIPE", help="a recipe name, e.g. popcorn")
    for name, handler, help_text, description in (
        (
            "allow-pair",
            _cmd_allow_pair,
            "let two devices obtain a pair key through the server",
            "allow-pair: devices A and B (an unordered pair) may ask the server for a key "
            "shared with each other, relayed or end-to-end (docs/protocol.md section 12). "
            "Audited on both devices; revoke it with deny-pair.",
        ),
        (
            "deny-pair",
            _cmd_deny_pair,
            "revoke allow-pair and close the pair's key",
            "deny-pair: A and B may no longer obtain a pair key; their live pair key is "
            "closed at once (both devices are told) and the server relays nothing more.",
        ),
    ):
        p = add(name, _admin_handler(handler), help_text, description, server)
        p.add_argument("a", metavar="A", help="a device ID")
        p.add_argument("b", metavar="B", help="the other device ID")
    add(
        "pairs",
        _admin_handler(_cmd_pairs),
        "every device pair: policy and pair key state",
        "Every pair the admin named or that asked for a key: allowed, state (offered, "
        "established, closed), mode, pair epoch, initiator, who is online. Never key material.",
        server,
    )
    return admin


__all__ = [
    "ENV_SETUP_CODE",
    "Output",
    "add_admin_parser",
    "audit_table",
    "device_detail",
    "device_state",
    "device_table",
]
