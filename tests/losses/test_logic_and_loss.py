import itertools

import numpy as np
import pytest
import torch

from chaiderm.losses import ChaiTripletLoss, all_valid_triplets, chai_triplet_loss, get_rule, sample_triplets

# hand-made hierarchy: D1 -> {G1: 0, 1; G2: 2}, D2 -> {G3: 3, 4; G4: 5}; image 6 is D1 without a group
DIS = np.array([0, 0, 0, 1, 1, 1, 0])
GRP = np.array([0, 0, 1, 2, 2, 3, -1])
# disease-blind groups for joint logic: A = {0, 1, 3}, B = {2, 5}; 4 and 6 unannotated
BLIND = np.array([0, 0, 1, 0, -1, 1, -1])


@pytest.mark.parametrize(
    "logic,groups,triplet,valid",
    [
        ("hierarchical", GRP, (0, 1, 3), True),  # siblings vs other disease
        ("hierarchical", GRP, (0, 1, 2), False),  # cousin excluded as dissimilar
        ("hierarchical", GRP, (0, 2, 3), False),  # cousins are not similar
        ("hierarchical", GRP, (0, 1, 6), False),  # same disease, no group: not dissimilar
        ("hierarchical", GRP, (0, 0, 3), False),  # a == b
        ("nonhierarchical", GRP, (0, 1, 2), True),  # cousin is dissimilar
        ("nonhierarchical", GRP, (0, 1, 5), True),
        ("nonhierarchical", GRP, (0, 1, 6), False),  # unknown group cannot be called dissimilar
        ("nonhierarchical", GRP, (0, 2, 5), False),
        ("disease", GRP, (0, 2, 3), True),  # any same-disease pair
        ("disease", GRP, (0, 6, 5), True),  # groups ignored
        ("disease", GRP, (0, 1, 2), False),
        ("joint", BLIND, (0, 3, 2), True),  # same disease-blind group across diseases
        ("joint", BLIND, (0, 3, 5), True),
        ("joint", BLIND, (0, 2, 3), True),  # disease criterion
        ("joint", BLIND, (0, 3, 4), False),  # 4 has no group and 0, 3 differ in disease
        ("joint", BLIND, (0, 3, 1), False),  # 1 shares the group of a and b; a, b differ in disease
    ],
)
def test_rule_on_hand_made_hierarchy(logic, groups, triplet, valid):
    assert get_rule(logic).is_valid(DIS, groups, *triplet) is valid


@pytest.mark.parametrize("logic", ["disease", "hierarchical", "nonhierarchical", "joint"])
def test_in_batch_mining_equals_brute_force(logic):
    rng = np.random.default_rng(1)
    d = rng.integers(0, 3, 14)
    g = np.where(rng.random(14) < 0.8, d * 3 + rng.integers(0, 3, 14), -1)
    if logic == "joint":
        g = np.where(g >= 0, rng.integers(0, 4, 14), -1)
    rule = get_rule(logic)
    a, b, c = all_valid_triplets(rule, d, g)
    mined = set(zip(a.tolist(), b.tolist(), c.tolist(), strict=True))
    brute = {t for t in itertools.product(range(14), repeat=3) if rule.is_valid(d, g, *t)}
    assert mined == brute and len(brute) > 0


@pytest.mark.parametrize("logic", ["disease", "hierarchical", "nonhierarchical", "joint"])
def test_random_protocol_draws_only_valid_triplets(logic):
    groups = BLIND if logic == "joint" else GRP
    rule = get_rule(logic)
    trip = sample_triplets(rule, DIS, groups, 300, np.random.default_rng(0))
    assert trip.shape == (300, 3)
    assert all(rule.is_valid(DIS, groups, *t) for t in trip)
    if logic == "hierarchical":  # every valid anchor pair shows up
        assert {(0, 1), (1, 0), (3, 4), (4, 3)} == {tuple(t[:2]) for t in trip}


def test_sampling_without_any_valid_triplet_fails_clearly():
    with pytest.raises(ValueError, match="no valid triplet"):
        sample_triplets(get_rule("hierarchical"), np.array([0, 0]), np.array([0, 1]), 5, np.random.default_rng(0))


def test_eq1_on_hand_computed_triplets():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    c = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    # first: D(a,b)=1, D(a,c)=4, D(b,c)=5 -> 1 + 1 - 4.5 < 0 -> 0
    # second: D(a,b)=4, D(a,c)=1, D(b,c)=1 -> 1 + 4 - 1 = 4
    np.testing.assert_allclose(chai_triplet_loss(a, b, c, margin=1.0).numpy(), [0.0, 4.0])
    np.testing.assert_allclose(chai_triplet_loss(a, b, c, margin=4.0).numpy(), [0.5, 7.0])


def test_batch_loss_reductions_and_gradient():
    emb = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [5.0, 5.0]], requires_grad=True)
    d = np.array([0, 0, 1, 1])
    g = np.array([-1, -1, -1, -1])
    loss_fn = ChaiTripletLoss(get_rule("disease"), 1.0, "mean")
    loss = loss_fn(emb, d, g)
    a, b, c = all_valid_triplets(get_rule("disease"), d, g)
    manual = torch.stack(
        [chai_triplet_loss(emb[[int(i)]], emb[[int(j)]], emb[[int(k)]])[0] for i, j, k in zip(a, b, c, strict=True)]
    )
    torch.testing.assert_close(loss, manual.mean())
    nz = ChaiTripletLoss(get_rule("disease"), 1.0, "nonzero_mean")(emb, d, g)
    torch.testing.assert_close(nz, manual[manual > 0].mean())
    loss.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
