"""Fax documents: reading TIFF and PDF faxes, rejecting damaged ones, OCR with tesseract."""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pypdf
import pytest
from fax_samples import (
    ENGLISH,
    ENGLISH_WORDS,
    SIMPLIFIED,
    TRADITIONAL,
    corrupt,
    pdf_fax,
    render_page,
    tiff_fax,
)
from PIL import Image

from gateway.stages.fax.document import FaxUnreadable, page_images, read_fax
from gateway.stages.fax.ocr import OcrResult, clean_cjk_spacing, ocr_document

FIRST_PAGE = ENGLISH + SIMPLIFIED
OCR_PAGES = [FIRST_PAGE, TRADITIONAL]
THREE_PAGES = [FIRST_PAGE, TRADITIONAL, ENGLISH]
TIFF_TAGS = {
    "ImageDescription": "Fax from +86 21 5555 0100 传真",
    "DateTime": "2024:05:06 10:12:00",
    "Make": "Brother",
    "Model": "FAX-2840",
    "Software": "HylaFAX 7.0",
    "HostComputer": "faxgw01",
}
PDF_INFO: dict[str, str | datetime] = {
    "Title": "Fax from +86 21 5555 0100",
    "Author": "上海贸易有限公司",
    "Subject": "Purchase order 4711",
    "Creator": "HylaFAX 7.0",
    "Producer": "fax2mail",
    "CreationDate": datetime(2024, 5, 6, 10, 12, tzinfo=timezone(timedelta(hours=8))),
}
ROWS = {"fine": 2286, "standard": 1143}
Y_DPI = {"fine": 196.0, "standard": 98.0}
CJK_SPACE_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uff00-\uffef] +[\u3000-\u30ff\u3400-\u9fff\uff00-\uffef]")


@pytest.fixture(scope="module")
def tiffs() -> dict[tuple[str, str, int], bytes]:
    """G3 and G4, fine and standard, one and three pages."""
    return {
        (compression, resolution, count): tiff_fax(THREE_PAGES[:count], resolution=resolution,
                                                   compression=compression, tags=TIFF_TAGS)
        for compression in ("group3", "group4")
        for resolution in ("fine", "standard")
        for count in (1, 3)
    }


@pytest.fixture(scope="module")
def pdfs() -> dict[str, bytes]:
    return {resolution: pdf_fax(OCR_PAGES, resolution=resolution, info=PDF_INFO)
            for resolution in ("fine", "standard")}


@pytest.fixture(scope="module")
def ocr_faxes(pdfs: dict[str, bytes]) -> dict[str, tuple[bytes, str]]:
    return {
        "tiff-fine-g4": (tiff_fax(OCR_PAGES, resolution="fine", compression="group4"), "tiff"),
        "tiff-standard-g3": (tiff_fax(OCR_PAGES, resolution="standard", compression="group3"), "tiff"),
        "pdf-fine": (pdfs["fine"], "pdf"),
        "pdf-standard": (pdfs["standard"], "pdf"),
    }


# -- Reading ------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["group3", "group4"])
@pytest.mark.parametrize("resolution", ["fine", "standard"])
@pytest.mark.parametrize("count", [1, 3])
def test_tiff_pages_counted_and_described(tiffs: dict[tuple[str, str, int], bytes], compression: str,
                                          resolution: str, count: int) -> None:
    document = read_fax(tiffs[compression, resolution, count], "fax.tif")
    assert document.kind == "tiff"
    assert document.page_count == count
    for page in document.pages:
        assert (page.width, page.height) == (1728, ROWS[resolution])
        assert (page.x_dpi, page.y_dpi) == (204.0, Y_DPI[resolution])
        assert page.compression == compression
        assert page.resolution == resolution


@pytest.mark.parametrize("resolution", ["fine", "standard"])
def test_pdf_pages_counted_and_described(pdfs: dict[str, bytes], resolution: str) -> None:
    document = read_fax(pdfs[resolution], "fax.pdf")
    assert document.kind == "pdf"
    assert document.page_count == 2
    for page in document.pages:
        assert (page.width, page.height) == (1728, ROWS[resolution])
        assert page.x_dpi == pytest.approx(204.0, abs=0.5)
        assert page.y_dpi == pytest.approx(Y_DPI[resolution], abs=0.5)
        assert page.compression == "group4"
        assert page.resolution == resolution


def test_type_comes_from_content_not_name(tiffs: dict[tuple[str, str, int], bytes],
                                          pdfs: dict[str, bytes]) -> None:
    assert read_fax(tiffs["group4", "fine", 3], "fax.pdf").kind == "tiff"
    assert read_fax(pdfs["fine"], "fax.tif").kind == "pdf"


def test_tiff_tags_read_as_text(tiffs: dict[tuple[str, str, int], bytes]) -> None:
    assert read_fax(tiffs["group3", "standard", 3]).tags == TIFF_TAGS


