"""A corpus of fax pages with known text, for measuring how well the gateway reads faxes.

Business letters (simplified, traditional, Chinese mixed with English, English alone) are rendered
with the Noto CJK fonts at fax geometry (1728 dots, 204 × 196 dpi), then degraded as real faxes are:
a few degrees of skew, speckle noise, a company stamp (公章) over the signature lines, the sending
machine's header line, and standard resolution (every other row, 98 lpi). The text of every page is
known, so the character error rate can be measured without folding anything.
"""

from __future__ import annotations

import io
import math
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, TiffTags

FONT_DIR = Path("/usr/share/fonts/opentype/noto")
# Collection indexes in Noto Sans/Serif CJK: 2 simplified Chinese, 3 traditional (Taiwan).
FACE = {"simplified": 2, "traditional": 3, "mixed": 2, "english": 2}
FAX_WIDTH = 1728
FINE_ROWS = 2286
X_DPI = 204.0
Y_DPI = {"fine": 196.0, "standard": 98.0}
LEFT, TOP = 150, 190

LETTERS: dict[str, list[list[str]]] = {
    "simplified": [
        ["关于2026年第一季度采购合同的函",
         "上海明达贸易有限公司：",
         "贵公司3月5日来函收悉。经研究，我方同意按原合同价格供货，",
         "交货日期调整为2026年4月15日（星期三）。请于3月20日前确认订单数量、",
         "规格及收货地址，并将盖章后的合同副本传真至我司采购部。",
         "联系人：王建国；电话：021-6234 5678；传真：021-6234 5679。",
         "如有疑问，请与我部联系。特此函告。",
         "附件：报价单一份、合同草案一份。",
         "北京华信电子科技有限公司采购部",
         "二〇二六年三月六日"],
        ["关于延期支付货款的申请",
         "广州市恒通物流有限公司财务部：",
         "因我司银行账户变更，原定于本月底支付的第二期货款（人民币",
         "壹拾贰万元整）需延期至4月10日支付，特此申请，敬请谅解。",
         "新账户信息：开户行：中国工商银行广州天河支行；",
         "账号：3602 0012 0900 1234 567。",
         "我司将于收到贵方确认后三个工作日内办理转账，并传真回执。",
         "给贵司带来的不便，深表歉意。",
         "深圳市宏远实业有限公司",
         "2026年3月9日"],
        ["投诉函",
         "尊敬的客户服务部：",
         "本人于2月18日在贵公司网店购买的空气净化器（型号KJ-500）",
         "使用一周后出现异响，多次拨打客服热线均无人接听。",
         "现要求：一、尽快上门检修或更换新机；二、书面答复处理结果。",
         "请在五个工作日内回复，否则本人将向消费者协会反映。",
         "联系电话：138 0013 8000；地址：杭州市西湖区文三路88号。",
         "投诉人：李晓梅",
         "2026年3月10日"],
    ],
    "traditional": [
        ["關於交貨延期的說明函",
         "台北市永盛國際貿易股份有限公司：",
         "貴公司訂購之電子零件（訂單編號：PO-2026-0318），因原料供應",
         "不足，原定3月25日之交貨日期須延後至4月8日，敬請見諒。",
         "我方已安排加班生產，並將於出貨前三日以傳真通知。",
         "如需調整數量或規格，請於本週五前與業務部陳經理聯繫。",
         "電話：(02) 2345-6789；傳真：(02) 2345-6790。",
         "香港聯合電子有限公司業務部",
         "二〇二六年三月十二日"],
        ["會議通知",
         "各相關單位：",
         "茲訂於2026年3月27日（星期五）上午十時，在本會三樓會議室",
         "召開年度業務檢討會議，討論下列事項：",
         "一、去年度營業報告及財務報表；二、新年度預算審議；",
         "三、海外市場拓展計畫。請各單位主管準時出席，",
         "並於會前提交書面資料二十份。如不克出席，請指派代理人。",
         "中華民國電機工業同業公會秘書處",
         "聯絡人：林美華　電話：(02) 8765-4321"],
    ],
    "mixed": [
        ["報價確認函 Quotation Confirmation",
         "To: Pacific Rim Components Ltd.",
         "Attn: Mr. David Chen, Purchasing Manager",
         "感謝貴公司3月2日的詢價。我方報價如下：",
         "Item 1: LED Driver Module LD-220, 5,000 pcs, USD 3.85/pc",
         "Item 2: Power Adapter PA-65W, 2,000 pcs, USD 7.20/pc",
         "付款條件：T/T 30 days；交貨期：收到訂單後四週。",
         "Please sign and fax back to +852 2123 4567 before March 20.",
         "此報價有效期為三十天。",
         "Best regards, 周志明 Sales Department"],
        ["关于样品检测结果的通知 Test Report",
         "To: Nordic Home Appliances AB, Attn: Ms. Anna Berg",
         "贵司寄来的样品（Sample No. NH-0412）已于3月3日检测完毕。",
         "Result: Pass (CE EN 60335-1, RoHS 2011/65/EU).",
         "检测报告原件将通过DHL寄出，运单号：1234 5678 90。",
         "如需中文版报告，请与我司质量部联系。",
         "Contact: Zhang Wei, Tel +86 512 6688 1234",
         "苏州精测检验技术有限公司",
         "2026-03-11"],
    ],
    "english": [
        ["FAX TRANSMISSION",
         "To: Example Trading Co., Attn: Purchasing Department",
         "From: Harbour Logistics Ltd., Hong Kong",
         "Re: Purchase order 4711 - revised delivery schedule",
         "Dear Sir or Madam,",
         "Please note that the shipment of 240 cartons will leave",
         "Kwai Chung terminal on 18 March 2026 (vessel MV Ocean Star).",
         "The bill of lading and the packing list follow by courier.",
         "Kindly confirm receipt of this fax by return.",
         "Yours faithfully, Peter Wong, Operations Manager"],
    ],
}


