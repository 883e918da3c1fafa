"""Results-table statistics against printed t tables, closed forms and hand-computed examples."""

import math

import pytest

from spacil.evaluation.statistics import (
    mean_std,
    paired_difference,
    regularized_incomplete_beta,
    student_t_cdf,
    student_t_quantile,
)


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (8, 2.306),
                                          (10, 2.228), (30, 2.042), (120, 1.980)])
def test_t_quantile_0975_matches_printed_tables(df, expected):
    assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=6e-4)


@pytest.mark.parametrize("p, df, expected", [(0.995, 5, 4.032), (0.9, 10, 1.372), (0.95, 20, 1.725)])
def test_t_quantile_other_levels(p, df, expected):
    assert student_t_quantile(p, df) == pytest.approx(expected, abs=6e-4)
    assert student_t_quantile(1 - p, df) == pytest.approx(-expected, abs=6e-4)


def test_t_quantile_tends_to_the_normal_quantile():
    assert student_t_quantile(0.975, 100000) == pytest.approx(1.95996, abs=1e-3)


@pytest.mark.parametrize("t", [-7.5, -1.0, 0.0, 0.3, 2.0, 40.0])
def test_t_cdf_matches_closed_forms_for_df_1_and_2(t):
    assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-10)  # Cauchy
    assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-10)


def test_incomplete_beta_closed_form_and_bad_inputs():
    # I_x(1, b) = 1 - (1 - x)^b
    assert regularized_incomplete_beta(1.0, 3.0, 0.4) == pytest.approx(1 - 0.6 ** 3, abs=1e-12)
    with pytest.raises(ValueError):
        student_t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        student_t_cdf(1.0, 0)


def test_mean_and_sample_std():
    s = mean_std([2.0, 4.0, 9.0])  # mean 5, squared deviations 9 + 1 + 16 = 26, / (3 - 1) = 13
    assert s.mean == pytest.approx(5.0) and s.std == pytest.approx(math.sqrt(13)) and s.n == 3
    assert s.format() == "5.00 ± 3.61"
    one = mean_std([7.0, None, float("nan")])
    assert one.n == 1 and one.mean == 7.0 and one.std is None and one.format() == "7.00 ± n/a"
    assert mean_std([]).format() == "-"


def test_paired_difference_matches_keys_and_uses_the_t_interval():
    a = {(3, 1993): 10.0, (3, 1994): 12.0, (4, 1993): 14.0, (5, 1993): 99.0}
    b = {(4, 1993): 11.0, (3, 1993): 9.0, (3, 1994): 10.0}  # other order; (5, 1993) has no partner
    d = paired_difference(a, b)
    # differences 1, 2, 3: mean 2, sample std 1, half width t(0.975, 2) / sqrt(3) = 4.303 / 1.732
    assert d.n == 3 and d.mean == pytest.approx(2.0)
    assert d.low == pytest.approx(2 - 4.3027 / math.sqrt(3), abs=1e-3)
    assert d.high == pytest.approx(2 + 4.3027 / math.sqrt(3), abs=1e-3)
    assert d.format() == "+2.00 [-0.48, +4.48]"


def test_paired_difference_of_one_pair_has_no_interval():
    d = paired_difference({"x": 5.0}, {"x": 3.0, "y": 1.0})
    assert d.n == 1 and d.mean == pytest.approx(2.0) and d.low is None and "n/a" in d.format()
