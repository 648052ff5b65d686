"""Evidence: query/result activation-map pairs (Eq. 2-3), rendering and per-query reports."""

from chaiderm.evidence.maps import activation_map_pair, activation_map_pairs, upsample
from chaiderm.evidence.render import overlay, to_png_bytes

__all__ = ["activation_map_pair", "activation_map_pairs", "overlay", "to_png_bytes", "upsample"]
