"""The pack's nodes, registered with the host through the V3 extension API."""
from comfy_api.latest import ComfyExtension, io

from .apply import EdichoApply
from .attention_warp import EdichoAttentionWarp
from .batch_images import EdichoBatchImages, EdichoRestoreImages
from .encode_photos import EdichoEncodePhotos
from .feature_extractor import EdichoFeatureExtractor
from .matcher import EdichoMatcher
from .noise_fuser import EdichoNoiseFuser
from .preview import EdichoCorrespondencePreview
from .transfer_points import EdichoTransferPoints

NODES = [
    EdichoFeatureExtractor,
    EdichoMatcher,
    EdichoCorrespondencePreview,
    EdichoTransferPoints,
    EdichoAttentionWarp,
    EdichoNoiseFuser,
    EdichoApply,
    EdichoBatchImages,
    EdichoRestoreImages,
    EdichoEncodePhotos,
]


class EdichoExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
