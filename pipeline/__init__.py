"""pipeline: generator processes, the reconciler and the local supervisor of a statesvc dataset."""
