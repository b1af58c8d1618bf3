"""Hydra recipes for ct-train, shipped inside the package.

Installed as ``ct_recipes`` so that ``ct-train`` finds them from any working
directory; ``ct_core.cli`` points Hydra at this folder.
"""
