"""Counting which Corr-Attention layers actually ran, without changing what they compute."""
from collections import Counter


def count_corr_attention_calls(monkeypatch, pack):
    """Counter of active Corr-Attention calls by (block, block id, depth, tokens), filled as the host samples."""
    unet_family = pack("nodes.family_unet")
    counts = Counter()
    active = unet_family.CorrAttentionPatch.corr_attention

    # Only calls inside the active range get here, on either path; the others go straight to the wrapped attention.
    def counting(self, q, k, v, extra_options):
        counts[(*extra_options["block"], extra_options["block_index"], q.shape[1])] += 1
        return active(self, q, k, v, extra_options)

    monkeypatch.setattr(unet_family.CorrAttentionPatch, "corr_attention", counting)
    return counts
