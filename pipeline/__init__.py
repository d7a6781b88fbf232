"""LGE analysis pipeline: series loading, phantoms, localization, segmentation, quantification.

Usable without the node (``lge-node analyze``); never opens sockets or writes to the node's DB.
"""
