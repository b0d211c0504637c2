"""The correlate stage: CION's progressive identity-correlation denoising, embeddings -> identity labels.

Pure core (numpy/FAISS in-process, no Ray, no IO):
  ``geometry``   cosine distance, normalised centroids            ``unionfind``  disjoint sets
  ``denoise``    level 1 (tracklet) and level 2 (video), the guarded merge, reason codes
  ``linking``    level 3 (sliding windows over videos, cross-video links, final radius/size checks)
  ``calibrate``  r and d read off the corpus                      ``quality``    pairwise/BCubed F, NMI
  ``baselines``  tracklet = identity, DBSCAN on k-NN, FINCH       ``clustered_corpus``  test/bench vectors
Glue: ``knn_index`` (sharded FAISS on Ray actors), ``distributed`` (Ray tasks per video group and per window),
``inputs`` (embed output -> arrays), ``job`` (``run(job) -> StageResult``).
"""