@dataclass(frozen=True)
class Sample:
    name: str
    script: str  # simplified | traditional | mixed | english
    resolution: str  # fine | standard
    text: str  # what a clerk reads on the page (header line first when there is one)
    tiff: bytes
    header: dict[str, str] = field(default_factory=dict)  # what the header line says: number, time


def render(lines: list[str], script: str, *, resolution: str = "fine", skew: float = 0.0,
           noise: float = 0.0, stamp: bool = False, header: str | None = None, serif: bool = False,
           seed: int = 0) -> Image.Image:
    """A fax page (mode "1") carrying `lines`, degraded as asked."""
    rng = random.Random(seed)
    page = Image.new("L", (FAX_WIDTH, FINE_ROWS), 255)
    draw = ImageDraw.Draw(page)
    font_file = FONT_DIR / ("NotoSerifCJK-Regular.ttc" if serif else "NotoSansCJK-Regular.ttc")
    font = ImageFont.truetype(str(font_file), 36, index=FACE[script])  # about 12 pt at 204 dpi
    title = ImageFont.truetype(str(FONT_DIR / "NotoSansCJK-Bold.ttc"), 44, index=FACE[script])
    y = TOP
    for number, line in enumerate(lines):
        face = title if number == 0 else font
        draw.text((LEFT if number else (FAX_WIDTH - draw.textlength(line, font=face)) // 2, y), line,
                  font=face, fill=0)
        y += 62 if number else 90
    if stamp:
        _stamp(page, (LEFT + 180, y - 250), script)
    if skew:
        page = page.rotate(skew, resample=Image.Resampling.BILINEAR, fillcolor=255, expand=False)
    if header is not None:
        # The sending machine prints its line after scanning, straight across the top.
        small = ImageFont.truetype(str(FONT_DIR / "NotoSansCJK-Regular.ttc"), 24, index=2)
        ImageDraw.Draw(page).text((40, 30), header, font=small, fill=0)
    bilevel = page.point(lambda v: 255 if v > 160 else 0).convert("1", dither=Image.Dither.NONE)
    if stamp:
        # The red stamp's grey, halftoned by the fax machine, laid over the black text.
        bilevel = Image.composite(bilevel, page.convert("1"), page.point(lambda v: 255 if v < 100 else 0))
    if noise:
        pixels = bilevel.load()
        assert pixels is not None
        for _ in range(int(noise * FAX_WIDTH * FINE_ROWS / 100)):
            x, y2 = rng.randrange(FAX_WIDTH - 2), rng.randrange(FINE_ROWS - 2)
            colour = 0 if rng.random() < 0.8 else 255
            for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1))[:rng.randint(1, 4)]:
                pixels[x + dx, y2 + dy] = colour
    if resolution == "standard":
        # Every other row, as a fax machine in standard mode scans.
        bilevel = bilevel.resize((FAX_WIDTH, FINE_ROWS // 2), Image.Resampling.NEAREST)
    return bilevel


def _stamp(page: Image.Image, at: tuple[int, int], script: str) -> None:
    """A round company seal in grey (red ink as a fax machine sees it): ring, star and name."""
    x, y = at
    size = 300
    seal = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(seal)
    draw.ellipse((6, 6, size - 6, size - 6), outline=255, width=12)
    cx = cy = size // 2
    star = []
    for k in range(10):
        radius = 50 if k % 2 == 0 else 20
        angle = -math.pi / 2 + k * math.pi / 5
        star.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    draw.polygon(star, fill=255)
    name = "合同专用章" if script != "traditional" else "合約專用章"
    font = ImageFont.truetype(str(FONT_DIR / "NotoSansCJK-Bold.ttc"), 34, index=FACE[script])
    draw.text((cx - draw.textlength(name, font=font) / 2, cy + 60), name, font=font, fill=255)
    # Grey 130 where the seal has ink: darker than paper, lighter than text.
    grey = Image.new("L", page.size, 255)
    grey.paste(130, (x, y), seal)
    page.paste(Image.composite(page, grey, page.point(lambda v: 255 if v < 128 else 0)), (0, 0))


def tiff_bytes(image: Image.Image, resolution: str, compression: str) -> bytes:
    """A one-page TIFF Class F (WhiteIsZero) of `image`."""
    buffer = io.BytesIO()
    inverted = image.point(lambda v: 255 - v).convert("1")
    inverted.save(buffer, "TIFF", compression=compression, dpi=(X_DPI, Y_DPI[resolution]))
    return _white_is_zero(buffer.getvalue())


def _white_is_zero(data: bytes) -> bytes:
    """Relabel every page's PhotometricInterpretation as WhiteIsZero (Pillow writes BlackIsZero)."""
    order = "<" if data[:2] == b"II" else ">"
    out = bytearray(data)
    offset = struct.unpack(order + "I", data[4:8])[0]
    while offset:
        count = struct.unpack(order + "H", data[offset:offset + 2])[0]
        for index in range(count):
            entry = offset + 2 + 12 * index
            tag = struct.unpack(order + "H", data[entry:entry + 2])[0]
            if tag == TiffTags.lookup(262).value:
                struct.pack_into(order + "H", out, entry + 8, 0)
        offset = struct.unpack(order + "I", data[offset + 2 + 12 * count:offset + 6 + 12 * count])[0]
    return bytes(out)


def header_line(number: str, when: str, page: int, pages: int, name: str) -> str:
    return f"{when}  FROM: {number}  {name}  P.{page:02d}/{pages:02d}"


def sample(name: str, script: str, index: int, *, resolution: str = "fine", skew: float = 0.0,
           noise: float = 0.0, stamp: bool = False, header: bool = False, serif: bool = False,
           seed: int = 0) -> Sample:
    lines = LETTERS[script][index]
    head: dict[str, str] = {}
    header_text = None
    if header:
        head = {"number": "+86 21 6234 5679", "time": "2026-03-06 10:42"}
        header_text = header_line(head["number"], head["time"], 1, 1, "MINGDA TRADING")
    image = render(lines, script, resolution=resolution, skew=skew, noise=noise, stamp=stamp,
                   header=header_text, serif=serif, seed=seed)
    compression = "group4" if resolution == "fine" else "group3"
    text = "\n".join(([header_text] if header_text else []) + lines)
    return Sample(name, script, resolution, text, tiff_bytes(image, resolution, compression), head)


def corpus(size: str = "test") -> list[Sample]:
    """The pages: "test" (a dozen, for the suite) or "bench" (every letter, both resolutions, degraded)."""
    if size == "test":
        return [
            sample("sim-fine-plain", "simplified", 0),
            sample("sim-std-header", "simplified", 1, resolution="standard", header=True),
            sample("sim-fine-skew-noise", "simplified", 2, skew=2.5, noise=0.08, seed=1),
            sample("sim-std-stamp-skew", "simplified", 0, resolution="standard", stamp=True, skew=-1.5),
            sample("tra-fine-stamp", "traditional", 0, stamp=True),
            sample("tra-std-skew", "traditional", 1, resolution="standard", skew=2.0),
            sample("tra-fine-serif-noise", "traditional", 1, serif=True, noise=0.08, seed=2),
            sample("mix-fine-header", "mixed", 0, header=True),
            sample("mix-std-noise", "mixed", 1, resolution="standard", noise=0.05, seed=3),
            sample("eng-std-skew", "english", 0, resolution="standard", skew=-2.0),
        ]
    pages: list[Sample] = []
    for script, letters in LETTERS.items():
        for index in range(len(letters)):
            for resolution in ("fine", "standard"):
                seed = len(pages)
                rng = random.Random(seed)
                pages.append(sample(f"{script}-{index}-{resolution}", script, index, resolution=resolution,
                                    skew=rng.choice((0.0, -2.0, 1.5, 3.0)), noise=rng.choice((0.0, 0.05)),
                                    stamp=index == 0, header=seed % 2 == 0, serif=seed % 3 == 2, seed=seed))
    return pages


def cer(truth: str, read: str) -> tuple[int, int]:
    """(character errors, characters) of `read` against `truth`: the edit distance with each run of
    white space counted as one space, and nothing else folded."""
    a, b = " ".join(truth.split()), " ".join(read.split())
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1], len(a)
