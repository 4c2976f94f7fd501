"""AutoEmb (Zhao et al., "AutoEmb: Automated Embedding Dimensionality Search in Streaming
Recommendations"): per-user / per-item soft mixtures of embedding widths chosen by controllers from
popularity, trained and evaluated on a time-ordered interaction stream."""
