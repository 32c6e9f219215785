"""The archive's mail packages hold one frame per message: a letter is read back from its own frame
alone, ordinary tools (`zstd -dc`, `gzip -dc`, Python's mailbox) still open the month, a damaged
frame spoils only its letter, and packages written as one frame for the month stay readable."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import mailbox
import sqlite3
import subprocess
import threading
from email.message import EmailMessage
from pathlib import Path

import pytest
import zstandard

from conftest import Gateway, write_messages
from test_archive import RULES, package_rows

from gateway import config as config_mod
from gateway.archive import packer
from gateway.archive.packer import Archiver, mbox_escape, mbox_unescape
from gateway.registry import Registry, ToArchive
from gateway.registry.leases import Cluster, due
from gateway.spool import Sealed

MONTH = "2026-03"
REPLY = (b"From: liaison@example.org\r\nTo: alice@partner.example\r\nSubject: Re: Order 1\r\n"
         b"Message-ID: <reply-1@example.org>\r\n\r\nFrom our side: thank you, the order is confirmed.\r\n")


def letter(n: int, subject: str, to: str, body: str) -> bytes:
    """A mail with an attachment of its own, to be extracted from the archive."""
    msg = EmailMessage()
    msg["From"] = "Alice Partner <alice@partner.example>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<frames-{n}@partner.example>"
    msg["Date"] = "Tue, 10 Mar 2026 10:00:00 +0800"
    msg.set_content(body)
    msg.add_attachment(attachment(n), maintype="application", subtype="octet-stream", filename=f"scan-{n}.bin")
    return msg.as_bytes()


def attachment(n: int) -> bytes:
    return bytes((n * 7 + i * 13) % 256 for i in range(3000))


def month_of_letters(tmp_path: Path, compression: str = "zstd", reply: bool = False, extra: str = "") -> Gateway:
    """Four mails with an attachment each, in two categories, all closed (so that verifying releases
    the message store's copies and every read afterwards comes from the archive), received in March.
    With `reply`, letter 2026-000002 had a reply sent to its sender."""
    gateway = Gateway(tmp_path, rules=RULES, extra=f'[archive]\ncompression = "{compression}"\n{extra}')
    gateway.run("ingest", *write_messages(tmp_path, [
        letter(0, "complaint one", "liaison@example.org",
               "Dear team,\nFrom the start we were unhappy.\n>From a quote.\n>>From a quote of a quote.\n"),
        letter(1, "Order 1", "sales@example.org", "Please confirm.\n"),
        letter(2, "Order 2", "sales@example.org", "From now on, weekly.\n"),
        letter(3, "complaint two", "liaison@example.org", "Still waiting.\n")]))
    for n in range(1, 5):
        gateway.run("letters", "close", f"2026-00000{n}", "--result", "answered")
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
        db.execute("UPDATE letters SET received_at = '2026-03-10 02:00:00.000000'")
        if reply:
            db.execute("INSERT INTO replies (letter_id, status, text, authors, chain, rule, step, round, recipient, "
                       "message, created_at, updated_at, sent_at) SELECT id, 'sent', 'confirmed', '[]', '[]', '', "
                       "0, 0, 'alice@partner.example', ?, received_at, received_at, received_at FROM letters "
                       "WHERE number = '2026-000002'", (REPLY,))
    return gateway


def manifest_of(gateway: Gateway, package: dict) -> list[dict[str, str]]:
    with open(gateway.state / "archive" / package["manifest"], newline="") as f:
        return list(csv.DictReader(f))


def decompress_frame(frame: bytes, compression: str) -> bytes:
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompress(frame)
    return gzip.decompress(frame)


def extracted(gateway: Gateway, number: str, into: Path) -> bytes:
    [path] = gateway.run("letters", "extract", number, str(into)).stdout.split()
    return Path(path).read_bytes()


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_each_letter_is_a_frame_of_its_own(tmp_path: Path, compression: str) -> None:
    gateway = month_of_letters(tmp_path, compression)
    gateway.run("archive", "run", "--month", MONTH)
    packages = package_rows(gateway)
    assert len(packages) == 2 and all(p["status"] == "verified" for p in packages)
    assert all(gateway.show_json(f"2026-00000{n}")["raw_released"] for n in range(1, 5))  # read from the archive now
    for package in packages:
        path = gateway.state / "archive" / package["path"]
        data = path.read_bytes()
        rows = manifest_of(gateway, package)
        # Ordinary tools open the month: frames back to back decompress to the whole mbox.
        tool = ["zstd", "-dcq"] if compression == "zstd" else ["gzip", "-dc"]
        whole = subprocess.run([*tool, str(path)], capture_output=True, check=True).stdout
        end = 0
        for row in rows:
            at, length = int(row["frame_offset"]), int(row["frame_length"])
            assert at == end  # the letters' frames are back to back, nothing between them
            end = at + length
            block = decompress_frame(data[at:end], compression)  # alone, without what comes before it
            assert block == whole[int(row["offset"]):int(row["offset"]) + int(row["length"])]
            assert block.startswith(b"From gateway@archive ")
            raw = mbox_unescape(block.split(b"\n", 1)[1])[:int(row["size"])]
            assert hashlib.sha256(raw).hexdigest() == row["sha256"]
        assert end == len(data)
        mbox_file = tmp_path / f"{package['category']}.mbox"
        mbox_file.write_bytes(whole)
        box = mailbox.mbox(str(mbox_file))
        try:
            messages = list(box)
        finally:
            box.close()
        assert [m["Message-ID"] for m in messages] == [f"<frames-{n}@partner.example>" for n in
                                                       ((0, 3) if "complaint" in package["category"] else (1, 2))]
    for n in range(4):  # each one read back from its frame
        assert extracted(gateway, f"2026-00000{n + 1}", tmp_path / f"out-{n}") == attachment(n)


def test_a_damaged_frame_spoils_only_its_letter(tmp_path: Path) -> None:
    gateway = month_of_letters(tmp_path)
    gateway.run("archive", "run", "--month", MONTH)
    business = next(p for p in package_rows(gateway) if p["category"] == "external.business")
    first, second = manifest_of(gateway, business)
    path = gateway.state / "archive" / business["path"]
    data = bytearray(path.read_bytes())
    data[int(second["frame_offset"]) + int(second["frame_length"]) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    assert extracted(gateway, first["letter_number"], tmp_path / "first") == attachment(1)
    refused = gateway.run("letters", "extract", second["letter_number"], str(tmp_path / "second"), check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"{second['letter_number']}: its frame in {business['path']} cannot be read" in refused.stderr

    proc = gateway.run("archive", "verify", check=False)
    assert proc.returncode == 1
    problems = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert problems == [f"error: {business['path']}: SHA-256 differs from the one recorded when it was written",
                        f"error: {business['path']}: {second['archive_number']} ({second['letter_number']}): its "
                        "frame cannot be decompressed: " + problems[1].split("decompressed: ", 1)[1]]
    assert {p["category"]: p["status"] for p in package_rows(gateway)} == {
        "external.business": "corrupt", "external.inquiry_complaint": "verified"}


def test_replies_sent_follow_their_letter_in_frames_of_their_own(tmp_path: Path) -> None:
    gateway = month_of_letters(tmp_path, reply=True)
    gateway.run("archive", "run", "--month", MONTH)
    business = next(p for p in package_rows(gateway) if p["category"] == "external.business")
    assert business["status"] == "verified"
    first, second = manifest_of(gateway, business)
    path = gateway.state / "archive" / business["path"]
    data = path.read_bytes()
    reply_frame = data[int(first["frame_offset"]) + int(first["frame_length"]):int(second["frame_offset"])]
    assert mbox_unescape(decompress_frame(reply_frame, "zstd")).split(b"\n", 1)[1].rstrip(b"\n") == \
        REPLY.rstrip(b"\n")
    whole = subprocess.run(["zstd", "-dcq", str(path)], capture_output=True, check=True).stdout
    (tmp_path / "business.mbox").write_bytes(whole)
    box = mailbox.mbox(str(tmp_path / "business.mbox"))
    try:
        assert [m["Message-ID"] for m in box] == ["<frames-1@partner.example>", "<reply-1@example.org>",
                                                  "<frames-2@partner.example>"]
    finally:
        box.close()
    assert extracted(gateway, second["letter_number"], tmp_path / "second") == attachment(2)


def as_written_before(gateway: Gateway) -> None:
    """The month's packages rewritten as packages were written before: the whole mbox in one zstd
    frame, a manifest without frame columns."""
    root = gateway.state / "archive"
    for package in package_rows(gateway):
        path = root / package["path"]
        whole = subprocess.run(["zstd", "-dcq", str(path)], capture_output=True, check=True).stdout
        out = io.BytesIO()
        with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as writer:
            writer.write(whole)
        path.write_bytes(out.getvalue())
        rows = manifest_of(gateway, package)
        text = io.StringIO()
        old_fields = [f for f in rows[0] if f not in ("frame_offset", "frame_length")]
        writer_csv = csv.DictWriter(text, fieldnames=old_fields, lineterminator="\n", extrasaction="ignore")
        writer_csv.writeheader()
        writer_csv.writerows(rows)
        (root / package["manifest"]).write_text(text.getvalue())
        with sqlite3.connect(gateway.state / "registry.sqlite3") as db:
            db.execute("UPDATE archive_packages SET sha256 = ?, size = ? WHERE path = ?",
                       (hashlib.sha256(out.getvalue()).hexdigest(), len(out.getvalue()), package["path"]))


def test_a_package_of_one_frame_for_the_month_stays_readable(tmp_path: Path) -> None:
    """As packages were written before: the whole mbox in one zstd frame, a manifest without frame
    columns. Verified, released from the message store, and its letters read back."""
    gateway = month_of_letters(tmp_path)
    gateway.run("archive", "run", "--month", MONTH, "--no-verify")
    root = gateway.state / "archive"
    as_written_before(gateway)
    verified = gateway.run("archive", "verify")
    assert verified.stdout.count("verified") == 2
    assert all(gateway.show_json(f"2026-00000{n}")["raw_released"] for n in range(1, 5))
    for n in range(4):
        assert extracted(gateway, f"2026-00000{n + 1}", tmp_path / f"out-{n}") == attachment(n)
    business = next(p for p in package_rows(gateway) if p["category"] == "external.business")
    path = root / business["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    proc = gateway.run("archive", "verify", check=False)
    assert proc.returncode == 1
    assert f"error: {business['path']}: SHA-256 differs from the one recorded when it was written" in proc.stderr


@pytest.mark.parametrize("piece", [1, 100, 5000, 1 << 20])
def test_verify_reads_the_package_a_piece_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     piece: int) -> None:
    """Verifying reads a package a piece at a time, frames lying across pieces: every letter is
    checked whatever the piece size, and the package's hash covers every byte once. A package cut
    short names the letter whose frame it ends in."""
    gateway = month_of_letters(tmp_path, reply=True)
    gateway.run("archive", "run", "--month", MONTH, "--no-verify")
    monkeypatch.setattr(packer, "_PIECE", piece)
    config = config_mod.load(gateway.config)
    registry = Registry.from_config(config)
    try:
        checked = Archiver(config, registry).verify(MONTH)
        assert [(c.package.category, c.problems) for c in checked] == [
            ("external.business", []), ("external.inquiry_complaint", [])]
        business = next(p for p in package_rows(gateway) if p["category"] == "external.business")
        first, second = manifest_of(gateway, business)
        path = gateway.state / "archive" / business["path"]
        path.write_bytes(path.read_bytes()[:int(second["frame_offset"]) + 10])
        checked = Archiver(config, registry).verify(MONTH)
        assert checked[0].problems == [
            "SHA-256 differs from the one recorded when it was written",
            f"{second['archive_number']} ({second['letter_number']}): its frame is cut short"]
        assert checked[1].problems == []
    finally:
        registry.close()


def test_a_damaged_manifest_row_is_named_and_the_rest_checked(tmp_path: Path) -> None:
    gateway = month_of_letters(tmp_path)
    gateway.run("archive", "run", "--month", MONTH, "--no-verify")
    business = next(p for p in package_rows(gateway) if p["category"] == "external.business")
    manifest = gateway.state / "archive" / business["manifest"]
    first, second = manifest_of(gateway, business)
    lines = manifest.read_text().splitlines()
    lines[2] = lines[2].replace(f",{second['frame_offset']},{second['frame_length']}", ",twelve,")
    manifest.write_text("\n".join(lines) + "\n")
    proc = gateway.run("archive", "verify", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    problems = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert problems == [f"error: {business['path']}: {second['archive_number']} ({second['letter_number']}): "
                        "its manifest row is damaged"]
    assert {p["category"]: p["status"] for p in package_rows(gateway)} == {
        "external.business": "corrupt", "external.inquiry_complaint": "verified"}

    # A length past the end of the package (a digit too many, many times over): named, never read.
    lines[2] = lines[2].replace(",twelve,", f",{second['frame_offset']},{second['frame_length']}000000000000")
    manifest.write_text("\n".join(lines) + "\n")
    proc = gateway.run("archive", "verify", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {business['path']}: {second['archive_number']} ({second['letter_number']}): "
        "its frame is cut short"]
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:  # read from the archive alone
        db.execute("UPDATE letters SET raw_released = 1")
    read = gateway.run("letters", "extract", second["letter_number"], str(tmp_path / "out"), check=False)
    assert read.returncode != 0 and "Traceback" not in read.stderr, read.stderr
    assert f"{second['letter_number']}: its frame in {business['path']} is cut short" in read.stderr

    lines[0] = lines[0].replace(",sha256,", ",checksum,")  # a column gone: named, nothing taken for right
    manifest.write_text("\n".join(lines) + "\n")
    proc = gateway.run("archive", "verify", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {business['path']}: the manifest has no column sha256"]


def test_a_damaged_first_row_of_a_package_of_frames_is_a_damaged_row(tmp_path: Path) -> None:
    """The manifest's header, not its first row, says the package holds a frame per letter: a first
    row whose frame place is gone is one damaged row (the package corrupt, put right from its copy),
    never a package of one frame for the month in which every letter differs."""
    copy = tmp_path / "second-disk"
    copy.mkdir()
    gateway = month_of_letters(tmp_path, extra=f'copies = ["{copy}"]\n')
    gateway.run("archive", "run", "--month", MONTH, "--no-verify")
    business = next(p for p in package_rows(gateway) if p["category"] == "external.business")
    manifest = gateway.state / "archive" / business["manifest"]
    right = manifest.read_text()
    first, _ = manifest_of(gateway, business)
    lines = right.splitlines()
    lines[1] = lines[1].replace(f",{first['frame_offset']},{first['frame_length']}", f",,{first['frame_length']}")
    damaged = "\n".join(lines) + "\n"
    assert damaged != right
    said = f"{first['archive_number']} ({first['letter_number']}): its manifest row is damaged"

    manifest.write_text(damaged)
    (copy / business["manifest"]).parent.mkdir(parents=True, exist_ok=True)
    (copy / business["manifest"]).write_text(damaged)  # no copy to put it right: named, the package corrupt
    (copy / business["path"]).write_bytes((gateway.state / "archive" / business["path"]).read_bytes())
    proc = gateway.run("archive", "verify", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {business['path']}: {said}"], proc.stderr
    assert {p["category"]: p["status"] for p in package_rows(gateway)} == {
        "external.business": "corrupt", "external.inquiry_complaint": "verified"}
    with sqlite3.connect(gateway.state / "registry.sqlite3") as db:  # read from the archive alone
        db.execute("UPDATE letters SET raw_released = 1")
    read = gateway.run("letters", "extract", first["letter_number"], str(tmp_path / "out"), check=False)
    assert read.returncode != 0 and "Traceback" not in read.stderr, read.stderr
    assert f"{first['letter_number']}: its manifest row in {business['path']} is damaged" in read.stderr

    (copy / business["manifest"]).write_text(right)  # a right copy: the package is put right from it
    restored = gateway.run("archive", "verify", check=False)
    assert restored.returncode == 0 and "Traceback" not in restored.stderr, restored.stderr
    assert f"warning: {business['path']}: restored from its copy in {copy}; it had: {said}\n" in restored.stderr
    assert manifest.read_text() == right
    assert {p["category"]: p["status"] for p in package_rows(gateway)} == {
        "external.business": "verified", "external.inquiry_complaint": "verified"}


def test_a_damaged_manifest_row_of_a_package_written_before_is_named_and_the_rest_checked(tmp_path: Path) -> None:
    """A package of one frame for the month whose manifest row is damaged (a number that is none, a
    row cut short, a column gone): a damaged package, named so, never a traceback."""
    gateway = month_of_letters(tmp_path)
    gateway.run("archive", "run", "--month", MONTH)  # verified: the message store's copies released
    as_written_before(gateway)
    business = next(p for p in package_rows(gateway) if p["category"] == "external.business")
    manifest = gateway.state / "archive" / business["manifest"]
    right = manifest.read_text()
    header, first, second, *rest = right.splitlines(keepends=True)
    fields = header.rstrip("\n").split(",")
    number, letter_number = second.split(",")[:2]
    values = second.rstrip("\n").split(",")
    for damage, text in {
            "an offset that is no number": header + first + ",".join(
                "twelve" if name == "offset" else value for name, value in zip(fields, values, strict=True)) + "\n",
            "a negative length": header + first + ",".join(
                "-5" if name == "length" else value for name, value in zip(fields, values, strict=True)) + "\n",
            "a row cut short": header + first + ",".join(values[:4]) + "\n"}.items():
        manifest.write_text(text)
        proc = gateway.run("archive", "verify", check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (damage, proc.stderr)
        assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
            f"error: {business['path']}: {number} ({letter_number}): its manifest row is damaged"], damage
        out = tmp_path / damage.replace(" ", "-")
        assert extracted(gateway, first.split(",")[1], out) == attachment(1)  # the rest is read
        read = gateway.run("letters", "extract", letter_number, str(out / "not"), check=False)
        assert read.returncode != 0 and "Traceback" not in read.stderr, (damage, read.stderr)
    manifest.write_text(right.replace(",offset,", ",place,", 1))
    proc = gateway.run("archive", "verify", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"error: {business['path']}: the manifest has no column offset" in proc.stderr


@pytest.mark.parametrize("raw", [
    b"Subject: plain\n\nNothing quoted here.\n",
    b"Subject: quoted\n\nFrom the start.\n>From a quote.\n>>From a quote of a quote.\n",
    b"From the first line\nand no newline at the end",
])
def test_a_letter_is_found_in_its_block_in_place_or_unquoted(raw: bytes) -> None:
    """Verifying and reading take a letter from its mbox block in place when it hashes right there
    (no "From " line was quoted), and unquote it otherwise: the same bytes either way."""
    sha = hashlib.sha256(raw).hexdigest()
    separator = b"From gateway@archive Tue Mar 10 02:00:00 2026\n"
    block = packer._mbox_block(separator, raw)
    in_place = block[len(separator):len(separator) + len(raw)]
    assert (in_place != raw) == (mbox_escape(raw) != raw) == (b"From " in raw)  # the quoted ones differ in place
    message, digest = packer._original_in(block, len(raw), sha)
    assert bytes(message) == raw and digest == sha
    damaged = block.replace(b"here", b"HERE").replace(b"quote.", b"QUOTE.").replace(b"newline", b"NEWLINE")
    message, digest = packer._original_in(damaged, len(raw), sha)
    assert digest != sha and digest == hashlib.sha256(bytes(message)).hexdigest()


def test_a_stopped_run_leaves_its_month_to_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Told to stop, a run ends at its next letter: the packages it finished stay recorded, the one
    it was writing leaves nothing behind, and its job run stays unfinished, so the month is due
    again; the next run does the rest. A check told to stop ends the same way."""
    gateway = month_of_letters(tmp_path)
    config = config_mod.load(gateway.config)
    registry = Registry.from_config(config)
    stop = threading.Event()
    read = packer.Archiver._sealed

    def read_then_stop(archiver: Archiver, letter: ToArchive) -> Sealed:
        sealed = read(archiver, letter)
        if letter.number == "2026-000001":  # the first letter of the second package (by category)
            stop.set()
        return sealed
    monkeypatch.setattr(packer.Archiver, "_sealed", read_then_stop)
    try:
        cluster = Cluster(registry, "n1")
        assert not due(registry, "archive", MONTH)  # no archive has run on this registry
        with pytest.raises(packer.ArchiveStopped):
            cluster.once("archive", MONTH, lambda: Archiver(config, registry, stop=stop).run(MONTH))
        assert [p["category"] for p in package_rows(gateway)] == ["external.business"]
        folder = gateway.state / "archive" / MONTH.replace("-", "/")
        assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == [
            "part-001.manifest.csv", "part-001.mbox.zst"]  # the business package, none of the other
        assert due(registry, "archive", MONTH)

        with pytest.raises(packer.ArchiveStopped):
            Archiver(config, registry, stop=stop).verify(MONTH)
        assert [p["status"] for p in package_rows(gateway)] == ["written"]  # not checked

        written = cluster.once("archive", MONTH, lambda: Archiver(config, registry).run(MONTH))
        assert [(w.package, w.letters) for w in written] == [  # type: ignore[union-attr]
            (f"{MONTH.replace('-', '/')}/external.inquiry_complaint/part-001.mbox.zst", 2)]
        assert [c.ok for c in Archiver(config, registry).verify(MONTH)] == [True, True]
        assert not due(registry, "archive", MONTH)
        assert due(registry, "archive", "2026-04")
    finally:
        registry.close()


def test_a_run_outnumbered_by_another_node_records_nothing_and_says_why(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two nodes whose archive folders are not shared do not see each other's lock. When the other
    one numbers the month's letters while this one packs, this one records nothing: a clear error,
    and every letter keeps the one archive number the other gave it."""
    gateway = month_of_letters(tmp_path)
    config = config_mod.load(gateway.config)
    registry = Registry.from_config(config)
    elsewhere = Archiver(config, registry)
    elsewhere.root = tmp_path / "other-node-archive"

    def other_node_first(point: str) -> None:
        if point == "archive-before-commit":
            monkeypatch.setattr(packer, "checkpoint", lambda _point: None)
            elsewhere.run(MONTH)  # the whole month, while this run waits to record its first package
    monkeypatch.setattr(packer, "checkpoint", other_node_first)
    try:
        with pytest.raises(packer.ArchiveError) as refused:
            Archiver(config, registry).run(MONTH)
        assert "another archive run numbered letters of 2026-03 meanwhile" in str(refused.value)
        assert "nothing of 2026/03/external.business/part-001.mbox.zst was recorded" in str(refused.value)
        numbers = [gateway.show_json(f"2026-00000{n}")["archive_number"] for n in range(1, 5)]
        assert sorted(numbers) == [f"A202603-0000{n}" for n in range(1, 5)]  # once each, by the other node
        assert all((elsewhere.root / p["path"]).is_file() for p in package_rows(gateway))
        assert Archiver(config, registry).run(MONTH) == []  # nothing left to archive here
    finally:
        registry.close()


def test_packages_do_not_depend_on_how_the_letters_were_chunked(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Letters are read a chunk at a time (by count, and by size for large letters): the month
    written one letter a chunk, or two, is byte for byte, manifest rows included, the month written
    in one chunk; and a run so chunked verifies."""
    gateway = month_of_letters(tmp_path, reply=True)
    config = config_mod.load(gateway.config)
    registry = Registry.from_config(config)
    try:
        archiver = Archiver(config, registry)
        start, end = packer.month_bounds(MONTH, config.model.gateway.timezone)
        letters = registry.letters_to_archive(start, end)
        replied, _ = registry.archive_extras(start, end)
        numbers = [f"A202603-{n:05d}" for n in range(1, len(letters) + 1)]
        written = []
        for chunk, chunk_bytes in ((packer.CHUNK, packer.CHUNK_BYTES), (1024, 1), (2, packer.CHUNK_BYTES)):
            monkeypatch.setattr(packer, "CHUNK", chunk)
            monkeypatch.setattr(packer, "CHUNK_BYTES", chunk_bytes)
            target = tmp_path / f"month-{chunk}-{chunk_bytes}.mbox.zst"
            rows: list[list[object]] = []
            size, sha = archiver._write_mail(target, letters, numbers, replied, rows)
            data = target.read_bytes()
            assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
            written.append((data, rows))
        assert written[0] == written[1] == written[2]
        whole = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(written[0][0]), read_across_frames=True).read()
        assert len(written[0][1]) == 4 and b"Message-ID: <reply-1@example.org>" in whole  # the reply's frame
        assert [w.letters for w in archiver.run(MONTH)] == [2, 2]  # one letter a chunk, by size
        assert [c.ok for c in archiver.verify(MONTH)] == [True, True]
    finally:
        registry.close()


def test_a_package_not_recorded_takes_the_next_one_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each package is recorded while the next is packed. Should recording fail, the package packed
    meanwhile is never recorded either: its file goes at once, the error is the run's, and the next
    run archives the whole month."""
    gateway = month_of_letters(tmp_path)
    config = config_mod.load(gateway.config)
    registry = Registry.from_config(config)
    commit = registry.archive_commit

    def refused(**_: object) -> int:
        raise RuntimeError("the registry went away")
    monkeypatch.setattr(registry, "archive_commit", refused)
    folder = gateway.state / "archive" / MONTH.replace("-", "/")
    try:
        with pytest.raises(RuntimeError, match="the registry went away"):
            Archiver(config, registry).run(MONTH)
        assert package_rows(gateway) == []
        # The first package (by category) was written and its recording failed: left for the next
        # run to set aside. The second was packed meanwhile and removed.
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
            "external.business/part-001.manifest.csv", "external.business/part-001.mbox.zst"]
        monkeypatch.setattr(registry, "archive_commit", commit)
        assert [w.letters for w in Archiver(config, registry).run(MONTH)] == [2, 2]
        assert [c.ok for c in Archiver(config, registry).verify(MONTH)] == [True, True]
    finally:
        registry.close()
