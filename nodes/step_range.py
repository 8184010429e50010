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
    """Whether a patch is active for the model call in progress, and at which schedule step.

    Every layer of one UNet call (and the pre-CFG step after it) receives the same `sigmas`
    tensor; reading it costs a device sync, so the answer is kept until a different tensor
    arrives. Set as the UNet's emb_patch, so that the sync happens at the start of the call
    while the device is idle, not in the middle of queued work. Shared by all the layers a
    node patches, and by the model's clones.
    """

    def __init__(self, step_range):
        self.step_range = step_range
        self.is_active = False
        self.step = 0
        self._sigmas = None
        self._schedule = None
        self._schedule_cpu = None

    def __deepcopy__(self, memo):
        return self

    def update(self, sigmas, schedule=None):
        """Decide for the call that evaluates `sigmas`; `schedule` (sample_sigmas) gives the step."""
        if sigmas is self._sigmas:
            return self
        sigma = float(sigmas.max())
        self.is_active = self.step_range.contains(sigma)
        if schedule is not None:
            if schedule is not self._schedule:
                self._schedule, self._schedule_cpu = schedule, schedule.float().cpu()
            # Samplers that evaluate between schedule entries get the nearest step.
            self.step = int((self._schedule_cpu - sigma).abs().argmin())
        self._sigmas = sigmas
        return self

    def __call__(self, emb, model_channels, transformer_options):
        self.update(transformer_options["sigmas"], transformer_options.get("sample_sigmas"))
        return emb