def test_tiff_without_tags_has_none() -> None:
    assert read_fax(tiff_fax([ENGLISH], tags=None)).tags == {}


def test_pdf_tags_read_with_iso_date(pdfs: dict[str, bytes]) -> None:
    tags = read_fax(pdfs["fine"]).tags
    assert tags == {
        "Title": "Fax from +86 21 5555 0100",
        "Author": "上海贸易有限公司",
        "Subject": "Purchase order 4711",
        "Creator": "HylaFAX 7.0",
        "Producer": "fax2mail",
        "CreationDate": "2024-05-06T02:12:00+00:00",
    }


@pytest.mark.parametrize("white_is_zero", [True, False])
def test_page_images_are_black_on_white_with_square_pixels(white_is_zero: bool) -> None:
    for resolution in ("fine", "standard"):
        data = tiff_fax([ENGLISH, TRADITIONAL], resolution=resolution, white_is_zero=white_is_zero)
        images = list(page_images(data, "tiff"))
        assert len(images) == 2
        for image in images:
            assert image.mode == "1"
            assert image.size == (1728, 2286)  # standard pages get their rows doubled
            assert image.info["dpi"] == (204.0, 204.0)
            assert _ink(image) < 0.05  # mostly white paper: the photometric tag was honoured


def test_pdf_page_images_rendered_at_fax_resolution(pdfs: dict[str, bytes]) -> None:
    for resolution in ("fine", "standard"):
        images = list(page_images(pdfs[resolution], "pdf"))
        assert len(images) == 2
        for image in images:
            assert image.mode in ("1", "L")
            assert abs(image.width - 1728) <= 2 and abs(image.height - 2286) <= 2
            assert _ink(image) < 0.05


def test_rendered_standard_page_is_every_other_fine_row() -> None:
    fine = render_page(FIRST_PAGE, resolution="fine")
    standard = render_page(FIRST_PAGE, resolution="standard")
    assert (fine.mode, standard.mode) == ("1", "1")
    assert standard.size == (1728, 1143)
    row_bytes, fine_bytes = 1728 // 8, fine.tobytes()
    odd_rows = b"".join(fine_bytes[row * row_bytes:(row + 1) * row_bytes] for row in range(1, 2286, 2))
    assert standard.tobytes() == odd_rows


# -- Rejecting ----------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.1, 0.5, 2 / 3, 0.9, 0.98])
@pytest.mark.parametrize("compression", ["group3", "group4"])
def test_truncated_tiff_is_damaged(tiffs: dict[tuple[str, str, int], bytes], compression: str,
                                   keep: float) -> None:
    with pytest.raises(FaxUnreadable, match=r"^drop/0042\.tif: TIFF is damaged: .*truncated"):
        read_fax(corrupt(tiffs[compression, "fine", 3], keep=keep), "drop/0042.tif")


def test_tiff_with_garbage_after_header_is_damaged() -> None:
    with pytest.raises(FaxUnreadable, match=r"^bad\.tif: TIFF is damaged: "):
        read_fax(b"II*\x00" + bytes(range(256)) * 4, "bad.tif")


def test_empty_file_rejected() -> None:
    with pytest.raises(FaxUnreadable, match=r"^empty\.tif: file is empty$"):
        read_fax(b"", "empty.tif")


def test_text_file_rejected() -> None:
    with pytest.raises(FaxUnreadable, match=r"^note\.tif: not a TIFF or PDF \(detected: text/plain\)$"):
        read_fax(b"Please call me back about the order.\n", "note.tif")


def test_png_named_tif_rejected() -> None:
    buffer = io.BytesIO()
    render_page(ENGLISH).save(buffer, "PNG")
    with pytest.raises(FaxUnreadable, match=r"^scan\.tif: not a TIFF or PDF \(detected: image/png\)$"):
        read_fax(buffer.getvalue(), "scan.tif")


