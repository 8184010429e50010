"""Counting which Corr-Attention layers actually ran, without changing what they compute."""
from collections import Counter


def count_corr_attention_calls(monkeypatch, pack):
    """Counter of active Corr-Attention calls by (block, block id, depth, tokens), filled as the host samples."""
    warp = pack("nodes.attention_warp")
    counts, current = Counter(), {}
    patch_call, gather = warp.CorrAttentionPatch.__call__, warp.gather_attention_inputs

    def call(self, q, k, v, extra_options):
        current["layer"] = (*extra_options["block"], extra_options["block_index"])
        return patch_call(self, q, k, v, extra_options)

    # Only active calls gather: inactive steps go straight to the wrapped attention.
    def counting_gather(q, k, v, sources, mode):
        counts[(*current["layer"], q.shape[1])] += 1
        return gather(q, k, v, sources, mode=mode)

    monkeypatch.setattr(warp.CorrAttentionPatch, "__call__", call)
    monkeypatch.setattr(warp, "gather_attention_inputs", counting_gather)
    return counts
