"""keyseed.demo
~~~~~~~~~~~~~

``keyseed demo``: a server and three microwave ovens on loopback, each a real ``keyseed``
process (the server with SQLite in a temporary folder, the ovens with their keystores beside
it), two more ovens with pair keys (:mod:`keyseed.demopairs`), and a narration of every flow
of the scheme, driven from the setup PC's side exactly as ``keyseed admin`` drives it
(:mod:`keyseed.console.client`):

=========================  ===============================================================
registration 201/202       the setup PC registers the three ovens, each with its setup code
first enrolment 203-206    the ovens power on and enrol inside their windows
confirmation 207-209       the server checks each oven answers under its current key
rekey at the device        301 at oven-1's local setup endpoint, 302, then 203-206
rekey by proxy 401-404     the setup PC orders oven-2's rekey through the server
automatic rekey            oven-3's policy (key age) makes it rekey by itself (S03)
recipe fetched             a cooking order makes oven-1 fetch the recipe from the server
cooking status             oven-1 reports "cooking", sealed under its current key
pair keys 501-506          oven-4 and oven-5 (two device agents in the demo process) are
                           refused a pair key, then allowed (allow-pair), run the end-to-end
                           X25519 exchange through the server and talk under the pair key
=========================  ===============================================================

Every step is checked, not assumed: epochs through the admin API, the audit rows of each
exchange (204 OK, the commit at 205, the ACK of 206), the oven's own status at its setup
endpoint, the server app's record of the oven's report. Then the demo prints the dashboard
URL and the admin token and runs until Ctrl-C, stopping every process it started.
``--once`` stops after the narration instead: exit 0 only if every flow succeeded, otherwise 1
and a line naming the flow that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from rich.console import Console
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from .apps.microwave import load_recipes
from .console.client import AdminClient, ConsoleError, DeviceClient, Settings, read_secret_file
from .protocol.policy import DEFAULT_POLICY

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

OVENS = ("oven-1", "oven-2", "oven-3")
#: The oven whose policy makes it rekey by itself.
AUTO_OVEN = "oven-3"
#: Key age (seconds) after which the automatic oven rekeys, by default.
AUTO_AGE = 5
#: The recipe the demo cooks.
RECIPE = "popcorn"
#: Bound on every wait: only a hang reaches it.
WAIT = 30.0

T = TypeVar("T")


class FlowFailed(Exception):
    """A flow did not do what the scheme says; the message says what was missing."""


# -- processes --------------------------------------------------------------------------


def _clock(at: float | None) -> str:
    return "-" if at is None else time.strftime("%H:%M:%S", time.localtime(at))


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The demo's environment without any KEYSEED_ setting, so that a user's server, device
    or admin configuration cannot leak into the demo's processes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSEED_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Proc:
    """A ``keyseed`` process started by the demo; stdout and stderr go to files."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    log: Path

    @classmethod
    def start(cls, name: str, root: Path, argv: list[str], env: dict[str, str]) -> Proc:
        out, log = root / f"{name}.out", root / f"{name}.log"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        with (
            os.fdopen(os.open(out, flags, 0o600), "wb") as fo,
            os.fdopen(os.open(log, flags, 0o600), "wb") as fl,
        ):
            popen = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                [sys.executable, "-m", *argv],
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fl,
                env=env,
                # Its own session: Ctrl-C reaches the demo only, which stops the ovens first,
                # then the server.
                start_new_session=True,
            )
        return cls(name, popen, out, log)

    def wait_line(self, pattern: re.Pattern[str], what: str) -> re.Match[str]:
        """The first stdout line matching ``pattern`` (the process prints it at start)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for line in self.out.read_text("utf-8", errors="replace").splitlines():
                m = pattern.search(line)
                if m:
                    return m
            if self.popen.poll() is not None:
                raise FlowFailed(
                    f"{self.name} exited with code {self.popen.returncode} before {what}"
                )
            time.sleep(0.05)
        raise FlowFailed(f"{self.name} did not print {what}")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop within a few seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.log.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Oven:
    name: str
    code: str
    proc: Proc | None = None
    #: Its local setup endpoint, and the device-local token file beside its keystore.
    endpoint: Settings | None = None
    token_file: Path | None = None
    endpoint_url: str = ""


@dataclass
class Result:
    key: str
    title: str
    numbers: str
    ok: bool | None = None
    evidence: str = ""


FLOWS: tuple[tuple[str, str, str], ...] = (
    ("registration", "Registration", "201/202"),
    ("enrolment", "First enrolment", "203-206"),
    ("confirmation", "Arrival confirmation", "207-209"),
    ("device-rekey", "Rekey at the device", "301/302"),
    ("proxy-rekey", "Rekey by proxy", "401-404"),
    ("automatic-rekey", "Automatic rekey by policy", "S03"),
    ("recipe", "Recipe fetched", "APP"),
    ("cooking-status", "Cooking status under the current key", "APP"),
    ("pair-keys", "Two microwaves talking end-to-end", "501-506"),
)


_BANNER_FP = re.compile(r"^server key hpke-x25519(?: \(new\))?: fingerprint ([0-9a-f]{64})$")
_BANNER_TOKEN = re.compile(r"^admin token \(shown once; store it now\): (\S+)$")
_BANNER_DEVICE = re.compile(r"^device listener: (ws://\S+)/v1/device$")
_BANNER_ADMIN = re.compile(r"^admin listener: (http://\S+)/v1/admin$")
_ENDPOINT = re.compile(r"^setup endpoint: (http://\S+?)/v1/ \(token in (.+)\)$")


# -- the demo ---------------------------------------------------------------------------


@dataclass
class Demo:
    """One run: the processes, the clients, and the narration."""

    root: Path
    console: Console
    auto_age: int = AUTO_AGE
    port: int = 0
    admin_port: int = 0
    server: Proc | None = None
    admin: AdminClient | None = None
    admin_url: str = ""
    device_url: str = ""
    fingerprint: str = ""
    token: str = field(default="", repr=False)
    token_file: Path | None = None
    ovens: dict[str, Oven] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    #: The pair of ovens of the pair-keys flow (keyseed.demopairs.PairOvens), once started.
    pair_ovens: Any = None

    # -- narration ------------------------------------------------------------------------

    def step(self, number: str, route: str, text: str) -> None:
        """One message of the scheme: its number, who sends it to whom, what it carries."""
        self.console.print(
            Text.assemble(
                (f"{number:>7} ", "bold cyan"),
                (f"{route:<20} ", "magenta"),
                text,
            )
        )

    def check(self, text: str) -> None:
        """What was verified, and where."""
        self.console.print(Text.assemble(("        ✓ ", "bold green"), (text, "green")))

    def note(self, text: str) -> None:
        self.console.print(Text("        " + text, style="dim"))

    # -- plumbing -------------------------------------------------------------------------

    def api(self) -> AdminClient:
        assert self.admin is not None
        return self.admin

    def wait_for(self, what: str, probe: Callable[[], T | None]) -> T:
        """Poll ``probe`` until it returns something true; a bounded wait, then FlowFailed."""
        deadline = time.monotonic() + WAIT
        last: object = None
        while time.monotonic() < deadline:
            try:
                value = probe()
            except ConsoleError as exc:
                last = exc
            else:
                if value:
                    return value
                last = value
            time.sleep(0.05)
        raise FlowFailed(f"{what} did not happen within {WAIT:g} s (last seen: {last})")

    def view(self, device_id: str) -> dict[str, Any]:
        return self.api().device(device_id)

    def settled(self, device_id: str, epoch: int) -> dict[str, Any] | None:
        """The device's view once it holds ``epoch`` (or later) with nothing in flight."""
        v = self.view(device_id)
        if v["epoch"] >= epoch and not v["pending_exchange"] and not v["owed_206"]:
            return v
        return None

    def audit_kinds(self, device_id: str, epoch: int | None = None) -> list[str]:
        rows = self.api().audit(device_id=device_id, limit=200)
        return [r["kind"] for r in rows if epoch is None or r["epoch"] == epoch]

    def exchange_audited(self, device_id: str, epoch: int, commit: str) -> list[str]:
        """Wait until the server's audit log holds the three steps of one exchange."""
        want = ("204_ok", commit, "206_acked")
        return self.wait_for(
            f"the audit rows of {device_id}'s exchange to epoch {epoch}",
            lambda: (
                kinds
                if all(k in (kinds := self.audit_kinds(device_id, epoch)) for k in want)
                else None
            ),
        )

    def oven_client(self, name: str) -> DeviceClient:
        endpoint = self.ovens[name].endpoint
        assert endpoint is not None
        return DeviceClient(endpoint, timeout=10)

    def oven_status(self, name: str) -> dict[str, Any]:
        with self.oven_client(name) as c:
            return c.status()

    def oven_holds(self, name: str, epoch: int) -> dict[str, Any] | None:
        """The oven's own status once it holds ``epoch`` (or later) and a seed."""
        status = self.oven_status(name)
        return status if status["epoch"] >= epoch and status["has_seed"] else None

    def narrate_exchange(self, device: str, old: int, new: int, *, why: str) -> None:
        """203-206 of one rekey under the current key, told once the server's audit log and
        the device's own status show that it happened."""
        view = self.wait_for(
            f"{device} to settle on epoch {new}", functools.partial(self.settled, device, new)
        )
        if view["epoch"] != new and device != AUTO_OVEN:
            raise FlowFailed(f"{device} is at epoch {view['epoch']}, expected {new}")
        self.exchange_audited(device, new, "rekeyed")
        status = self.wait_for(
            f"{device} to report epoch {new} with a seed",
            functools.partial(self.oven_holds, device, new),
        )
        self.step(
            "203",
            f"{device} → server",
            f"{why}: P sealed to the one-time server key of its seed, in a channel under "
            f"the epoch-{old} key",
        )
        self.step("204", f"server → {device}", "OK, MAC under the new key K = HKDF(R0, R1, ...)")
        self.step(
            "205",
            f"{device} → server",
            f"key confirmation, sealed under K: the server commits epoch {new}",
        )
        self.step(
            "206",
            f"server → {device}",
            "the next seed R0′, a one-time server key and the rekey policy; ACK_206 back",
        )
        self.check(
            f"admin API: {device} at epoch {view['epoch']}, nothing in flight; audit: 204_ok, "
            f"rekeyed, 206_acked at epoch {new}; {device}'s endpoint: epoch {status['epoch']}, "
            "seed held"
        )

    # -- start ----------------------------------------------------------------------------

    def start_server(self) -> None:
        data = self.root / "server"
        argv = [
            "keyseed", "server",
            "--data", str(data),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--admin-host", "127.0.0.1",
            "--admin-port", str(self.admin_port),
            "--app", "microwave",
            "--confirm-timeout", "5",
            "--log-level", "info",
        ]  # fmt: skip
        self.server = Proc.start("server", self.root, argv, _child_env())
        admin = self.server.wait_line(_BANNER_ADMIN, "its admin listener")
        self.admin_url = admin.group(1)
        self.device_url = self.server.wait_line(_BANNER_DEVICE, "its device listener").group(1)
        self.fingerprint = self.server.wait_line(_BANNER_FP, "its key fingerprint").group(1)
        self.token = self.server.wait_line(_BANNER_TOKEN, "the admin token").group(1)
        # The token goes where `keyseed admin` reads it: a 0600 file.
        self.token_file = self.root / "admin.token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.token + "\n")
        self.admin = AdminClient(
            Settings(self.admin_url, read_secret_file(self.token_file, "token file")), timeout=20
        )
        self.console.print(
            Text.assemble(
                ("server   ", "bold"),
                f"device listener {self.device_url}/v1/device · admin {self.admin_url} · "
                f"SQLite in {data}",
            )
        )
        self.console.print(
            Text.assemble(
                ("         ", ""), (f"hpke-x25519 key fingerprint {self.fingerprint}", "dim")
            )
        )

    def start_oven(self, oven: Oven) -> None:
        folder = self.root / oven.name
        folder.mkdir(mode=0o700)
        argv = [
            "keyseed.device",
            "--id", oven.name,
            "--server", self.device_url,
            "--keystore", str(folder / "keystore"),
            "--pin", self.fingerprint,
            "--listen", "127.0.0.1:0",
            "--backoff-initial", "0.1",
            "--backoff-max", "2",
            "--status-interval", "2",
            "--rekey-min-interval", "0",
            "--log-level", "info",
        ]  # fmt: skip
        # The setup code travels in the environment: flags show in the process list.
        env = _child_env({"KEYSEED_DEVICE_SETUP_CODE": oven.code})
        oven.proc = Proc.start(oven.name, self.root, argv, env)

    def await_endpoint(self, oven: Oven) -> None:
        assert oven.proc is not None
        m = oven.proc.wait_line(_ENDPOINT, "its setup endpoint")
        oven.endpoint_url = m.group(1)
        oven.token_file = Path(m.group(2))
        token = read_secret_file(oven.token_file, "device token file")
        oven.endpoint = Settings(oven.endpoint_url, token)

    # -- flows ----------------------------------------------------------------------------

    def flow_registration(self) -> str:
        for name in OVENS:
            oven = self.ovens[name] = Oven(name, f"{secrets.randbelow(10**8):08d}")
            policy = None
            extra = ""
            if name == AUTO_OVEN:
                policy = {
                    "soft_messages": DEFAULT_POLICY.soft_messages,
                    "hard_messages": DEFAULT_POLICY.hard_messages,
                    "soft_age_s": self.auto_age,
                    "hard_age_s": max(3600, self.auto_age * 100),
                }
                extra = f", policy: rekey when the key is {self.auto_age} s old"
            self.step(
                "201",
                "setup PC → server",
                f"register {name}: hpke-x25519, setup code ········, window 600 s{extra}",
            )
            view = self.api().register(name, setup_code=oven.code, window_s=600, policy=policy)
            self.step(
                "202",
                "server → setup PC",
                f"registered; window open until {_clock(view['window_expires_at'])}, "
                "setup code required",
            )
            if not (view["window_open"] and view["code_required"] and view["epoch"] == 0):
                raise FlowFailed(f"{name}'s registration did not open a coded window: {view}")
        views = self.api().devices()
        names = sorted(v["device_id"] for v in views)
        if names != sorted(OVENS):
            raise FlowFailed(f"the server lists {names}")
        kinds = [k for n in OVENS for k in self.audit_kinds(n)]
        if kinds.count("registered") != len(OVENS):
            raise FlowFailed("the audit log lacks a registration")
        self.check("admin API: three devices awaiting enrolment; audit: three registrations")
        return "3 ovens registered, windows open"

    def flow_enrolment(self) -> str:
        self.note(
            "power on: three `keyseed device` processes, each pinning the server key's "
            "fingerprint and holding its setup code"
        )
        for oven in self.ovens.values():
            self.start_oven(oven)
        for oven in self.ovens.values():
            self.await_endpoint(oven)
        for name in OVENS:
            view = self.wait_for(f"{name} to enrol", functools.partial(self.settled, name, 1))
            if not (view["enrolled"] and view["confirmed"] and not view["window_open"]):
                raise FlowFailed(f"{name} enrolled but its view is {view}")
            self.exchange_audited(name, 1, "enrolled")
            self.wait_for(
                f"{name} to hold epoch 1 and a seed", functools.partial(self.oven_holds, name, 1)
            )
            self.step("HELLO", f"{name} → server", "no key yet: an enrolment connection")
            self.step(
                "203",
                f"{name} → server",
                "P = PKE(R1 ‖ S ‖ A) to the pinned server key, bound to the setup code",
            )
            self.step("204", f"server → {name}", "OK, MAC under the first key K")
            self.step("205", f"{name} → server", "key confirmation under K: epoch 1 committed")
            self.step(
                "206",
                f"server → {name}",
                "its first seed R0′, a one-time server key, the policy; ACK_206 back",
            )
        self.check(
            "admin API: all three enrolled and confirmed, windows closed; audit: "
            "204_ok, enrolled, 206_acked at epoch 1; each oven's endpoint: seed held"
        )
        return "3 ovens at epoch 1, each holding its next seed"

    def flow_confirmation(self) -> str:
        rtts = []
        for name in OVENS:
            self.step("208", "setup PC → server", f"is {name} there, under its current key?")
            result = self.api().confirm(name)
            if not result["ok"] and result["detail"] in ("not_open", "closed"):
                # oven-3 rekeys by itself every few seconds: a 207 may meet an exchange.
                self.note(f"{name} was between connections or keys ({result['detail']}); again")
                result = self.api().confirm(name)
            self.step("207", f"server ⇄ {name}", "ping and pong, sealed under the current key")
            if not result["ok"]:
                raise FlowFailed(f"{name} did not answer 207: {result['detail'] or 'failed'}")
            self.step(
                "209",
                "server → setup PC",
                f"ok, epoch {result['epoch']}, round trip {result['rtt_ms']} ms",
            )
            rtts.append(f"{name} {result['rtt_ms']} ms")
        kinds = [k for n in OVENS for k in self.audit_kinds(n)]
        if kinds.count("confirmed") < len(OVENS):
            raise FlowFailed("the audit log lacks a confirmation")
        self.check("209 ok for all three; audit: three confirmations")
        return ", ".join(rtts)

    def flow_device_rekey(self) -> str:
        name = "oven-1"
        old = self.view(name)["epoch"]
        oven = self.ovens[name]
        self.step(
            "301",
            f"setup PC → {name}",
            f"rekey, at its local endpoint {oven.endpoint_url} with its device-local token",
        )
        with self.oven_client(name) as c:
            answer = c.rekey()
        if answer.get("message") != 302 or not answer.get("accepted"):
            raise FlowFailed(f"{name} answered {answer}")
        self.step(
            "302",
            f"{name} → setup PC",
            f"accepted at epoch {answer['epoch']}, {'online' if answer['online'] else 'offline'}",
        )
        self.narrate_exchange(name, old, old + 1, why="S03 on the order")
        return f"{name}: epoch {old} → {old + 1}"

    def flow_proxy_rekey(self) -> str:
        name = "oven-2"
        old = self.view(name)["epoch"]
        self.step("401", "setup PC → server", f"rekey {name}")
        result = self.api().rekey(name)
        self.step(
            "402",
            "server → setup PC",
            f"order stored for epoch {result['order_epoch']}, "
            f"{'delivered now' if result['delivered'] else 'waiting for its next connection'}",
        )
        self.step(
            "403",
            f"server → {name}",
            f"rekey order for epoch {result['order_epoch']}, sealed under the current key",
        )
        self.step("404", f"{name} → server", "order accepted, sealed")
        self.narrate_exchange(name, old, old + 1, why="on the order")
        view = self.view(name)
        if view["order_epoch"] is not None:
            raise FlowFailed(f"{name}'s order was not cleared by the commit")
        if "rekey_ordered" not in self.audit_kinds(name, old):
            raise FlowFailed("the audit log lacks the 401 order")
        self.check(f"the commit of epoch {old + 1} cleared the order; audit: rekey_ordered (401)")
        return f"{name}: epoch {old} → {old + 1}"

    def flow_automatic_rekey(self) -> str:
        name = AUTO_OVEN
        view = self.view(name)
        policy = view.get("policy") or {}
        if policy.get("soft_age_s") != self.auto_age:
            raise FlowFailed(f"{name}'s policy in force is {policy}")
        self.note(
            f"{name}'s 206 carried a policy: rekey when the key is {self.auto_age} s old. "
            "Nobody orders anything now."
        )
        self.step("S03", name, f"key age reached {self.auto_age} s: a new key is needed")
        self.narrate_exchange(name, 1, 2, why="by itself")
        if "rekey_ordered" in self.audit_kinds(name):
            raise FlowFailed(f"{name} was ordered to rekey; the policy should have done it")
        epoch = self.view(name)["epoch"]
        self.check(
            f"no 301 and no 401 for {name}; it keeps rekeying every {self.auto_age} s "
            f"(epoch {epoch} now)"
        )
        return f"{name}: epoch 1 → {epoch} on key age alone"

    def flow_recipe(self) -> str:
        name = "oven-1"
        recipes = load_recipes()
        status = self.wait_for(
            f"{name}'s menu", lambda: s if (s := self.oven_status(name))["app"]["menu"] else None
        )
        menu = status["app"]["menu"]
        self.step("APP", f"{name} → server", "list (sealed under the current key)")
        self.step("APP", f"server → {name}", f"{len(menu)} recipes: {', '.join(menu)}")
        self.step("order", "setup PC → server", f"cook {RECIPE} on {name} (admin API)")
        order = self.api().cook(name, RECIPE)
        how = "pushed now" if order["pushed"] else "handed over with its next status report"
        self.step("APP", f"server → {name}", f"cook {RECIPE} ({how})")
        recipe = recipes[RECIPE]
        self.step("APP", f"{name} → server", f"get {RECIPE}")
        self.step(
            "APP",
            f"server → {name}",
            f"{recipe.title}: {recipe.power_w} W, {recipe.seconds} s, {len(recipe.steps)} steps",
        )
        status = self.wait_for(
            f"{name} to start cooking {RECIPE}",
            lambda: (
                s
                if (
                    (s := self.oven_status(name))["app"]["state"] == "cooking"
                    and s["app"]["recipe"] == RECIPE
                )
                else None
            ),
        )
        self.check(
            f"{name}'s endpoint: cooking {RECIPE}, {status['app']['left_s']} s left "
            "(the oven starts only once the recipe has arrived)"
        )
        return f"{name} fetched {RECIPE} ({recipe.title})"

    def flow_cooking_status(self) -> str:
        name = "oven-1"
        device_epoch = self.oven_status(name)["epoch"]
        self.step(
            "APP",
            f"{name} → server",
            f"status: cooking {RECIPE}, sealed under its epoch-{device_epoch} key",
        )
        app = self.wait_for(
            f"the server to record {name} cooking",
            lambda: (
                a
                if (
                    (a := self.api().app_state(name))["state"] == "cooking"
                    and a["recipe"] == RECIPE
                )
                else None
            ),
        )
        self.step("APP", f"server → {name}", "ack (no orders waiting)")
        view = self.view(name)
        if view["epoch"] != device_epoch:
            raise FlowFailed(f"server epoch {view['epoch']} vs oven epoch {device_epoch}")
        self.check(
            f"server app: {name} cooking {RECIPE}, {app['left_s']} s left; server and "
            f"oven agree on epoch {device_epoch}, the key the report travelled under"
        )
        return f"{name} cooking, {app['left_s']} s left, epoch {device_epoch}"

    def flow_pair_keys(self) -> str:
        from .demopairs import flow_pair_keys  # noqa: PLC0415 - it builds on this module

        return flow_pair_keys(self)

    # -- the whole run --------------------------------------------------------------------

    def run_flows(self) -> bool:
        """Each flow in turn; stops at the first that fails. Returns whether all succeeded."""
        for key, title, numbers in FLOWS:
            self.results.append(Result(key, title, numbers))
        for index, result in enumerate(self.results, 1):
            self.console.print()
            self.console.print(
                Rule(
                    Text(f" {index}. {result.title} ({result.numbers}) ", style="bold"),
                    align="left",
                    style="cyan",
                )
            )
            fn = getattr(self, "flow_" + result.key.replace("-", "_"))
            try:
                result.evidence = fn()
            except (FlowFailed, ConsoleError) as exc:
                result.ok = False
                result.evidence = str(exc)
                self.console.print(Text(f"        ✗ {exc}", style="bold red"))
                return False
            result.ok = True
        return True

    def summary(self) -> Table:
        table = Table(title="keyseed demo", header_style="bold", title_style="bold")
        table.add_column("flow")
        table.add_column("messages", no_wrap=True)
        table.add_column("result", no_wrap=True)
        table.add_column("what was checked")
        for r in self.results:
            mark = {True: ("ok", "green"), False: ("FAILED", "bold red"), None: ("not run", "dim")}
            label, style = mark[r.ok]
            table.add_row(r.title, r.numbers, Text(label, style=style), r.evidence)
        return table

    def failure_logs(self) -> None:
        procs = [p for p in (self.server, *(o.proc for o in self.ovens.values())) if p]
        for proc in procs:
            tail = proc.tail()
            if tail:
                self.console.print(Panel(Text(tail), title=f"{proc.name} log (last lines)"))

    def invitation(self) -> Panel:
        assert self.token_file is not None
        o1 = self.ovens["oven-1"]
        lines = Text()
        lines.append("dashboard    ", style="bold")
        lines.append(f"{self.admin_url}/", style="bold underline")
        lines.append("  (log in with the admin token)\n", style="dim")
        lines.append("admin token  ", style="bold")
        lines.append(f"{self.token}\n")
        lines.append("             (also in ", style="dim")
        lines.append(f"{self.token_file}", style="dim")
        lines.append(", mode 0600)\n\n", style="dim")
        lines.append("From another terminal:\n", style="bold")
        lines.append(
            f"  export KEYSEED_ADMIN_URL={self.admin_url} "
            f"KEYSEED_ADMIN_TOKEN_FILE={self.token_file}\n"
            "  keyseed admin list\n"
            "  keyseed admin rekey oven-2\n"
            "  keyseed admin cook oven-2 mug-cake\n"
            f"  keyseed admin device-rekey --device-url {o1.endpoint_url} "
            f"--device-token-file {o1.token_file}\n"
            "  keyseed admin audit --limit 20\n"
            "  keyseed admin pairs\n"
            "  keyseed admin deny-pair oven-4 oven-5\n\n"
        )
        lines.append(
            f"Logs: {self.root}/*.log   Ctrl-C stops the ovens and the server.", style="dim"
        )
        return Panel(lines, title="keyseed demo is running", border_style="green")

    def stop(self) -> None:
        """Ovens first (each closes its connection normally), then the server."""
        if self.pair_ovens is not None:
            self.pair_ovens.stop()
        if self.admin is not None:
            self.admin.close()
        for oven in self.ovens.values():
            if oven.proc is not None and oven.proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    oven.proc.popen.send_signal(signal.SIGTERM)
        for oven in self.ovens.values():
            if oven.proc is not None:
                oven.proc.stop()
        if self.server is not None:
            self.server.stop()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(
    *,
    once: bool,
    console: Console | None = None,
    folder: Path | None = None,
    auto_age: int = AUTO_AGE,
    port: int = 0,
    admin_port: int = 0,
) -> int:
    """``keyseed demo``: returns the exit code."""
    console = console or Console(highlight=False)
    root = Path(tempfile.mkdtemp(prefix="keyseed-demo-")) if folder is None else folder
    if folder is not None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=False)
    demo = Demo(root, console, auto_age=auto_age, port=port, admin_port=admin_port)
    # Ctrl-C and SIGTERM end the run the same way (also where SIGINT was inherited ignored).
    previous = {
        sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    code = EXIT_FAILED
    try:
        console.print(
            Rule(
                Text(" keyseed demo: a server and five microwave ovens on loopback ", style="bold")
            )
        )
        try:
            demo.start_server()
            ok = demo.run_flows()
        except (FlowFailed, ConsoleError) as exc:
            console.print(Text(f"keyseed demo: FAILED: server: {exc}", style="bold red"))
            demo.failure_logs()
            return EXIT_FAILED
        console.print()
        console.print(demo.summary())
        if not ok:
            failed = next(r for r in demo.results if r.ok is False)
            console.print(
                Text(
                    f"keyseed demo: FAILED: {failed.key} ({failed.numbers}): {failed.evidence}",
                    style="bold red",
                )
            )
            demo.failure_logs()
            return EXIT_FAILED
        console.print(
            Text(
                f"keyseed demo: every flow succeeded ({len(demo.results)} of {len(FLOWS)})",
                style="bold green",
            )
        )
        if once:
            return EXIT_OK
        console.print(demo.invitation())
        code = EXIT_OK
        while True:
            time.sleep(0.5)
            if demo.server is not None and not demo.server.alive():
                console.print(Text("keyseed demo: the server stopped", style="bold red"))
                demo.failure_logs()
                return EXIT_FAILED
    except KeyboardInterrupt:
        console.print()
        console.print(Text("stopping the ovens and the server ...", style="dim"))
        # After the narration, Ctrl-C is how the demo ends; before, it cut the run short.
        return EXIT_OK if code == EXIT_OK else EXIT_INTERRUPTED
    finally:
        # A second Ctrl-C must not leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if folder is None:
            shutil.rmtree(root, ignore_errors=True)
        console.print(Text("keyseed demo stopped", style="dim"))


class _Formatter(argparse.HelpFormatter):
    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {value}")
    return value


def _age(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError("between 1 and 3600 seconds")
    return value


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    folder = None if args.dir is None else Path(args.dir)
    if folder is not None and folder.exists():
        parser.error(f"--dir {folder} exists; name a new folder")
    return run_demo(
        once=args.once,
        folder=folder,
        auto_age=args.auto_rekey_age,
        port=args.port,
        admin_port=args.admin_port,
    )


def add_demo_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``demo``; it binds ``handler`` and ``parser``."""
    p = commands.add_parser(
        "demo",
        help="a server and three microwave ovens on loopback, every flow narrated",
        description="Start a server (SQLite in a temporary folder) and three microwave ovens "
        "(keyseed device processes) on loopback, and narrate, with the scheme's message "
        "numbers, every flow: registration 201/202, first enrolment 203-206, confirmation "
        "207-209, rekey at the device 301/302, rekey by proxy 401-404, an automatic rekey by "
        "policy, a recipe fetched and a cooking status sent under the current key; then two "
        "more ovens (device agents in the demo process) obtain an end-to-end pair key "
        "through the server (501-506) and talk under it. Each step "
        "is checked through the admin API, the audit log and the ovens' setup endpoints. Then "
        "print the dashboard URL and the admin token and run until Ctrl-C. With --once, stop "
        "after the narration: exit 0 only if every flow succeeded.",
        formatter_class=_Formatter,
    )
    p.add_argument("--once", action="store_true", help="narrate, then stop (exit 0: all ok)")
    p.add_argument(
        "--admin-port",
        type=_port,
        default=0,
        metavar="P",
        help="admin listener (dashboard) port on 127.0.0.1 (default: any free port)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=0,
        metavar="P",
        help="device listener port on 127.0.0.1 (default: any free port)",
    )
    p.add_argument(
        "--auto-rekey-age",
        type=_age,
        default=AUTO_AGE,
        metavar="S",
        help=f"key age after which {AUTO_OVEN} rekeys by itself (default: {AUTO_AGE})",
    )
    p.add_argument(
        "--dir",
        metavar="DIR",
        help="work in this new folder and keep it (default: a temporary folder, removed)",
    )
    p.set_defaults(handler=_run, parser=p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m keyseed.demo [--once]``: the same command without the main CLI."""
    parser = argparse.ArgumentParser(prog="keyseed")
    sub = parser.add_subparsers()
    add_demo_parser(sub)
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.handler(args, args.parser)
    return code


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["FLOWS", "Demo", "FlowFailed", "add_demo_parser", "main", "run_demo"]
