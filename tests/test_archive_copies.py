"""Copies of the archive in further folders ([archive] copies): written and checked with each
package, put right from a good one, read when the package cannot be, destroyed with it."""
from __future__ import annotations

import csv
import errno
import io
import json
import pathlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import Gateway, make_message, write_messages
from fax_samples import ENGLISH, tiff_fax

from gateway import config as config_mod
from gateway.archive import packer
from gateway.archive.packer import Archiver
from gateway.registry import Registry

RULES = """
rules:
  - name: business
    when: {recipient_department: [business]}
    set: {category: external.business, department: business}
"""


def archived_with_copy(tmp_path: Path, copy: Path, extra: str = "", *, made: bool = True) -> Gateway:
    """Two mails and a fax received in 2026-03, all closed, archived with one copy folder (made,
    as an operator makes it on the share, unless `made` is false)."""
    if made and not copy.exists():
        copy.mkdir()
    gateway = Gateway(tmp_path, rules=RULES, extra=f'[archive]\ncopies = ["{copy}"]\n{extra}')
    files = write_messages(tmp_path, (make_message(n, subject=f"Order {n}", to="sales@example.org") for n in range(2)))
    fax = tmp_path / "fax_0105551234.tif"
    fax.write_bytes(tiff_fax([ENGLISH], resolution="fine", compression="group4"))
    gateway.run("ingest", *files, str(fax))
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
        db.execute("UPDATE letters SET received_at = '2026-03-10 02:00:00.000000', status = 'closed'")
    return gateway


def packages(gateway: Gateway) -> dict[str, dict]:
    return {p["kind"]: p for p in json.loads(gateway.run("archive", "list", "--json").stdout)}


def files_of(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()
            and not f.name.startswith(".")}


def released(gateway: Gateway, number: str) -> bool:
    return not (gateway.state / gateway.show_json(number)["raw_path"]).exists()


def test_each_package_is_copied_and_checked_there_before_the_originals_go(tmp_path: Path) -> None:
    copy = tmp_path / "second-disk"
    gateway = archived_with_copy(tmp_path, copy)
    out = gateway.run("archive", "run", "--month", "2026-03").stdout
    mail, fax = packages(gateway)["mail"], packages(gateway)["fax"]
    assert f"{mail['path']}: copied to {copy} and verified there" in out
    assert f"{fax['path']}: copied to {copy} and verified there" in out
    archive = files_of(gateway.state / "archive")
    assert files_of(copy) == archive and mail["path"] in archive and len(archive) == 4  # mbox, 2 manifests, fax
    assert all(released(gateway, number) for number in ("2026-000001", "2026-000002", "2026-000003"))
    # A second check finds both right and writes nothing.
    again = gateway.run("archive", "verify").stdout
    assert "copied to" not in again and f"{mail['path']}: verified" in again


def test_a_copy_folder_that_is_not_there_keeps_the_originals_until_it_is(tmp_path: Path) -> None:
    """The copy folder is not there (the share not mounted; its mount point, empty, would be on the
    archive's own disk): it is never made by the gateway, and nothing is released until it is."""
    copy = tmp_path / "share"
    gateway = archived_with_copy(tmp_path, copy, made=False)
    run = gateway.run("archive", "run", "--month", "2026-03", check=False)
    assert run.returncode == 1
    mail = packages(gateway)["mail"]
    assert (f"error: {mail['path']}: copy in {copy}: the folder is not there (a share not mounted?); make it on "
            "the share once it is mounted") in run.stderr
    assert not copy.exists()
    assert ("ALERT archive: 2 package(s) without every copy (their originals are kept in the message store)"
            in run.stderr)
    # The packages themselves are right: not corrupt, and verified; nothing is released meanwhile.
    assert {p["status"] for p in packages(gateway).values()} == {"verified"}
    assert not any(released(gateway, number) for number in ("2026-000001", "2026-000002", "2026-000003"))

    copy.mkdir()
    out = gateway.run("archive", "verify").stdout
    assert f"{mail['path']}: copied to {copy} and verified there" in out
    assert files_of(copy) == files_of(gateway.state / "archive")
    assert released(gateway, "2026-000001") and released(gateway, "2026-000003")


