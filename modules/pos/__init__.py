"""POS sampling modules (arXiv 2311.00949): optimal-noise approximation by retrieval + DDIM inversion, and
semantic-preserving prompt rewriting with hybrid-semantics denoising. Training-free and model-agnostic: they work
around any `VideoDiffusionModule` (SCVideo, ART-V). See modules/pos/README.md."""
