"""Core runtime: the model handle (:class:`LoadedModel`), tokenising, batching, last-position forwards,
generation and option log-likelihoods, the cache. Depends on nothing else in wdprobe but ``errors``."""
