"""``python -m simulators fleet`` and ``python -m simulators demo``.

``fleet`` runs a scenario of any size with any fault schedule; ``demo`` is
the main job on embedded defaults (what ``make demo`` runs): about 100
devices including a few real MicroPython processes, mutual TLS and ACLs on,
for 60 seconds, with one link outage, one gateway restart and one SOS, and
the checker's table at the end. Live progress with rich.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from simulators.faults import FaultError, load_schedule
from simulators.scenario import Outcome, Scenario, ScenarioConfig

DEMO_FAULTS = ("12:link_outage:15:rec-0007", "25:gateway_kill:3", "34:sos::rec-0003",
               "40:attack")


class Progress:
    """A live panel: fleet figures and the latest events."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.stats: dict[str, Any] = {}
        self.events: list[str] = []
        self.live: Live | None = None

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "event":
            self.events.append(str(data["text"]))
            if self.live is None:
                self.console.print(data["text"])
        else:
            self.stats = data
        if self.live is not None:
            self.live.update(self.render())

    def render(self) -> Table:
        t = Table(title=self.title, show_header=False, expand=False)
        t.add_column("what", style="bold")
        t.add_column("value")
        s = self.stats
        if s:
            t.add_row("time", "%.0f s" % s.get("t", 0))
            t.add_row("devices online", "%s / %s (+%s MicroPython)" % (
                s.get("online", 0), s.get("devices", 0), s.get("micropython", 0)))
            t.add_row("records signed", str(s.get("records", 0)))
            t.add_row("in device outboxes", str(s.get("outbox", 0)))
        for e in self.events[-8:]:
            t.add_row("", e)
        return t


def _run(cfg: ScenarioConfig, console: Console, title: str, live: bool) -> Outcome:
    progress = Progress(console, title)
    if live and console.is_terminal:
        with Live(progress.render(), console=console, refresh_per_second=4) as lv:
            progress.live = lv
            out = Scenario(cfg, progress).run()
            progress.live = None
    else:
        out = Scenario(cfg, progress).run()
    return out


def _print_outcome(out: Outcome, console: Console) -> None:
    out.report.render(console)
    g = out.gateway
    if "error" not in g:
        rej = g.get("rejected", {})
        console.print("gateway: accepted %s, forwarded %s, duplicates dropped %s, "
                      "rejected %s" % (g.get("accepted"), g.get("forwarded"),
                                       g.get("duplicates"),
                                       ", ".join("%s %s" % kv for kv in sorted(rej.items()))
                                       or "none"))
    else:
        console.print("gateway status unavailable: %s" % g["error"])
    if out.rogue:
        console.print("rogue client: %s" % ", ".join("%s %s" % kv for kv in out.rogue.items()))
    console.print("verdict: %s" % ("PASS — nothing lost, no attack forwarded" if out.ok
                                   else "FAIL"))


def _workdir(arg: str | None) -> Path:
    if arg:
        p = Path(arg)
        p.mkdir(parents=True, exist_ok=True)
        return p
    return Path(tempfile.mkdtemp(prefix="fieldtrace-"))


def cmd_fleet(args: argparse.Namespace) -> int:
    console = Console()
    try:
        faults = load_schedule(args.faults_file, args.fault)
        cfg = ScenarioConfig(
            workdir=_workdir(args.workdir), recorders=args.recorders,
            wristbands=args.wristbands, micropython=args.micropython,
            duration_s=args.duration, seed=args.seed, tls=not args.no_tls,
            faults=tuple(faults), json_path=Path(args.json) if args.json else None)
    except (FaultError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    console.print("fieldtrace fleet: %d recorders, %d wristbands (%d on MicroPython), %g s, "
                  "TLS %s; work dir %s" % (cfg.recorders, cfg.wristbands, cfg.micropython,
                                           cfg.duration_s, "on" if cfg.tls else "OFF",
                                           cfg.workdir))
    out = _run(cfg, console, "fieldtrace fleet", not args.quiet)
    _print_outcome(out, console)
    return 0 if out.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    console = Console()
    cfg = ScenarioConfig(
        workdir=_workdir(args.workdir), recorders=70, wristbands=30,
        micropython=args.micropython, duration_s=args.duration, seed=1, tls=True,
        faults=tuple(load_schedule(None, list(DEMO_FAULTS))),
        json_path=Path(args.json) if args.json else None)
    console.print("[bold]fieldtrace demo[/bold]: 70 recorders and 30 wristbands around "
                  "Zhucheng (%d of them real MicroPython processes), mutual TLS and per-device "
                  "ACLs on, %g s with a link outage, a gateway SIGKILL and an SOS, then a "
                  "rogue client.\nwork dir %s" % (cfg.micropython, cfg.duration_s, cfg.workdir))
    started = time.monotonic()
    out = _run(cfg, console, "fieldtrace demo", True)
    _print_outcome(out, console)
    console.print("took %.0f s; full report: %s" % (
        time.monotonic() - started, args.json or "(add --json FILE)"))
    if args.json:
        Path(args.json).write_text(json.dumps(out.to_dict(), indent=1, sort_keys=True))
    return 0 if out.ok else 1


def add_fleet(sub: Any) -> None:
    p = sub.add_parser("fleet", help="run a simulated fleet against a real site and check it")
    p.add_argument("--recorders", type=int, default=10)
    p.add_argument("--wristbands", type=int, default=5)
    p.add_argument("--micropython", type=int, default=0,
                   help="how many of them run as real MicroPython processes")
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fault", action="append", default=[],
                   help="AT:ACTION[:ARG[:DEVICES]] (see simulators/faults.py); repeatable")
    p.add_argument("--faults-file", help="a fault schedule, one fault per line")
    p.add_argument("--no-tls", action="store_true",
                   help="plaintext local broker without ACLs (security off: for comparison)")
    p.add_argument("--workdir", help="keep brokers' files, logs and flash here")
    p.add_argument("--json", help="write the checker's and the gateway's figures here")
    p.add_argument("--quiet", action="store_true", help="no live panel")
    p.set_defaults(func=cmd_fleet)


def add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the main job on embedded defaults (make demo)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of fleet time")
    p.add_argument("--micropython", type=int, default=3,
                   help="devices that run as real MicroPython processes")
    p.add_argument("--workdir")
    p.add_argument("--json")
    p.set_defaults(func=cmd_demo)
