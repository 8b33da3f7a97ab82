"""Vietnamese text hygiene: NFC, tone marks, segmentation underscores, mojibake, newlines."""

import unicodedata

import pytest

from legaltune.text.vietnamese import (
    HygieneReport,
    clean,
    detect_legacy_encoding,
    fix_newlines,
    nfc,
    normalize_tone_marks,
    strip_word_segmentation,
)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def test_nfc_composes_decomposed_text():
    decomposed = nfd("Bộ luật Lao động")
    assert decomposed != "Bộ luật Lao động"
    assert nfc(decomposed) == "Bộ luật Lao động"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("hòa", "hoà"),
        ("thúy", "thuý"),
        ("khỏe", "khoẻ"),
        ("ủy", "uỷ"),
        ("tòa", "toà"),
        ("lũy", "luỹ"),
        ("HÒA", "HOÀ"),
        ("Ủy ban", "Uỷ ban"),
        ("Thủy", "Thuỷ"),
    ],
)
def test_tone_styles_are_converted_both_ways(old, new):
    assert normalize_tone_marks(old, "new") == new
    assert normalize_tone_marks(new, "old") == old
    # Both spellings collapse to the same string in either style.
    assert normalize_tone_marks(old, "old") == normalize_tone_marks(new, "old") == old


@pytest.mark.parametrize(
    "word",
    ["quý", "qua", "quà", "Quỳnh", "hoàn", "thuyền", "hoạch", "huýt", "hoài", "khuya", "gìn", "giúp", "gia"],
)
def test_fixed_placements_are_untouched(word):
    assert normalize_tone_marks(word, "old") == word
    assert normalize_tone_marks(word, "new") == word


def test_closed_syllable_mark_goes_on_second_vowel_in_both_styles():
    assert normalize_tone_marks("hòan thành", "old") == "hoàn thành"
    assert normalize_tone_marks("khỏan 2", "new") == "khoản 2"


def test_tone_marks_on_nfd_input_gives_nfc_output():
    out = normalize_tone_marks(nfd("Tòa án nhân dân"), "new")
    assert out == "Toà án nhân dân"
    assert unicodedata.is_normalized("NFC", out)


def test_tone_marks_sentence_and_bad_style():
    text = "Hòa giải tại Tòa án, sức khỏe của người lao động, Ủy ban nhân dân."
    assert (
        normalize_tone_marks(text, "new")
        == "Hoà giải tại Toà án, sức khoẻ của người lao động, Uỷ ban nhân dân."
    )
    with pytest.raises(ValueError):
        normalize_tone_marks(text, "modern")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("segmented", "plain"),
    [
        ("Bộ_luật Lao_động", "Bộ luật Lao động"),
        ("Thành_phố_Hồ_Chí_Minh", "Thành phố Hồ Chí Minh"),
        ("người_lao_động có quyền", "người lao động có quyền"),
        (nfd("Bộ_luật"), nfd("Bộ luật")),
    ],
)
def test_segmentation_underscores_removed(segmented, plain):
    assert strip_word_segmentation(segmented) == plain


@pytest.mark.parametrize(
    "kept",
    ["max_seq_length", "__init__", "_private", "trailing_", "a__b", "lora_r16_alpha", "snake_case_name"],
)
def test_identifiers_keep_their_underscores(kept):
    assert strip_word_segmentation(kept) == kept


def test_segmentation_mixed_line():
    text = "Đặt max_seq_length = 2048 cho Bộ_luật Dân_sự"
    assert strip_word_segmentation(text) == "Đặt max_seq_length = 2048 cho Bộ luật Dân sự"


VNI_SAMPLES = [
    "Xin chaøo caùc baïn",
    "COÄNG HOØA XAÕ HOÄI CHUÛ NGHÓA VIEÄT NAM",
    "Ñoäc laäp - Töï do - Haïnh phuùc",
    "Ngöôøi lao ñoäng coù quyeàn ñôn phöông chaám döùt hôïp ñoàng lao ñoäng.",
    "Ñieàu 5. Phaïm vi ñieàu chænh cuûa Boä luaät naøy.",
]
TCVN3_SAMPLES = [
    "Céng hoµ x· héi chñ nghÜa ViÖt Nam",
    "§éc lËp - Tù do - H¹nh phóc",
    "c¸c quy ®Þnh cña Bé luËt Lao ®éng",
    "Ng\u00adêi lao ®éng cã quyÒn ®¬n ph\u00ad¬ng chÊm døt hîp ®ång lao ®éng.",
    "§iÒu 5. Ph¹m vi ®iÒu chØnh",
]


@pytest.mark.parametrize("text", VNI_SAMPLES)
def test_vni_mojibake_detected(text):
    assert detect_legacy_encoding(text) == "VNI"


@pytest.mark.parametrize("text", TCVN3_SAMPLES)
def test_tcvn3_mojibake_detected(text):
    assert detect_legacy_encoding(text) == "TCVN3"


