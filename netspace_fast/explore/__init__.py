"""Exploring a trained NetSpace (METHOD.md section 7): the Python side of ``netspace
interpolate``, ``sample-unseen``, ``optimize``, ``export`` and ``visualize``. Every function takes a run
folder (its zoo is the one the run records; instance ids are that zoo's), decodes embeddings in
batches and evaluates networks by batched calls (one ``batched_forward`` per architecture and chunk),
and writes its CSVs and PNG plots atomically.

    from netspace_fast import explore
    r = explore.interpolate("run", "lenetlike-r0-e040", "lenetlike-r1-e040", steps=100, out="out/interp")
    u = explore.sample_unseen("run_unseen", out="out/unseen")
    o = explore.optimize("run", start="random", steps=1000, out="out/opt")
    explore.export_network("run", "net.safetensors", id="lenetlike-r0-e040")
    net = explore.load_network("net.safetensors")        # archs.build(arch, dataset, batchnorm=False)
    explore.visualize("run", "lenetlike-r0-e040", "prep.png")
"""

from .common import Explorer, accuracies, decode_batches, open_explorer
from .export import export_network, load_embedding, load_network, network_state_dict, save_embedding, save_network
from .interpolate import INTERPOLATION_FIELDS, Interpolation, interpolate
from .optimize import CURVE_FIELDS, Optimization, optimize, random_embedding
from .unseen import SAMPLE_FIELDS, TABLE_FIELDS, Unseen, sample_unseen
from .visualize import visualize

__all__ = ["CURVE_FIELDS", "Explorer", "INTERPOLATION_FIELDS", "Interpolation", "Optimization", "SAMPLE_FIELDS",
           "TABLE_FIELDS", "Unseen", "accuracies", "decode_batches", "export_network", "interpolate",
           "load_embedding", "load_network", "network_state_dict", "open_explorer", "optimize", "random_embedding",
           "sample_unseen", "save_embedding", "save_network", "visualize"]
