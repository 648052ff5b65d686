"""Distances, the triplet selection logics, miners and the CHAI triplet loss (Eq. 1)."""

from chaiderm.losses.distances import squared_euclidean
from chaiderm.losses.logic import LOGIC_RULES, TripletRule, encode_labels, get_rule
from chaiderm.losses.miners import all_valid_triplets, sample_triplets
from chaiderm.losses.triplet import ChaiTripletLoss, chai_triplet_loss

__all__ = [
    "LOGIC_RULES",
    "ChaiTripletLoss",
    "TripletRule",
    "all_valid_triplets",
    "chai_triplet_loss",
    "encode_labels",
    "get_rule",
    "sample_triplets",
    "squared_euclidean",
]
