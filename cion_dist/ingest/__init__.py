"""The ingest stage: person videos -> detected, tracked person crops (``run`` lives in ``cion_dist.ingest.job``)."""