VIETNAMESE_SENTENCES = [
    "Bộ luật Lao động số 45/2019/QH14 có hiệu lực thi hành từ ngày 01 tháng 01 năm 2021.",
    "Người lao động có quyền đơn phương chấm dứt hợp đồng lao động không cần báo trước.",
    "Theo khoản 1 Điều 35, người lao động phải báo trước ít nhất 45 ngày.",
    "Hoà giải viên lao động do Chủ tịch Uỷ ban nhân dân cấp tỉnh bổ nhiệm.",
    "Hòa giải viên lao động do Chủ tịch Ủy ban nhân dân cấp tỉnh bổ nhiệm.",
    "Toà án nhân dân tối cao hướng dẫn áp dụng thống nhất pháp luật trong xét xử.",
    "Quân nhân chuyên nghiệp được hưởng chế độ bảo hiểm xã hội bắt buộc.",
    "Bên thuê nhà phải trả tiền thuê nhà đúng kỳ hạn như đã thoả thuận.",
    "Khoá học bồi dưỡng nghiệp vụ được tổ chức hoàn toàn miễn phí.",
    "Doanh nghiệp phải nộp thuế thu nhập doanh nghiệp theo quy định tại Luật Quản lý thuế.",
    "Nghị định 15/2020/NĐ-CP quy định xử phạt vi phạm hành chính trong lĩnh vực bưu chính.",
    "Thông tư 09/2023/TT-BTC hướng dẫn một số điều về quản lý tài chính.",
    "Công dân có quyền tự do kinh doanh trong những ngành nghề mà luật không cấm.",
    "Việc xoá án tích được thực hiện theo quyết định của Toà án.",
    "Người sử dụng lao động không được giữ bản chính giấy tờ tùy thân của người lao động.",
    "Thời giờ làm việc bình thường không quá 08 giờ trong 01 ngày và không quá 48 giờ trong 01 tuần.",
    "Quyền sở hữu trí tuệ bao gồm quyền tác giả, quyền sở hữu công nghiệp và quyền đối với giống cây trồng.",
    "Hợp đồng vô hiệu không làm phát sinh, thay đổi, chấm dứt quyền, nghĩa vụ dân sự của các bên.",
    "Chủ tịch nước công bố Hiến pháp, luật, pháp lệnh chậm nhất là mười lăm ngày kể từ ngày được thông qua.",
    "Người khuyết tật được Nhà nước bảo đảm thực hiện quyền chăm sóc sức khoẻ.",
    "Cơ quan thuế có trách nhiệm hoàn thuế giá trị gia tăng trong thời hạn 06 ngày làm việc.",
    "Khiếu nại lần hai được giải quyết trong thời hạn không quá 45 ngày, kể từ ngày thụ lý.",
    "Uỷ quyền phải được lập thành văn bản, trừ trường hợp pháp luật có quy định khác.",
    "Đất đai thuộc sở hữu toàn dân do Nhà nước đại diện chủ sở hữu và thống nhất quản lý.",
    "Mức phạt tiền tối đa đối với cá nhân là 75.000.000 đồng; quá hạn nộp phạt bị cưỡng chế.",
]
OTHER_TEXTS = [
    "The Labour Code No. 45/2019/QH14 takes effect on 1 January 2021.",
    "45/2019/QH14 100/2015/QH13 15/2020/NĐ-CP 01/2021/TT-BLĐTBXH 2024-01-01 3.14 1,000,000",
    "Où est la pièce ? Il est naïf, Noël approche, le maïs est mûr et la coïncidence est réelle.",
    "Loïc a haï le plat thaï, aïe !",
    "El niño de España leyó la información en la acción del año; él oyó a la señora Peña.",
    "Die Müller-Brüder fahren über die Brücke nach Köln, schön und früh.",
    "Jag bor på landet så det är lugnt, då och nå; Bjørn och Søren går hem.",
    "La col·lecció d'intel·ligència artificial és àmplia.",
    "Intel® Core™ i7 on Windows® with Microsoft© Office",
    "« Bonjour » dit-il, « à bientôt ».",
]


@pytest.mark.parametrize("text", VIETNAMESE_SENTENCES + OTHER_TEXTS)
def test_no_false_mojibake_alarm(text):
    assert detect_legacy_encoding(text) is None
    assert detect_legacy_encoding(nfd(text)) is None


def test_single_garbled_word_is_not_enough():
    # Conservative by design: one suspicious word could be a name or a typo.
    assert detect_legacy_encoding("Vieät Nam") is None
    assert detect_legacy_encoding("") is None


def test_fix_newlines():
    assert fix_newlines("\ufeffa\r\nb\rc\nd") == "a\nb\nc\nd"
    assert fix_newlines("x\ufeffy") == "x\ufeffy"  # only a leading BOM is a BOM


def test_clean_applies_steps_and_counts():
    report = HygieneReport()
    raw = "\ufeff" + nfd("Bộ_luật về hòa giải") + "\r\nthuế"
    out = clean(raw, tone_style="new", strip_underscores=True, report=report)
    assert out == "Bộ luật về hoà giải\nthuế"
    assert report.as_dict() == {
        "texts": 1,
        "changed": 1,
        "nfc": 1,
        "tone": 1,
        "underscores": 1,
        "newlines": 1,
        "bom": 1,
        "invisible": 0,
        "mojibake": 0,
    }
    # A second, already clean text accumulates into the same report without new changes.
    assert clean("Điều 5", report=report) == "Điều 5"
    assert (report.texts, report.changed, report.nfc) == (2, 1, 1)


def test_clean_defaults_only_nfc_and_newlines():
    raw = nfd("Bộ_luật hòa") + "\r\n"
    assert clean(raw) == "Bộ_luật hòa\n"
    assert clean(raw, nfc=False) == nfd("Bộ_luật hòa") + "\n"