def test_truncated_pdf_is_damaged(pdfs: dict[str, bytes]) -> None:
    with pytest.raises(FaxUnreadable, match=r"^fax\.pdf: PDF is damaged: "):
        read_fax(pdfs["fine"][: len(pdfs["fine"]) // 2], "fax.pdf")


def test_pdf_without_pages_rejected() -> None:
    buffer = io.BytesIO()
    pypdf.PdfWriter().write(buffer)
    with pytest.raises(FaxUnreadable, match=r"^fax\.pdf: PDF has no pages$"):
        read_fax(buffer.getvalue(), "fax.pdf")


def test_encrypted_pdf_rejected_unless_it_opens_without_password(pdfs: dict[str, bytes]) -> None:
    locked = _encrypted(pdfs["fine"], user_password="secret")
    with pytest.raises(FaxUnreadable, match=r"^fax\.pdf: encrypted PDF$"):
        read_fax(locked, "fax.pdf")
    restricted = _encrypted(pdfs["fine"], user_password="")
    assert read_fax(restricted, "fax.pdf").page_count == 2


# -- OCR ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sample", ["tiff-fine-g4", "tiff-standard-g3", "pdf-fine", "pdf-standard"])
def test_ocr_reads_english_and_chinese(ocr_faxes: dict[str, tuple[bytes, str]], sample: str) -> None:
    data, kind = ocr_faxes[sample]
    result = ocr_document(data, kind)
    assert result.defects == []
    assert result.pages == 2
    pages = result.text.split("\f")
    assert len(pages) == 2
    words = set(re.findall(r"\w+", pages[0]))
    assert [word for word in ENGLISH_WORDS if word not in words] == [], result.text
    lines = {line.strip() for line in result.text.replace("\f", "\n").splitlines()}
    assert [phrase for phrase in SIMPLIFIED + TRADITIONAL if phrase not in lines] == [], result.text
    assert CJK_SPACE_CJK.search(result.text) is None, result.text
    assert "\n\n\n" not in result.text


def test_ocr_with_missing_language_data_gives_defects(ocr_faxes: dict[str, tuple[bytes, str]]) -> None:
    data, kind = ocr_faxes["tiff-fine-g4"]
    result = ocr_document(data, kind, languages="xxx")
    assert result == OcrResult(text="", pages=2, defects=[
        "page 1: OCR failed: language data not installed: xxx",
        "page 2: OCR failed: language data not installed: xxx",
    ])


def test_ocr_with_one_language_missing_reads_with_the_rest() -> None:
    result = ocr_document(tiff_fax([ENGLISH]), "tiff", languages="eng+xxx")
    assert "Purchase order 4711" in result.text
    assert result.defects == ["OCR language data not installed: xxx (read without it)"]


def test_ocr_without_tesseract_gives_defects(ocr_faxes: dict[str, tuple[bytes, str]],
                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    data, kind = ocr_faxes["tiff-standard-g3"]
    result = ocr_document(data, kind)
    assert result.text == ""
    assert result.defects == [f"page {n}: OCR failed: tesseract is not installed (Debian package tesseract-ocr)"
                              for n in (1, 2)]


def test_ocr_out_of_time_gives_defects(ocr_faxes: dict[str, tuple[bytes, str]]) -> None:
    data, kind = ocr_faxes["tiff-fine-g4"]
    result = ocr_document(data, kind, timeout=0.05)
    assert result.text == ""
    assert result.pages == 2
    assert len(result.defects) == 2
    assert all(re.match(r"page \d: OCR (failed|skipped): .*(longer than|time limit)", d) for d in result.defects)


def test_ocr_of_unreadable_document_gives_a_defect() -> None:
    result = ocr_document(b"not a fax", "tiff")
    assert result.text == ""
    assert result.pages == 0
    assert result.defects == ["document unreadable: fax: TIFF is damaged: no TIFF byte-order mark"]


def test_ocr_refuses_option_like_language_list() -> None:
    result = ocr_document(tiff_fax([ENGLISH]), "tiff", languages="eng --psm 0")
    assert result.defects == ["OCR not run: invalid language list 'eng --psm 0'"]


# -- CJK spacing --------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "clean"), [
    ("关 于 采 购 订 单 的 咨 询", "关于采购订单的咨询"),
    ("請 確 認 交 貨 日 期 。", "請確認交貨日期。"),
    ("日 期 ： 2024 年 5 月 6 日", "日期：2024 年 5 月 6 日"),
    ("「 報 價 單 」 見 附 件", "「報價單」見附件"),
    ("お 問 い 合 わ せ", "お問い合わせ"),
    ("ＡＢＣ 株 式 会 社", "ＡＢＣ株式会社"),
    ("Please confirm the delivery date.", "Please confirm the delivery date."),
    ("Re: Purchase order 4711", "Re: Purchase order 4711"),
    ("Example Trading Co. 贸 易 有 限 公 司", "Example Trading Co. 贸易有限公司"),
    ("PO 4711 号 订 单", "PO 4711 号订单"),
    ("Example Trading Co. （香 港 ）", "Example Trading Co.（香港）"),
    ("안녕 하세요 。", "안녕 하세요。"),
    ("  indented 传 真  ", "  indented 传真"),
])
def test_clean_cjk_spacing(raw: str, clean: str) -> None:
    assert clean_cjk_spacing(raw) == clean


def test_clean_cjk_spacing_normalises_blank_lines() -> None:
    raw = "\n\nFAX TRANSMISSION   \n\n\n\n传 真\n\n请 尽 快 回 复\n\n\n"
    assert clean_cjk_spacing(raw) == "FAX TRANSMISSION\n\n传真\n\n请尽快回复"


# -- Helpers ------------------------------------------------------------------------------
def _ink(image: Image.Image) -> float:
    """The share of dark pixels on a page."""
    histogram = image.convert("L").histogram()
    return sum(histogram[:128]) / (image.width * image.height)


def _encrypted(data: bytes, *, user_password: str) -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()