def test_a_wrong_copy_is_written_again_and_a_wrong_package_is_restored_from_its_copy(tmp_path: Path) -> None:
    copy = tmp_path / "second-disk"
    gateway = archived_with_copy(tmp_path, copy)
    gateway.run("archive", "run", "--month", "2026-03")
    mail, fax = packages(gateway)["mail"], packages(gateway)["fax"]
    archive = gateway.state / "archive"
    right = files_of(archive)

    damaged = bytearray((copy / mail["path"]).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (copy / mail["path"]).write_bytes(bytes(damaged))
    fixed = gateway.run("archive", "verify")
    assert (f"warning: {mail['path']}: its copy in {copy} was written again; it had: SHA-256 differs from the one "
            "recorded when it was written") in fixed.stderr
    assert files_of(copy) == right

    (archive / mail["path"]).write_bytes(bytes(damaged))
    [fax_file] = list((archive / fax["path"]).iterdir())
    fax_file.write_bytes(fax_file.read_bytes()[:-10])
    (archive / mail["manifest"]).unlink()
    restored = gateway.run("archive", "verify")
    assert restored.returncode == 0, restored.stderr
    assert f"warning: {mail['path']}: restored from its copy in {copy}; it had: manifest" in restored.stderr
    assert f"warning: {fax['path']}: restored from its copy in {copy}; it had: " in restored.stderr
    assert files_of(archive) == right
    assert {p["status"] for p in packages(gateway).values()} == {"verified"}
    out = tmp_path / "out"
    gateway.run("letters", "extract", "2026-000003", str(out))
    assert [f.name for f in out.iterdir()] == ["fax_0105551234.tif"]


def test_an_archived_letter_is_read_from_its_copy_when_its_package_cannot_give_it(tmp_path: Path) -> None:
    copy = tmp_path / "second-disk"
    gateway = archived_with_copy(tmp_path, copy)
    gateway.run("archive", "run", "--month", "2026-03")
    mail = packages(gateway)["mail"]
    (gateway.state / "archive" / mail["path"]).unlink()
    shown = gateway.run("letters", "show", "2026-000001", "--json")
    assert shown.returncode == 0
    read = gateway.run("letters", "extract", "2026-000001", str(tmp_path / "out"), check=False)
    assert read.returncode == 0, read.stderr
    assert "ALERT archive: 2026-000001: " in read.stderr and f"read from its copy in {copy}" in read.stderr


def test_a_copy_without_its_circulation_record_or_a_fax_reply_is_written_again(tmp_path: Path) -> None:
    """The files a check does not read against the manifest (the circulation record, a fax's reply
    as mailed) are in each copy as in the archive folder: one missing there makes the copy wrong,
    and it is written again."""
    copy = tmp_path / "second-disk"
    gateway = archived_with_copy(tmp_path, copy)
    gateway.run("archive", "run", "--month", "2026-03", "--no-verify")
    mail, fax = packages(gateway)["mail"], packages(gateway)["fax"]
    archive = gateway.state / "archive"
    record = Path(mail["manifest"]).with_name("circulation-part-001.csv")
    reply = Path(fax["path"]) / "A202603-00003_reply-1.eml"
    (archive / record).write_text("archive_number,letter_number,circulation,started_by\nA202603-00001,x,1,leo\n")
    (archive / reply).write_bytes(b"From: office@example.org\r\nSubject: Re: fax\r\n\r\nReceived.\r\n")
    gateway.run("archive", "verify")
    right = files_of(archive)
    assert files_of(copy) == right and str(record) in right and str(reply) in right

    (copy / record).unlink()
    (copy / reply).unlink()
    fixed = gateway.run("archive", "verify")
    assert (f"warning: {mail['path']}: its copy in {copy} was written again; it had: circulation-part-001.csv: "
            "not in the copy" in fixed.stderr), fixed.stderr
    assert (f"warning: {fax['path']}: its copy in {copy} was written again; it had: A202603-00003_reply-1.eml: "
            "not in the copy" in fixed.stderr), fixed.stderr
    assert files_of(copy) == right


def test_a_letter_whose_manifest_is_damaged_is_read_from_its_copy(tmp_path: Path) -> None:
    """A manifest damaged where its bytes are no longer UTF-8 (one flipped byte) gives no letter of
    its package, but the copy gives each; without a copy the reader is told, with no traceback."""
    copy = tmp_path / "second-disk"
    gateway = archived_with_copy(tmp_path, copy)
    gateway.run("archive", "run", "--month", "2026-03")
    mail = packages(gateway)["mail"]
    manifest = gateway.state / "archive" / mail["manifest"]
    manifest.write_bytes(manifest.read_bytes().replace(b"2026-000001", b"2026-00000\xff", 1))
    read = gateway.run("letters", "extract", "2026-000002", str(tmp_path / "out"), check=False)
    assert read.returncode == 0, read.stderr
    assert "ALERT archive: 2026-000002: " in read.stderr and f"read from its copy in {copy}" in read.stderr
    shutil.rmtree(copy)
    unread = gateway.run("letters", "extract", "2026-000002", str(tmp_path / "none"), check=False)
    assert unread.returncode != 0 and "Traceback" not in unread.stderr, unread.stderr
    assert f"2026-000002: {mail['path']} cannot be read: 'utf-8' codec" in unread.stderr


def damaged_manifests(text: str) -> dict[str, str]:
    """A manifest's text damaged in a few ways, each by what it is."""
    header, row, *rest = text.splitlines(keepends=True)
    fields = next(csv.reader([header]))
    values = next(csv.reader([row]))

    def with_value(name: str, value: str) -> str:
        changed = list(values)
        changed[fields.index(name)] = value
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow(changed)
        return "".join([header, out.getvalue(), *rest])

    return {"a size that is no number": with_value("size", "12O4"),
            "an empty size": with_value("size", ""),
            "a negative size": with_value("size", "-1"),
            "a file name that is a path": with_value("file", "../../../registry.sqlite3"),
            "a column gone": text.replace(",size,", ",bytes,", 1),
            "a row cut short": header + row[:row.index(",")] + "\n",
            # The rest of the file read as one field, over the csv module's limit.
            "a stray quote": header + '"' + row * 4000}


def test_a_damaged_manifest_row_is_a_damaged_package_restored_from_its_copy(tmp_path: Path) -> None:
    """A fax package's manifest with a damaged row is a damaged package, never a traceback: put right
    from its copy when that is right; when the copy is damaged too, named, and the check fails."""
    copy = tmp_path / "second-disk"
    gateway = archived_with_copy(tmp_path, copy)
    gateway.run("archive", "run", "--month", "2026-03")
    fax = packages(gateway)["fax"]
    manifest, copied = gateway.state / "archive" / fax["manifest"], copy / fax["manifest"]
    right = manifest.read_text()
    for damage, text in damaged_manifests(right).items():
        manifest.write_text(text)
        restored = gateway.run("archive", "verify", check=False)
        assert restored.returncode == 0 and "Traceback" not in restored.stderr, (damage, restored.stderr)
        assert f"warning: {fax['path']}: restored from its copy in {copy}; it had: " in restored.stderr, damage
        assert manifest.read_text() == right, damage

        manifest.write_text(text)
        copied.write_text(text)
        failed = gateway.run("archive", "verify", check=False)
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, (damage, failed.stderr)
        assert f"error: {fax['path']}: " in failed.stderr, (damage, failed.stderr)
        assert "ALERT archive: 1 package(s) failed verification" in failed.stderr, damage
        assert packages(gateway)["fax"]["status"] == "corrupt", damage
        read = gateway.run("letters", "extract", "2026-000003", str(tmp_path / damage), check=False)
        assert "Traceback" not in read.stderr, (damage, read.stderr)  # given from its file, or refused
        manifest.write_text(right)
        copied.write_text(right)
    assert gateway.run("archive", "verify").returncode == 0


def test_a_copy_folder_that_cannot_be_searched_stops_no_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy folder whose every look-up is refused (a share's permissions: EACCES) is a copy that
    cannot be written, package by package; the check of the month goes on and releases nothing."""
    copy = tmp_path / "share"
    gateway = archived_with_copy(tmp_path, copy)
    gateway.run("archive", "run", "--month", "2026-03", "--no-verify")
    config = config_mod.load(gateway.config)
    registry = Registry.from_config(config)
    stat = pathlib.Path.stat

    def refused(path: pathlib.Path, **kwargs: Any) -> Any:
        if path.is_relative_to(copy) and path != copy:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return stat(path, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", refused)
    try:
        checked = Archiver(config, registry).verify("2026-03")
    finally:
        registry.close()
    assert [(c.problems, len(c.copy_problems)) for c in checked] == [([], 1), ([], 1)]
    assert all("cannot be written: Permission denied" in c.copy_problems[0] for c in checked)
    monkeypatch.undo()
    assert not any(released(gateway, number) for number in ("2026-000001", "2026-000002", "2026-000003"))


def test_a_copy_folder_that_fills_up_keeps_no_half_folder_of_faxes(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The share fills up while a folder of faxes is copied (ENOSPC at its second file): the copy
    cannot be written, and nothing of it stays there, under its own name or a temporary one."""
    copy = tmp_path / "share"
    gateway = archived_with_copy(tmp_path, copy)
    gateway.run("archive", "run", "--month", "2026-03", "--no-verify")
    fax = packages(gateway)["fax"]
    (gateway.state / "archive" / fax["path"] / "A202603-00003_reply-1.eml").write_bytes(b"Subject: Re: fax\r\n\r\n")
    config = config_mod.load(gateway.config)
    registry = Registry.from_config(config)
    copy_file = packer._copy_file

    def full(origin: Path, target: Path) -> None:
        if target.is_relative_to(copy) and target.parent.name.endswith("-faxes.tmp") and any(target.parent.iterdir()):
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        copy_file(origin, target)

    monkeypatch.setattr(packer, "_copy_file", full)
    try:
        checked = Archiver(config, registry).verify("2026-03")
    finally:
        registry.close()
    [faxes] = [c for c in checked if c.package.kind == "fax"]
    assert faxes.copy_problems == [f"copy in {copy}: cannot be written: No space left on device"]
    assert [p.name for p in (copy / fax["path"]).parent.iterdir()] == []


def test_a_crash_while_copying_leaves_the_originals_and_the_next_check_finishes_the_copy(tmp_path: Path) -> None:
    copy = tmp_path / "second-disk"
    gateway = archived_with_copy(tmp_path, copy)
    crashed = gateway.run("archive", "run", "--month", "2026-03", check=False,
                          env=gateway.env(GATEWAY_CRASH_AT="archive-copy"))
    assert crashed.returncode == -9
    assert not any(released(gateway, number) for number in ("2026-000001", "2026-000002", "2026-000003"))
    gateway.run("archive", "verify")
    assert files_of(copy) == files_of(gateway.state / "archive")
    assert released(gateway, "2026-000001") and released(gateway, "2026-000003")


def test_destroying_a_package_destroys_its_copies(tmp_path: Path) -> None:
    copy = tmp_path / "second-disk"
    gateway = archived_with_copy(tmp_path, copy, extra="retention_years = 1\n")
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
        db.execute("UPDATE letters SET received_at = '2019-05-10 02:00:00.000000'")
    gateway.run("archive", "run", "--month", "2019-05")
    assert files_of(copy)
    gateway.run("users", "add", "wang", "--name", "Director Wang", "--role", "leader", "--no-password")
    done = gateway.run("archive", "purge", "--approved-by", "wang").stdout
    assert "destroyed" in done
    assert files_of(copy) == {} and files_of(gateway.state / "archive") == {}


def test_destroying_while_a_copy_folder_is_out_of_reach_says_so_and_the_next_purge_finishes(tmp_path: Path) -> None:
    copy = tmp_path / "share"
    gateway = archived_with_copy(tmp_path, copy, extra="retention_years = 1\n")
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
        db.execute("UPDATE letters SET received_at = '2019-05-10 02:00:00.000000'")
    gateway.run("archive", "run", "--month", "2019-05")
    copied = files_of(copy)
    assert copied
    copy.rename(tmp_path / "share-unmounted")
    copy.write_text("not a folder: the share is not mounted\n")
    gateway.run("users", "add", "wang", "--name", "Director Wang", "--role", "leader", "--no-password")
    done = gateway.run("archive", "purge", "--approved-by", "wang")
    assert "destroyed" in done.stdout and files_of(gateway.state / "archive") == {}
    assert f"ALERT archive: the copy folder {copy} is out of reach" in done.stderr, done.stderr

    copy.unlink()
    (tmp_path / "share-unmounted").rename(copy)
    assert files_of(copy) == copied  # destroyed letters, still on the share
    again = gateway.run("archive", "purge", "--approved-by", "wang")
    assert "ALERT" not in again.stderr
    assert files_of(copy) == {}


def test_a_copy_folder_inside_the_archive_is_refused(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, extra=f'[archive]\ncopies = ["{tmp_path / "storage" / "archive" / "copy"}"]\n')
    checked = gateway.run("check-config", check=False)
    assert checked.returncode == 1
    assert "archive.copies[0]" in checked.stdout + checked.stderr and "give it a folder of its own" in (
        checked.stdout + checked.stderr)
