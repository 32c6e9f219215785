"""Configuration: the shipped example is valid, and every error names file, key and reason."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Gateway
from ports import free_port

from gateway import config as config_mod


def _check(path: Path, *, user: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(path), "check-config"],
                          capture_output=True, text=True, cwd=ROOT, user=user, env=env)


def _at(path: Path, needle: str, nth: int = 1) -> str:
    """`path:LINE`, the line of the nth line of the file holding `needle`, as errors name it."""
    found = [n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    return f"{path}:{found[nth - 1]}"


def test_shipped_config_is_valid() -> None:
    """The example in config/ passes, and a checkout with no --config uses it with state in storage/."""
    cfg = config_mod.load(ROOT / "config" / "gateway.toml")
    assert cfg.state_dir == ROOT / "storage"
    assert cfg.registry_url == f"sqlite:///{ROOT / 'storage' / 'registry.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "gateway", "check-config"], capture_output=True, text=True,
                          cwd="/", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"{ROOT / 'config' / 'gateway.toml'}: OK" in proc.stdout


def test_gateway_config_variable_chooses_the_file(gateway: Gateway) -> None:
    """GATEWAY_CONFIG is used when --config is not given."""
    env = {**os.environ, "GATEWAY_CONFIG": str(gateway.config)}
    proc = subprocess.run([sys.executable, "-m", "gateway", "check-config"], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"{gateway.config}: OK" in proc.stdout


def test_an_empty_config_path_is_refused_not_replaced_by_the_default(gateway: Gateway) -> None:
    """`--config ""` (a unit's `--config ${UNSET}`) is a usage error, not the default file; an
    empty GATEWAY_CONFIG is as if unset."""
    for args in (("check-config",), ("letters", "list")):
        proc = subprocess.run([sys.executable, "-m", "gateway", "--config", "", *args], capture_output=True,
                              text=True, cwd=ROOT, env=gateway.env())
        assert proc.returncode == 2 and "--config: an empty path names no file" in proc.stderr, proc.stderr
        assert "OK" not in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "gateway", "--config", str(gateway.config), "check-config"],
                          capture_output=True, text=True, cwd=ROOT, env=gateway.env(GATEWAY_CONFIG=""))
    assert proc.returncode == 0 and f"{gateway.config}: OK" in proc.stdout, proc.stderr


def test_unknown_key_wrong_type_and_unknown_department(gateway: Gateway) -> None:
    """Each error is reported on its own line with file, dotted key and reason; exit status is non-zero."""
    text = gateway.config.read_text()
    text = text.replace("max_attempts = 3", "max_attempts = \"three\"\nmax_atempts = 4")
    text = text.replace('department = "general-office"', 'department = "mailroom"')
    text = text.replace('owners = ["sales.desk@example.org"]', 'owners = ["not an address"]')
    gateway.config.write_text(text)
    proc = _check(gateway.config)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    # Each names the line the setting is written on.
    three = _at(gateway.config, 'max_attempts = "three"')
    assert f"error: {three}: spool.max_attempts: must be a number, not 'three'" in lines
    assert f"error: {_at(gateway.config, 'max_atempts = 4')}: spool.max_atempts: unknown key" in lines
    assert (f"error: {_at(gateway.config, 'not an address')}: departments[1].owners: 'not an address' is not an "
            "e-mail address") in lines
    # Cross-checks run only once the types are right, so fix those and look again.
    gateway.config.write_text(text.replace("max_attempts = \"three\"\nmax_atempts = 4", "max_attempts = 3")
                              .replace('["not an address"]', '["sales.desk@example.org"]'))
    proc = _check(gateway.config)
    assert proc.returncode == 1
    mailroom = _at(gateway.config, 'department = "mailroom"')
    assert (f"error: {mailroom}: triage.department: no department with id 'mailroom' "
            f"(known: business, general-office)") in proc.stderr.splitlines()


def test_a_valid_file_is_not_scanned_for_lines(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding the line of each key is only for error messages: loading a valid file (each command
    does, and each reload) does not scan it; an invalid one still names the line of each error."""
    scans: list[str] = []
    scanner = config_mod._KeyLines

    def counted(text: str) -> config_mod._KeyLines:
        scans.append(text)
        return scanner(text)

    monkeypatch.setattr(config_mod, "_KeyLines", counted)
    config_mod.load(gateway.config)
    assert scans == []
    gateway.config.write_text(gateway.config.read_text().replace("max_attempts = 3", 'max_attempts = "three"'))
    with pytest.raises(config_mod.ConfigError) as refused:
        config_mod.load(gateway.config)
    assert len(scans) == 1
    assert str(refused.value.issues[0]).startswith(_at(gateway.config, 'max_attempts = "three"') + ": ")
    gateway.config.write_text(gateway.config.read_text().replace('max_attempts = "three"', "max_attempts = 3")
                              .replace('department = "general-office"', 'department = "mailroom"'))
    with pytest.raises(config_mod.ConfigError) as refused:
        config_mod.load(gateway.config)
    assert len(scans) == 2
    assert str(refused.value.issues[0]).startswith(_at(gateway.config, 'department = "mailroom"') + ": ")


def test_duplicate_department_and_shared_address(gateway: Gateway) -> None:
    """Two departments with one id, or one address claimed by two departments, are refused."""
    gateway.config.write_text(gateway.config.read_text() + '''
[[departments]]
id = "business"
name = "Business again"
owners = ["x@example.org"]
head = "y@example.org"
addresses = ["liaison@example.org"]
''')
    proc = _check(gateway.config)
    assert proc.returncode == 1
    again, address = _at(gateway.config, 'id = "business"', 2), _at(gateway.config, 'addresses = ["liaison@', 2)
    assert f"{again}: departments[2].id: duplicate department id 'business' (also departments[1])" in proc.stderr
    assert (f"{address}: departments[2].addresses[0]: liaison@example.org already belongs to "
            f"department 'general-office'") in proc.stderr


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    """A syntax error names the line; a missing file says so."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nstate_dir = \n")
    proc = _check(bad)
    assert proc.returncode == 1
    assert f"{bad}: (top level): not valid TOML: Invalid value (at line 2, column 13)" in proc.stderr
    proc = _check(tmp_path / "nope.toml")
    assert proc.returncode == 1
    assert f"{tmp_path / 'nope.toml'}: (top level): file not found" in proc.stderr


def test_missing_required_sections(tmp_path: Path) -> None:
    """An empty file lacks departments and triage, and says which."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    proc = _check(empty)
    assert proc.returncode == 1
    assert f"{empty}: triage: required key is missing" in proc.stderr
    assert f"{empty}: departments: required key is missing" in proc.stderr


def test_bad_timezone_and_number_template(gateway: Gateway) -> None:
    """Values that parse but make no sense are refused with the reason."""
    gateway.config.write_text(gateway.config.read_text().replace(
        'timezone = "Asia/Shanghai"', 'timezone = "Mars/Olympus"\nletter_number = "{year}-{serial}"'))
    proc = _check(gateway.config)
    assert proc.returncode == 1
    assert f"{_at(gateway.config, 'Mars/Olympus')}: gateway.timezone: unknown time zone 'Mars/Olympus'" in proc.stderr
    assert (f"{_at(gateway.config, 'letter_number')}: gateway.letter_number: letter number template "
            f"'{{year}}-{{serial}}': unknown field {{serial}} (allowed: channel, day, month, seq, year)") in proc.stderr


def test_unwritable_state_directory() -> None:
    """A state directory the daemon's user cannot write is an error naming the directory."""
    # Not pytest's tmp_path: its base is 0700 and the child must read the config.
    tmp_path = Path(tempfile.mkdtemp(prefix="gw-cfg-"))
    os.chmod(tmp_path, 0o755)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)  # owned by root: not writable for nobody
    gw = Gateway(tmp_path)
    gw.config.write_text(gw.config.read_text().replace(str(gw.state), str(locked)))
    config_text = gw.config.read_text()
    where = _at(gw.config, "state_dir")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes `nobody`, as a daemon's dedicated user would be
        os.close(read_end)
        os.setgid(65534)
        os.setuid(65534)
        try:
            config_mod.load(gw.config)
            message = "accepted"
        except config_mod.ConfigError as exc:
            message = str(exc)
        except OSError as exc:  # the config file itself might be unreadable
            message = f"oserror {exc}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        message = fh.read()
    os.waitpid(pid, 0)
    shutil.rmtree(tmp_path)
    assert config_text
    assert message == f"{where}: gateway.state_dir: directory {locked} is not writable: Permission denied"


