"""Packaging and operations: the entry points and the systemd unit promised in the README."""
from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_python_dash_m_and_console_script_agree() -> None:
    """`python -m gateway` and the `gateway` script are the same command."""
    a = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, check=True)
    b = subprocess.run([str(ROOT / ".venv" / "bin" / "gateway"), "--help"], capture_output=True, text=True,
                       check=True)
    assert a.stdout == b.stdout
    for command in ("run", "check-config", "ingest", "letters", "quarantine", "db"):
        assert f"  {command} " in a.stdout


def test_systemd_unit_has_notify_watchdog_and_hardening() -> None:
    """The unit is Type=notify with a watchdog, reload by HUP, a state directory and the hardening set."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "systemd" / "gateway.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["WatchdogSec"] == "60s"
    assert service["StateDirectory"] == "gateway"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["User"] == "gateway"
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "true"), ("PrivateTmp", "true")):
        assert service[key] == value


def test_a_broken_configuration_stops_the_units_instead_of_restarting_them(tmp_path: Path) -> None:
    """`gateway run` and `gateway web` exit 2 on an invalid configuration, naming it, and both
    units take 2 for a failure no restart mends (Restart=on-failure would loop every 5 s)."""
    broken = tmp_path / "gateway.toml"
    broken.write_text("[smpt]\nlisten = []\n")
    for command, unit_file in (("run", "gateway.service"), ("web", "gateway-web.service")):
        proc = subprocess.run([sys.executable, "-m", "gateway", "--config", str(broken), command],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 2 and f"error: {broken}:1: smpt: unknown key" in proc.stderr, proc.stderr
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read(ROOT / "systemd" / unit_file)
        assert unit["Service"]["Restart"] == "on-failure"
        assert str(proc.returncode) in unit["Service"]["RestartPreventExitStatus"].split(), unit_file
