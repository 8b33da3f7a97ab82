"""GRPO rewards: each one scores right answers above wrong ones, against the reference and the corpus."""

import pytest

from legaltune.config.schema import GrpoConfig
from legaltune.train.rewards import LegalRewards, completion_text

EOT = 2  # the end-of-turn id these tests give the rewards
REF = "Theo khoản 1 Điều 25 Bộ luật Lao động 2019, thời gian thử việc không quá 180 ngày."
CTX = "Thời gian thử việc tối đa là bao lâu?"
RIGHT = "Theo Điều 25 Bộ luật Lao động 2019, thời gian thử việc do hai bên thỏa thuận, không quá 180 ngày."
WRONG_ARTICLE = "Theo Điều 113 Bộ luật Lao động 2019, người lao động được nghỉ hằng năm 12 ngày làm việc."
MADE_UP = "Theo Điều 999 Bộ luật Lao động 2019, thời gian thử việc không quá 180 ngày."
UNSUPPORTED = "Theo Điều 25 Bộ luật Lao động 2019, công ty phải mua xe ô tô cho nhân viên mới."
NO_CITATION = "Thời gian thử việc không quá 180 ngày."


@pytest.fixture(scope="module")
def rewards():
    from legaltune.corpus import build_corpus
    from legaltune.corpus.verify import Verifier

    return LegalRewards(Verifier(build_corpus()), [EOT])


def conv(text):
    return [{"role": "assistant", "content": text}]


def test_citation_reward_is_article_f1_against_the_reference(rewards):
    got = rewards.citation(
        [conv(RIGHT), conv(WRONG_ARTICLE), conv(NO_CITATION), RIGHT], [REF, REF, REF, "Không có căn cứ."]
    )
    # Điều 25 matches (the clause is ignored at article level)
    assert got[0] == pytest.approx(1.0)
    assert got[1] == pytest.approx(0.0)  # another article
    assert got[2] == pytest.approx(0.0)  # cites nothing
    assert got[3] is None  # the reference cites nothing: no citation reward


def test_exists_reward_penalises_articles_the_law_does_not_have(rewards):
    got = rewards.exists([conv(RIGHT), conv(MADE_UP), conv(NO_CITATION), conv(WRONG_ARTICLE)], [CTX] * 4)
    assert got[0] == pytest.approx(1.0)
    assert got[1] == pytest.approx(-1.0)  # Điều 999 of a law with 220 articles
    assert got[2] is None  # nothing checkable
    assert got[3] == pytest.approx(1.0)  # wrong for the question, but it exists: the citation reward's job
    mixed = "Theo Điều 25 và Điều 999 Bộ luật Lao động 2019, thử việc không quá 180 ngày."
    assert rewards.exists([mixed], [CTX]) == [pytest.approx(0.0)]


def test_supported_reward_reads_the_article_text(rewards):
    got = rewards.supported([conv(RIGHT), conv(UNSUPPORTED), conv(MADE_UP), conv(NO_CITATION)], [CTX] * 4)
    assert got[0] == pytest.approx(1.0)
    assert got[1] == pytest.approx(0.0)  # Điều 25 exists but says nothing about cars
    assert got[2] == pytest.approx(0.0)  # a missing article supports nothing
    assert got[3] is None


def test_format_reward_wants_a_stop_and_a_citation(rewards):
    got = rewards.format([RIGHT, RIGHT, NO_CITATION, NO_CITATION], [[5, EOT], [5, 6], [5, EOT], [5]])
    assert got == [1.0, 0.5, 0.5, 0.0]


def test_weights_drop_zero_weighted_rewards_and_keep_names(rewards):
    funcs, weights = rewards.weighted(GrpoConfig(reward_supported=0.0, reward_format=0.25))
    assert [f.__name__ for f in funcs] == ["citation", "exists", "format"]  # TRL logs rewards/<name>/mean
    assert weights == [1.0, 1.0, 0.25]


def test_completion_text_reads_both_forms():
    assert completion_text("a") == "a"
    assert completion_text([{"role": "assistant", "content": "b"}]) == "b"
