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
