"""Item-item collaborative filtering with implicit's nearest-neighbour models.

implicit computes, multithreaded, each item's ``neighbours`` most similar items by
cosine, BM25- or TF-IDF-weighted co-occurrence; the result is a sparse item x item
matrix. A user's scores are their (recency-weighted) history times that matrix, as
implicit's own ``recommend`` computes them, so a user with two interactions is still
scored from those two items.
"""

from __future__ import annotations

import logging
import time
import warnings

from threadpoolctl import threadpool_limits

from recjobs.data.features import SideFeatures
from recjobs.data.interactions import Interactions
from recjobs.models.neighbourhood import (
    Neighbourhood,
    NeighbourhoodRecommender,
    item_embedding_svd,
    recency_history,
)
from recjobs.progress import Heartbeat
from recjobs.settings import ItemKNNParams

log = logging.getLogger(__name__)


class ItemKNNModel(NeighbourhoodRecommender):
    family = "itemknn"
    params_type = ItemKNNParams

    def _fit(self, data: Interactions, features: SideFeatures | None) -> Neighbourhood:
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender

        p: ItemKNNParams = self.params
        if p.similarity == "bm25":
            knn = BM25Recommender(K=p.neighbours, K1=p.bm25_k1, B=p.bm25_b, num_threads=0)
        elif p.similarity == "tfidf":
            knn = TFIDFRecommender(K=p.neighbours, num_threads=0)
        else:
            knn = CosineRecommender(K=p.neighbours, num_threads=0)
        started = time.perf_counter()
        with Heartbeat(log, "itemknn") as beat:
            beat.phase(f"{p.similarity} neighbours of {data.n_items} items from {data.nnz:,} interactions")
            with threadpool_limits(1, "blas"), warnings.catch_warnings():
                # implicit converts its own weighted copy to CSR and warns about that.
                warnings.simplefilter("ignore")
                knn.fit(data.confidences(), show_progress=False)
            log.info("itemknn: fitted in %.1fs", time.perf_counter() - started)
            beat.phase("recency-weighted histories and the item embedding")
            history = recency_history(data, p.recency_half_life, p.history_limit)
            embedding = item_embedding_svd(data.binary(), seed=self.seed)
        return Neighbourhood(knn.similarity.tocsr(), history, None, embedding)
