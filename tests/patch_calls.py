"""Counting which Corr-Attention layers actually ran, without changing what they compute."""
from collections import Counter


def count_corr_attention_calls(monkeypatch, pack):
    """Counter of active Corr-Attention calls by (block, block id, depth, tokens), filled as the host samples."""
    unet_family = pack("nodes.families.unet")
    counts = Counter()
    active = unet_family.CorrAttentionPatch.corr_attention

    # Only calls inside the active range get here, on either path; the others go straight to the wrapped attention.
    def counting(self, q, k, v, extra_options):
        counts[(*extra_options["block"], extra_options["block_index"], q.shape[1])] += 1
        return active(self, q, k, v, extra_options)

    monkeypatch.setattr(unet_family.CorrAttentionPatch, "corr_attention", counting)
    return counts


class AttentionRecorder:
    """Another pack's optimized_attention_override: computes every attention call and records it."""

    def __init__(self):
        self.calls = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, *args, **kwargs):
        out = func(*args, **kwargs)
        options = kwargs["transformer_options"]
        self.calls.append({"block": (options.get("block_type"), options.get("block_index")), "q": args[0], "k": args[1],
                           "v": args[2], "out": out, "layout": options.get("edicho_image_tokens"),
                           "rows": len(options["cond_or_uncond"])})
        return out


def record_gathers(monkeypatch, pack):
    """List of (attention output, patched output, first image token, image token count) per gather, as the host samples."""
    joint = pack("nodes.families.joint_attention")
    seen = []
    gather = joint.gather_image_tokens

    def recording(out, query_source, start, count, token_dim=1):
        result = gather(out, query_source, start, count, token_dim)
        seen.append((out, result, start, count))
        return result

    monkeypatch.setattr(joint, "gather_image_tokens", recording)
    return seen


def record_fusions(monkeypatch, pack):
    """List of the eps shapes Corr-CFG fused, one per fusion, as the host samples."""
    fuser = pack("nodes.noise_fuser")
    shapes = []
    fuse = fuser.fuse_uncond_eps
    monkeypatch.setattr(fuser, "fuse_uncond_eps", lambda *a: shapes.append(tuple(a[0].shape)) or fuse(*a))
    return shapes
