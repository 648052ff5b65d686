import numpy as np

from chaiderm.data.records import check_nested, load_table
from chaiderm.data.synthetic import DISEASES, generate, make_case


def test_deterministic_and_exact_masks():
    a = make_case(3, 5, "melanoma", 64)
    b = make_case(3, 5, "melanoma", 64)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, make_case(4, 5, "melanoma", 64).image)
    assert 0.01 < a.mask.mean() < 0.6
    # the lesion differs from the skin: mean colour inside vs outside the exact mask
    assert np.abs(a.image[a.mask].mean(0) - a.image[~a.mask].mean(0)).max() > 10


def test_groups_nested_and_balanced(synth_dir):
    t = load_table(synth_dir, "train")
    check_nested(t)  # raises if a group sits under two diseases
    assert set(t.diagnoses) == set(DISEASES)
    assert all(g.startswith(d + "/") for g, d in zip(t.groups, t.diagnoses, strict=True))
    assert len(set(t.groups)) == 12
    assert t.has_masks


def test_splits_do_not_share_cases():
    a = [c.image.tobytes() for c in generate(5, size=32, seed=1, start=0)]
    b = [c.image.tobytes() for c in generate(5, size=32, seed=1, start=5)]
    assert not set(a) & set(b)