def test_shipped_imap_examples_are_valid_and_every_account_key_is_documented(tmp_path: Path) -> None:
    text = (ROOT / "config" / "gateway.toml").read_text()
    for key in config_mod.ImapAccount.model_fields:
        assert f"#   {key}" in text or f"{key}, " in text or f", {key}" in text, f"{key} is not documented"
    lines = text.splitlines()
    first = lines.index("# [[imap.accounts]]")
    end = next(i for i in range(first, len(lines)) if not lines[i].startswith("#"))
    block = "\n".join(line[2:] for line in lines[first:end])
    assert block.count("[[imap.accounts]]") == 2
    secret = tmp_path / "imap-liaison.password"
    secret.write_text("secret\n")
    block = block.replace("/etc/gateway/imap-liaison.password", str(secret))
    copy = tmp_path / "gateway.toml"
    shutil.copy(ROOT / "config" / "rules.yaml", tmp_path / "rules.yaml")
    copy.write_text(text.replace("[logging]", block + "\n\n[logging]", 1).replace(
        'state_dir = "../storage"', f'state_dir = "{tmp_path / "state"}"'))
    cfg = config_mod.load(copy)
    assert [a.name for a in cfg.model.imap.accounts] == ["liaison", "sales"]
    assert cfg.model.imap.accounts[1].token_command == ["/usr/local/bin/m365-token", "sales@example.org"]


