"""Bridges to the research edge: Hydra, OmegaConf and wandb.

These are the only modules of the package that import those libraries; ``import
diffulex`` never does (tests/test_import_isolation.py pins it). Import the submodules
explicitly: ``from diffulex.integrations.hydra_store import register_configs``.
"""
