"""Read results back: quality scores, sweep tables, trajectory pictures.

Plain Python over saved files (trajectory JSONL, ``results.json`` of experiment runs);
no Hydra, OmegaConf or wandb. matplotlib is imported inside the plotting functions only,
so the tables work without it.
"""
