"""When a patch is active: a start/end percent of the denoising, read the way the host reads
its own ranges (ControlNet, conditioning timestep ranges), so any sampler, scheduler, step
count or cut schedule (KSamplerAdvanced) gets the same noise levels."""
from dataclasses import dataclass


@dataclass(frozen=True)
class StepRange:
    sigma_start: float
    sigma_end: float

    @classmethod
    def from_percent(cls, model, start_percent, end_percent, node):
        if not 0.0 <= start_percent <= end_percent <= 1.0:
            raise ValueError(f"{node}: start_percent ({start_percent}) must be <= end_percent ({end_percent}), "
                             f"both in [0, 1]. The paper's steps 4..40 of 50 are 0.08..0.80.")
        sampling = model.get_model_object("model_sampling")
        return cls(sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent))

    def contains(self, sigma):
        """True when noise level `sigma` (a float) is inside the range, ends included."""
        return self.sigma_end <= sigma <= self.sigma_start


class StepGate:
    """Whether a patch is active for the model call in progress, decided once per call.

    Every attention layer of one UNet call receives the same `sigmas` tensor; reading it costs a
    device sync, so the answer is kept until a different tensor arrives. Set as the UNet's
    emb_patch too, so that sync happens at the start of the call, not in the middle of the
    queued decoder work. Shared by all the layers a node patches, and by the model's clones.
    """

    def __init__(self, step_range):
        self.step_range = step_range
        self._sigmas = None
        self._active = False

    def __deepcopy__(self, memo):
        return self

    def active(self, sigmas):
        if sigmas is not self._sigmas:
            self._active = self.step_range.contains(float(sigmas.max()))
            self._sigmas = sigmas
        return self._active

    def __call__(self, emb, model_channels, transformer_options):
        self.active(transformer_options["sigmas"])
        return emb
