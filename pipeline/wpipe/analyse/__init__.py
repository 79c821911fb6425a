"""analyse stage: pure functions from tensors and models to rows (statistics,
anatomy, tiles, spectra, drift, updates) and the Arrow tables of one model. Nothing here
opens a database."""