def _modules_after_import(module: str) -> set[str]:
    """The gateway modules a fresh interpreter has loaded after importing `module`."""
    proc = subprocess.run([sys.executable, "-c", f"import sys, {module}; "
                           "print(' '.join(m for m in sys.modules if m.startswith('gateway')))"],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    return set(proc.stdout.split())


def test_configuration_and_classification_import_each_other_not() -> None:
    """The configuration knows nothing of the rules, and the rules nothing of the configuration."""
    config_side = _modules_after_import("gateway.config")
    assert "gateway.config" in config_side
    assert not {m for m in config_side if m.startswith("gateway.stages")}, config_side
    for module in ("gateway.stages.classify.rules", "gateway.stages.classify.schema"):
        rules_side = _modules_after_import(module)
        assert module in rules_side
        assert "gateway.config" not in rules_side, rules_side



def test_folders_of_their_own_and_finite_numbers(gateway: Gateway) -> None:
    """The fax drop folder is emptied and the archive written and purged: neither may be the state
    directory (the registry is there), hold it, or share a folder with the spool, the message
    store or each other. An interval of inf (or beyond any clock) is refused by name, and so is a
    registry URL of neither database (it would fail only at the first command)."""
    text = gateway.config.read_text()
    state = gateway.state
    spool_new, shared = state / "spool" / "new", state / "shared"
    for edited, key, says in (
            (text + '\n[fax]\ndrop_folder = ""\n', "fax.drop_folder", f"{state} is the state directory or holds it"),
            (text + '\n[fax]\ndrop_folder = ".."\n', "fax.drop_folder",
             f"{state.parent} is the state directory or holds it"),
            (text + '\n[fax]\ndrop_folder = "spool/new"\n', "fax.drop_folder",
             f"{spool_new} is, holds or lies in {state / 'spool'} (spool (in gateway.state_dir))"),
            (text + '\n[archive]\nfolder = "messages"\n', "archive.folder",
             f"{state / 'messages'} is, holds or lies in {state / 'messages'}"),
            (text + f'\n[fax]\ndrop_folder = "{shared}"\n[storage]\narchive_dir = "{shared / "archive"}"\n',
             "fax.drop_folder", f"{shared} is, holds or lies in {shared / 'archive'} (storage.archive_dir)"),
            (text.replace("rescan_seconds = 1", "rescan_seconds = inf"), "spool.rescan_seconds",
             "Input should be a finite number"),
            (text + "\n[fax]\npoll_seconds = 1e12\n", "fax.poll_seconds", "at most 1,000,000,000"),
            (text + '\n[[imap.accounts]]\nname = "a"\nhost = "127.0.0.1"\nusername = "a"\npassword_env = "PW"\n'
                    'folders = ["INBOX", "Done"]\nafter = "move"\nmove_to = "Done"\n', "imap.accounts[0]",
             "move_to 'Done' is one of the folders this account watches: each message would be taken again"),
            (text.replace('url = ""', 'url = "not a url"'), "registry.url", "a SQLite URL (sqlite:////path/"),
            (text.replace('url = ""', 'url = "mysql://x@localhost/register"'), "registry.url",
             "a SQLite URL (sqlite:////path/registry.sqlite3) or a PostgreSQL one (postgresql://user@host/database)")):
        gateway.config.write_text(edited)
        proc = _check(gateway.config)
        assert proc.returncode == 1, edited[-200:]
        assert re.search(rf"^error: {re.escape(str(gateway.config))}:[0-9]+: {re.escape(f'{key}: {says}')}",
                         proc.stderr, re.M), proc.stderr
    gateway.config.write_text(text + '\n[fax]\ndrop_folder = "fax-drop"\n')
    assert _check(gateway.config).returncode == 0


def test_values_of_another_type_than_their_key_takes_are_refused(gateway: Gateway, tmp_path: Path) -> None:
    """What pydantic alone would read as something else (true as 1, "no" as false, 0 as
    1970-01-01), a negative number of days, a NUL in a path, an AUTH users file or a certificate
    the listener would refuse at start: each is an error naming its key, and check-config is not OK."""
    text = gateway.config.read_text()
    users, certificate = tmp_path / "users", tmp_path / "cert.pem"
    users.write_text("# who may submit\nalice:notahash\n")
    certificate.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    for edited, key, says in (
            (text.replace("max_attempts = 3", "max_attempts = true"), "spool.max_attempts",
             "must be a number, not True"),
            (text.replace("max_attempts = 3", "max_attempts = 2.5"), "spool.max_attempts", "must be a whole number"),
            (text + "\n[reminders]\nenabled = 1\n", "reminders.enabled", "must be true or false, not 1"),
            (text + '\n[archive]\nrelease_after_verify = "no"\n', "archive.release_after_verify",
             "must be true or false, not 'no'"),
            (text + "\n[calendar]\nholidays = [2026-10-01, 0]\n", "calendar.holidays", "must be a date"),
            (text + "\n[deadlines]\nurgency = { urgent = -2 }\n", "deadlines.urgency.urgent",
             "greater than or equal to 0"),
            (text + '\n[classify]\nrules_file = "rules\\u0000.yaml"\n', "classify.rules_file",
             "contains a NUL character"),
            (text.replace("[smtp]\n", "[smtp]\nsession_timeout = 0\n", 1), "smtp.session_timeout", "greater than 0"),
            (text.replace("[smtp]\n", f'[smtp]\nauth_users_file = "{users}"\ntls_certificate = "{certificate}"\n'
                                        f'tls_key = "{certificate}"\n', 1), "smtp.auth_users_file",
             f"{users}:2: expected 'user:scrypt$...' (as gateway smtp-passwd writes them)"),
            (text.replace("[smtp]\n", f'[smtp]\ntls_certificate = "{certificate}"\ntls_key = "{certificate}"\n', 1),
             "smtp.tls_certificate", f"{certificate} and {certificate} do not load as a PEM certificate chain")):
        gateway.config.write_text(edited)
        with pytest.raises(config_mod.ConfigError) as refused:
            config_mod.load(gateway.config)
        assert any(issue.key == key and says in issue.reason for issue in refused.value.issues), \
            (key, [str(issue) for issue in refused.value.issues])
    gateway.config.write_text(text)
    assert config_mod.load(gateway.config).model.spool.max_attempts == 3


def test_two_listeners_on_one_port_are_refused_by_name(gateway: Gateway) -> None:
    """The SMTP listener, the web register and the metrics on one port would fail only at start,
    the second to bind: check-config names both keys (a wildcard address takes the port on all)."""
    text = gateway.config.read_text()
    smtp, web, metrics = (f"127.0.0.1:{port}" for port in (gateway.smtp_port, gateway.web_port, gateway.metrics_port))
    for edited, key, says in (
            (text.replace(f'listen = "{web}"', f'listen = "{smtp}"'), "web.listen",
             f"{smtp} is also smtp.listen[0] ({smtp}): two listeners cannot share a port"),
            (text.replace(f'listen = "{metrics}"', f'listen = "0.0.0.0:{gateway.web_port}"'), "metrics.listen",
             f"0.0.0.0:{gateway.web_port} is also web.listen ({web})"),
            (text.replace(f'listen = ["{smtp}"]', f'listen = ["{smtp}", "localhost:{gateway.smtp_port}"]'),
             "smtp.listen[1]", f"localhost:{gateway.smtp_port} is also smtp.listen[0] ({smtp})")):
        gateway.config.write_text(edited)
        proc = _check(gateway.config)
        assert proc.returncode == 1, edited
        assert re.search(rf"^error: {re.escape(str(gateway.config))}:[0-9]+: {re.escape(f'{key}: {says}')}",
                         proc.stderr, re.M), proc.stderr
    # Another address on the same port is another socket.
    gateway.config.write_text(text.replace(f'listen = "{web}"', f'listen = "127.0.0.2:{gateway.smtp_port}"'))
    assert _check(gateway.config).returncode == 0


def test_the_daemons_zeromq_endpoints_are_checked(gateway: Gateway) -> None:
    """An endpoint the daemon could not bind at start (no such address, one for both sockets, a
    port another listener has, a socket path longer than a Unix socket's) is an error naming it."""
    text = gateway.config.read_text()
    web = f"127.0.0.1:{gateway.web_port}"
    deep = gateway.state / ("x" * 100) / "wakeup.sock"
    for daemon, key, says in (
            ('wakeup_endpoint = "nonsense"', "daemon.wakeup_endpoint", "'nonsense' is not ipc://PATH or tcp://HOST:PORT"),
            ('events_endpoint = "tcp://127.0.0.1"', "daemon.events_endpoint",
             "'tcp://127.0.0.1' is not ipc://PATH or tcp://HOST:PORT"),
            ('events_endpoint = "ipc://{state_dir}/run/wakeup.sock"', "daemon",
             "wakeup_endpoint and events_endpoint are one endpoint: each needs its own"),
            (f'wakeup_endpoint = "tcp://{web}"', "daemon.wakeup_endpoint", f"{web} is also web.listen ({web})"),
            (f'events_endpoint = "tcp://*:{gateway.smtp_port}"', "daemon.events_endpoint",
             f"*:{gateway.smtp_port} is also smtp.listen[0]"),
            (f'wakeup_endpoint = "ipc://{deep}"', "daemon.wakeup_endpoint",
             f"ipc://{deep}: a Unix socket's path has at most 107 bytes")):
        gateway.config.write_text(f"{text}\n[daemon]\n{daemon}\n")
        proc = _check(gateway.config)
        assert proc.returncode == 1, daemon
        assert re.search(rf"^error: {re.escape(str(gateway.config))}:[0-9]+: {re.escape(f'{key}: {says}')}",
                         proc.stderr, re.M), proc.stderr
    gateway.config.write_text(f'{text}\n[daemon]\nwakeup_endpoint = "tcp://127.0.0.1:{free_port()}"\n')
    assert _check(gateway.config).returncode == 0
