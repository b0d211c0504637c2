"""Contact sheets of a run's outputs (``cion inspect``): how a user checks a run on their own footage."""
