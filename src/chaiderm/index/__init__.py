"""Search: a FAISS index over archive embeddings with its row -> case map, and the kNN vote."""

from chaiderm.index.archive import ArchiveIndex
from chaiderm.index.faiss_index import build_faiss, exact_search
from chaiderm.index.knn import KNNMelanomaClassifier, knn_vote, relevance_at_k

__all__ = ["ArchiveIndex", "KNNMelanomaClassifier", "build_faiss", "exact_search", "knn_vote", "relevance_at_k"]
